"""Fuzz the kernel-table fast path (prt_table_is_plain and its pure-Python
side in pyruntime.bundle.rules).

For random tables, mostly well-formed with one thing broken: the C core and
the Python rules must give the same answer, and neither may call a table plain that
the bundle reader's item-by-item checks refuse (the fast path must never be
laxer than the checks it skips).
"""

from __future__ import annotations

from hypothesis import event, given
from hypothesis import strategies as st

from pyruntime.bundle import format as bundle_format
from pyruntime.bundle import rules
from pyruntime import core as native
from pyruntime.errors import BundleFormatError

# the C core's check when it is built, and the rules' own Python one
CHECKS = [b.table_is_plain for b in native.backends() if hasattr(b, "table_is_plain")] + [rules._table_is_plain_py]

NAME_CHARS = st.sampled_from(list("abcXYZ019._-+ ~/\\\x00\x1f\x7fé"))
NAMES = st.one_of(st.sampled_from(["k.cubin", "k.json", ".", "..", "lock", "a" * 255, "a" * 256, "", "x",
                                   "tmp.x", "tmp.", "k.cubin.tmp.pid_1_x", "x.tmp.pid", "tmp"]),
                  st.text(NAME_CHARS, min_size=0, max_size=6))
HASHES = st.one_of(st.sampled_from(["K0", "K1", "tmp.x", ".x", "-x", "x" * 128, "x" * 129, "", "tmp",
                                    "K.tmp.pid_1", "K.tmp.pid"]),
                   st.text(NAME_CHARS, min_size=0, max_size=5))
NUMBERS = st.one_of(st.integers(0, 3), st.sampled_from([-1, 2**64, 2**64 - 1, 1.0]))


@st.composite
def tables(draw):
    """(hashes, files per kernel, names, numbers, blob sizes): a tiling table
    of 1-3 kernels, one blob each, with some items replaced."""
    nk = draw(st.integers(0, 3))
    hashes = [f"K{i}" for i in range(nk)]
    counts = [draw(st.integers(0, 3)) for _ in range(nk)]
    names, blob_of, offs, sizes, lens = [], [], [], [], []
    for k, c in enumerate(counts):
        pos = 0
        for j in range(c):
            size = draw(st.integers(0, 3))
            names.append(f"f{j}.bin")
            blob_of.append(k)
            offs.append(pos)
            sizes.append(size)
            pos += size
        lens.append(pos)
    numbers = blob_of + offs + sizes
    for _ in range(draw(st.integers(0, 2))):
        what = draw(st.sampled_from(["hash", "name", "number", "count", "len"]))
        if what == "hash" and hashes:
            hashes[draw(st.integers(0, len(hashes) - 1))] = draw(HASHES)
        elif what == "name" and names:
            names[draw(st.integers(0, len(names) - 1))] = draw(NAMES)
        elif what == "number" and numbers:
            numbers[draw(st.integers(0, len(numbers) - 1))] = draw(NUMBERS)
        elif what == "count" and counts:
            counts[draw(st.integers(0, len(counts) - 1))] = draw(st.integers(0, 4))
        elif what == "len" and lens:
            lens[draw(st.integers(0, len(lens) - 1))] = draw(st.integers(0, 9))
        event(f"changed: {what}")
    return hashes, counts, names, numbers, lens


def _reader_accepts(hashes, counts, names, numbers, lens) -> bool:
    """The reader's item-by-item checks (bundle_format) on the same table."""
    n = len(names)
    if len(numbers) != 3 * n or sum(counts) != n:
        return False
    files = [[names[i], numbers[i], numbers[n + i], numbers[2 * n + i]] for i in range(n)]
    kernels, first = [], 0
    for h, c in zip(hashes, counts):
        kernels.append({"hash": h, "device": 0, "target": None, "triton_version": None,
                        "files": files[first:first + c]})
        first += c
    try:
        bundle_format._check_kernels(kernels)
        bundle_format._check_tiling(kernels, (names, numbers[:n], numbers[n:2 * n], numbers[2 * n:]), lens)
    except BundleFormatError:
        return False
    return True


@given(tables())
def test_the_table_fast_path_agrees_on_both_backends_and_is_never_laxer(table):
    answers = [check(*table) for check in CHECKS]
    assert all(a == answers[0] for a in answers), answers
    event(f"plain: {answers[0]}")
    if answers[0]:
        assert _reader_accepts(*table), table
