"""Hostile bundle files against ``bundle verify``/``inspect``/``restore``
and the API, on both backends: each is refused within bounded time and
memory (a child process under an address-space limit and a timeout), with
one line naming the file and the problem, the documented exit code, and
nothing written.

One test per class of the adversarial corpus: time not bounded by input
size, memory not bounded by the file, messages echoing hostile values,
tracebacks instead of errors.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import pytest

import hostile_bundles as H
from pyruntime import core as native
from pyruntime.bundle import rules

BACKENDS = [b.name for b in native.backends()]
AS_LIMIT = 1536 << 20  # the child's address space: far below what the hostile files ask for
TIME_LIMIT = 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run_cli(backend: str, *args: str, as_limit: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYRUNTIME_PURE_PYTHON="1" if backend == "python" else "0", PYRUNTIME_IO_THREADS="2")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pyruntime", *args], capture_output=True, text=True, env=env,
                       timeout=TIME_LIMIT, preexec_fn=_limit_memory if as_limit else None)
    return r, time.monotonic() - t0


def assert_refused(backend: str, path: str, tmp_path, needle: str, *, seconds: float = 10) -> None:
    """verify exits 1, inspect and restore 2; each prints one short line
    naming the file and ``needle``; nothing is written."""
    cache = tmp_path / "cache"
    for args, code in ((["bundle", "verify", path], 1), (["bundle", "inspect", path], 2),
                       (["bundle", "restore", path, "--cache-dir", str(cache)], 2)):
        r, took = run_cli(backend, *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == code, (args, r.returncode, r.stderr[-2000:])
        assert len(lines) == 1, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
        assert len(lines[0]) <= 1000, lines[0][:200]
        assert path in lines[0] and needle in lines[0], lines[0][:1000]
        assert "out of memory" not in lines[0], lines[0]  # refused by a named limit, not by running out
        assert took < seconds, (args, took)
    assert not cache.exists() or not os.listdir(cache)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _write(tmp_path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


# -- 1. time ----------------------------------------------------------------

@pytest.mark.timeout(180)
def test_duplicate_keys_are_found_in_linear_time(backend, tmp_path):
    assert_refused(backend, _write(tmp_path, "h.prtb", H.many_header_keys(80_000)), tmp_path,
                   "appears twice")
    assert_refused(backend, _write(tmp_path, "k.prtb", H.many_kernel_keys(200_000)), tmp_path,
                   "appears twice")


# -- 2. memory ---------------------------------------------------------------

@pytest.mark.timeout(180)
def test_a_json_bomb_is_refused_before_it_is_unpacked(backend, tmp_path):
    data = H.json_bomb(100)
    assert len(data) < 1 << 20
    assert_refused(backend, _write(tmp_path, "bomb.prtb", data), tmp_path, "64x the file's size")
    # big enough a file for 64x to allow it: the table's own limit refuses it, unparsed
    data = H.json_bomb(20, pad=400_000)
    assert_refused(backend, _write(tmp_path, "bomb2.prtb", data), tmp_path,
                   f"bytes, over the {rules.MAX_TABLE_BYTES}-byte limit")


@pytest.mark.timeout(180)
def test_ten_million_targets_and_too_many_targets(backend, tmp_path):
    assert_refused(backend, _write(tmp_path, "t.prtb", H.many_targets(10_000_000)), tmp_path,
                   "64x the file's size")
    # large enough a file that only the header's own limit can refuse it
    raw = b"[]"
    header = H.json.dumps(H.header_of(raw, [os.urandom(600_000)], targets=["cuda:90"] * 200_000)).encode()
    data = H.container(header, raw, [os.urandom(600_000)])
    assert_refused(backend, _write(tmp_path, "t1.prtb", data), tmp_path,
                   f"header.json unpacks to {len(header)} bytes, over the {rules.MAX_HEADER_BYTES}-byte limit")
    assert_refused(backend, _write(tmp_path, "t2.prtb", H.targets_under_size_limit(50_000)), tmp_path,
                   f"over the limit of {rules.MAX_TARGETS}")


@pytest.mark.timeout(180)
def test_an_lz4_bomb_is_refused_before_its_output_is_reserved(backend, tmp_path):
    data = H.lz4_bomb(1000)  # 1 GB declared, under the 1 GiB per entry; the child may map 1.5 GiB in all
    assert len(data) < 8 << 20
    assert_refused(backend, _write(tmp_path, "z.prtb", data), tmp_path, "64x the file's size")


@pytest.mark.timeout(120)
def test_only_regular_files_are_read(backend, tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.prtb")
    sparse = tmp_path / "sparse.prtb"
    with open(sparse, "wb") as f:
        f.truncate(3 << 30)
    fifo = tmp_path / "fifo.prtb"
    os.mkfifo(fifo)
    assert_refused(backend, "/dev/zero", tmp_path, "not a regular file (a character device)", seconds=5)
    assert_refused(backend, str(tmp_path / "zero.prtb"), tmp_path, "not a regular file", seconds=5)
    assert_refused(backend, str(fifo), tmp_path, "not a regular file (a FIFO)", seconds=5)
    assert_refused(backend, str(sparse), tmp_path, "bad magic", seconds=5)


@pytest.mark.timeout(120)
def test_a_sparse_file_over_the_bundle_limit_is_refused_by_its_size(backend, tmp_path):
    big = tmp_path / "big.prtb"
    with open(big, "wb") as f:
        f.write(b"PRTP")
        f.truncate(rules.MAX_BUNDLE_BYTES + 1)
    assert_refused(backend, str(big), tmp_path, "bundle limit", seconds=5)


@pytest.mark.timeout(180)
def test_sentinel_expansion_is_capped_before_anything_is_written(backend, tmp_path):
    data = H.sentinel_bomb(1_500_000)  # 13.5 MB of sentinels: under the .json size limit, far over it expanded
    path = _write(tmp_path, "s.prtb", data)
    r, _ = run_cli(backend, "bundle", "verify", path)
    assert r.returncode == 0, r.stderr  # a valid bundle ...
    cache = tmp_path / "cache"
    r, _ = run_cli(backend, "bundle", "restore", path, "--cache-dir", str(cache), "--on-mismatch", "force")
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "[REPLACE] sentinels" in line and "nothing was written" in line, line
    assert not cache.exists() or not os.listdir(cache)


# -- 3. messages -------------------------------------------------------------

@pytest.mark.timeout(300)
def test_messages_cut_hostile_values(backend, tmp_path):
    for what, data in H.long_values(2_000_000).items():
        path = _write(tmp_path, f"{what.replace(' ', '_')}.prtb", data)
        r, _ = run_cli(backend, "bundle", "verify", path)
        assert r.returncode == 1, (what, r.stderr[-300:])
        line = r.stderr.strip()
        assert "\n" not in line and len(line) < 500, (what, line[:300])
        assert "AAAA" * 40 not in line, what


def test_shown_cuts_in_bounded_time():
    t0 = time.perf_counter()
    for value in ("A" * 10**8, b"B" * 10**8, list(range(10**6)), 10**5000, {i: i for i in range(10**5)}):
        text = rules.shown(value)
        assert len(text) <= rules.SHOWN + 40, text
    assert time.perf_counter() - t0 < 1.0


# -- 4. errors, not tracebacks ------------------------------------------------

@pytest.mark.timeout(180)
def test_running_out_of_memory_is_one_line_with_the_file(backend, tmp_path):
    """A valid 100 MB bundle verified in a process allowed too little memory
    for it: one line naming the file, verify's exit code 1."""
    import random

    rnd = random.Random(7)
    blob = rnd.randbytes(1 << 20) * 100  # LZ4's 64 KiB window sees no repeat: nothing to gain
    table = [{"hash": "K", "device": 0, "target": None, "triton_version": None,
              "files": [["k.cubin", 0, 0, len(blob)]]}]
    path = _write(tmp_path, "big.prtb", H.with_table(table, [blob]))

    def small() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (200 << 20, 200 << 20))

    env = dict(os.environ, PYRUNTIME_PURE_PYTHON="1" if backend == "python" else "0", PYRUNTIME_IO_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "pyruntime", "bundle", "verify", path], capture_output=True,
                       text=True, env=env, timeout=TIME_LIMIT, preexec_fn=small)
    if r.returncode == 0:
        pytest.skip("the bundle fit in the limit on this machine")
    assert "Traceback" not in r.stderr, r.stderr[-1500:]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-1500:]
    assert path in lines[0] and "out of memory" in lines[0], lines[0]


def test_an_unreadable_file_exits_2_with_its_name(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    p = tmp_path / "x.prtb"
    p.write_bytes(b"PRTP")
    p.chmod(0)
    r, _ = run_cli(BACKENDS[0], "bundle", "verify", str(p))
    assert r.returncode == 2 and str(p) in r.stderr and "cannot read" in r.stderr


def test_api_errors_name_the_file_and_stay_short(tmp_path):
    from pyruntime.bundle import TritonBundle
    from pyruntime.errors import BundleFormatError

    for what, data in H.long_values(1_000_000).items():
        path = _write(tmp_path, "v.prtb", data)
        with pytest.raises(BundleFormatError) as e:
            TritonBundle.load(path)
        text = str(e.value)
        assert text.startswith(path) and "\n" not in text and len(text) < 500, (what, text[:300])
