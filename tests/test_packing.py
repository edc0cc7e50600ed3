"""Pack containers on both backends: identical bytes, round trips, and a
named BundleFormatError for every malformed container.

Malformed containers are built here by hand from the layout in
docs/FORMAT.md ("Pack container"), with a correct index checksum wherever
the test means to reach a later check. Random and mutated containers are
fuzzed in test_fuzz_packing.py.
"""

from __future__ import annotations

import array
import os
import struct

import lz4.block
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyruntime import core as native, packing
from pyruntime.core.twin import _compress as _twin_compress
from pyruntime.errors import BundleFormatError

from _limits import run_limited

BACKENDS = native.backends()
PY = next(b for b in BACKENDS if b.name == "python")
HDR = struct.Struct("<4sHHIIQQ")
REC = struct.Struct("<HBBQQQ")
MiB = 1 << 20
GiB = 1 << 30
LIMITS = (GiB, 4 * GiB)
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
xxh64 = xxhash.xxh3_64_intdigest


def _both():
    if BACKENDS[0].name != "c":
        pytest.skip("the C module is not built")
    return BACKENDS[0], PY


# ---------------------------------------------------------------- building containers by hand
def rec(name: bytes, raw: bytes, *, method: int = 0, stored: bytes | None = None, reserved: int = 0,
        raw_size: int | None = None, stored_size: int | None = None, checksum: int | None = None):
    """One index record plus its data block."""
    block = raw if stored is None else stored
    return (
        REC.pack(len(name), method, reserved, len(raw) if raw_size is None else raw_size,
                 len(block) if stored_size is None else stored_size,
                 xxh64(raw) if checksum is None else checksum) + name,
        block,
    )


def craft(records, *, magic=b"PRTP", version=1, flags=0, count=None, index_len=None, data_len=None,
          index_sum=None, index_extra=b"", trailing=b"") -> bytes:
    index = b"".join(r for r, _ in records) + index_extra
    data = b"".join(b for _, b in records)
    header = HDR.pack(
        magic, version, flags, len(records) if count is None else count,
        len(index) if index_len is None else index_len, len(data) if data_len is None else data_len,
        xxh64(index) if index_sum is None else index_sum,
    )
    return header + index + data + trailing


def lz4_rec(name: bytes, raw: bytes, **kw):
    return rec(name, raw, method=1, stored=lz4.block.compress(raw, store_size=False), **kw)


def parse(blob: bytes):
    """(header fields, [(name, method, raw, stored, checksum)]) of a container."""
    head = HDR.unpack_from(blob)
    pos, out = HDR.size, []
    for _ in range(head[3]):
        name_len, method, reserved, raw, stored, checksum = REC.unpack_from(blob, pos)
        pos += REC.size
        out.append((blob[pos:pos + name_len], method, raw, stored, checksum))
        pos += name_len
    return head, out


# ---------------------------------------------------------------- strategies
def _valid_name(n: bytes) -> bool:
    return n not in (b".", b"..") and not any(c in n for c in b"/\\\0")


byte_names = st.one_of(
    st.sampled_from([b"a", b"A", b"kernel.cubin", b"kernel.json", b"__grp__kernel.json", b"x" * 255, b"\xff\xfe"]),
    st.binary(min_size=1, max_size=40).filter(_valid_name),
)
contents = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=12), st.integers(1, 800)),
)
entry_lists = st.lists(st.tuples(byte_names, contents), max_size=6, unique_by=lambda e: e[0])


# ---------------------------------------------------------------- agreement and round trips
@given(entries=entry_lists)
def test_c_and_twin_pack_identical_bytes_and_read_each_other(entries):
    c, py = _both()
    blob = c.pack(entries)
    assert py.pack(entries) == blob
    want = [(n, bytes(d)) for n, d in entries]
    assert c.unpack(blob, *LIMITS) == want
    assert py.unpack(blob, *LIMITS) == want


def test_an_input_two_lz4_builds_pack_differently_is_the_same_bytes_on_both_backends():
    """Debian's liblz4 1.9.4 and the lz4 package's copy pick different
    matches for this input (hypothesis found it); the twin packs with the
    C core's library, so the containers are equal."""
    c, py = _both()
    data = b"\x00" * 5 + b"\x01" + b"\x00" * 12
    blob = c.pack([(b"a", data)])
    assert py.pack([(b"a", data)]) == blob
    assert py.unpack(blob, *LIMITS) == c.unpack(blob, *LIMITS) == [(b"a", data)]


@given(entries=entry_lists)
def test_container_layout_matches_the_document(entries):
    blob = BACKENDS[0].pack(entries)
    (magic, version, flags, count, index_len, data_len, index_sum), recs = parse(blob)
    assert (magic, version, flags, count) == (b"PRTP", 1, 0, len(entries))
    assert len(blob) == HDR.size + index_len + data_len
    assert index_sum == xxh64(blob[HDR.size:HDR.size + index_len])
    pos = HDR.size + index_len
    for (name, data), (rname, method, raw, stored, checksum) in zip(entries, recs):
        assert (rname, raw, checksum) == (name, len(data), xxh64(data))
        block = blob[pos:pos + stored]
        if method == 1:  # a raw LZ4 block, kept only when strictly smaller
            assert stored < raw and lz4.block.decompress(block, uncompressed_size=raw) == data
            # LZ4's fast mode as the C core's liblz4 makes it (another LZ4 build,
            # such as the lz4 package's own copy, may pick other valid matches)
            assert block == _twin_compress(data, 0)
        else:
            assert method == 0 and block == data
            assert not data or len(lz4.block.compress(data, store_size=False)) >= raw
        pos += stored
    assert pos == len(blob)


@FIXTURE_OK
@given(entries=st.lists(st.tuples(st.text(min_size=1, max_size=20).filter(
    lambda n: _valid_name(n.encode("utf-8", "surrogatepass")) and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in n)),
    contents), max_size=5, unique_by=lambda e: e[0]))
def test_public_round_trip_with_str_names(entries):
    assert packing.unpack(packing.pack(entries)) == [(n, bytes(d)) for n, d in entries]


@pytest.mark.parametrize(
    "entries",
    [
        [],
        [(b"empty", b"")],
        [(b"a", b"x")],
        [(b"a", b"xy"), (b"b", b"")],
        [(b"zeros", bytes(8 * MiB))],
        [(b"random", os.urandom(3 * MiB + 7)), (b"text", b"triton kernel " * 300000), (b"e", b"")],
    ],
    ids=["no-entries", "one-empty", "one-byte", "tiny", "8MiB-zeros", "multi-MiB-mixed"],
)
def test_round_trip_sizes(backend, entries):
    blob = backend.pack(entries)
    assert backend.unpack(blob, *LIMITS) == entries
    assert PY.unpack(blob, *LIMITS) == entries and BACKENDS[0].unpack(blob, *LIMITS) == entries
    if not entries:
        assert len(blob) == 32
    if entries and entries[0][0] == b"zeros":
        assert len(blob) < 8 * MiB // 200  # LZ4 at work


def test_compressible_entries_use_lz4_and_others_are_stored(backend):
    blob = backend.pack([(b"z", bytes(10000)), (b"r", os.urandom(10000)), (b"e", b""), (b"one", b"q")])
    _, recs = parse(blob)
    assert [(r[0], r[1]) for r in recs] == [(b"z", 1), (b"r", 0), (b"e", 0), (b"one", 0)]
    assert recs[2][2:4] == (0, 0)


def test_entries_may_be_any_contiguous_buffer(backend):
    ints = array.array("I", range(5000))
    blob = backend.pack([(b"ints", memoryview(ints)), (b"ba", bytearray(b"abc")), (b"mv", memoryview(b"0123")[1:3])])
    assert PY.pack([(b"ints", ints.tobytes()), (b"ba", b"abc"), (b"mv", b"12")]) == blob
    assert backend.unpack(blob, *LIMITS) == [(b"ints", ints.tobytes()), (b"ba", b"abc"), (b"mv", b"12")]


def test_unpack_accepts_bytes_bytearray_and_memoryview(backend):
    blob = backend.pack([(b"a", b"hello" * 50)])
    for view in (blob, bytearray(blob), memoryview(blob), memoryview(b"junk" + blob)[4:]):
        assert backend.unpack(view, *LIMITS) == [(b"a", b"hello" * 50)]


def test_limits_are_inclusive(backend):
    blob = backend.pack([(b"a", b"x" * 100), (b"b", b"y" * 50)])
    assert len(backend.unpack(blob, 100, 150)) == 2
    with pytest.raises(BundleFormatError, match=r"entry 'a' declares 100 bytes, over the 99-byte limit"):
        backend.unpack(blob, 99, 150)
    with pytest.raises(BundleFormatError, match=r"more than the 149-byte total limit"):
        backend.unpack(blob, 100, 149)


# ---------------------------------------------------------------- pack refuses bad input
@pytest.mark.parametrize(
    "name, match",
    [
        (b"", "entry 0: empty name"),
        (b".", "entry 0: name '.' is not a file name"),
        (b"..", "entry 0: name '..' is not a file name"),
        (b"a/b", "path separator or NUL"),
        (b"/abs", "path separator or NUL"),
        (b"a\\b", "path separator or NUL"),
        (b"a\0b", "path separator or NUL"),
        (b"n" * 256, "name longer than 255 bytes"),
    ],
)
def test_pack_rejects_names_that_are_not_plain_file_names(backend, name, match):
    with pytest.raises(BundleFormatError, match=match):
        backend.pack([(name, b"data")])
    with pytest.raises(BundleFormatError, match=match.replace("entry 0", "entry 1")):
        backend.pack([(b"ok", b""), (name, b"data")])


def test_pack_accepts_names_that_only_look_odd(backend):
    entries = [(b"...", b"1"), (b".hidden", b"2"), (b"a..b", b"3"), (b"n" * 255, b"4"), (b" ", b"5")]
    assert backend.unpack(backend.pack(entries), *LIMITS) == entries


def test_pack_refuses_duplicate_names(backend):
    # unpack would refuse the container, so pack must not write it
    with pytest.raises(BundleFormatError, match="duplicate entry name 'a'"):
        backend.pack([(b"a", b"1"), (b"b", b""), (b"a", b"2")])


def test_public_pack_checks_name_types_and_encoding():
    with pytest.raises(TypeError, match="entry 0: name must be str, not bytes"):
        packing.pack([(b"a", b"")])  # type: ignore[list-item]
    with pytest.raises(BundleFormatError, match="not valid UTF-8"):
        packing.pack([("bad\udcff", b"")])
    with pytest.raises(BundleFormatError, match="path separator"):
        packing.pack([("dir/file", b"")])


def test_public_unpack_refuses_names_that_are_not_utf8():
    blob = craft([rec(b"\xff\xfe", b"x")])
    assert BACKENDS[0].unpack(blob, *LIMITS) == [(b"\xff\xfe", b"x")]  # the container itself is fine
    with pytest.raises(BundleFormatError, match="entry 0: name is not valid UTF-8"):
        packing.unpack(blob)


# ---------------------------------------------------------------- unpack refuses bad containers
GOOD = [rec(b"a", b"first"), lz4_rec(b"b", b"abcd" * 100)]
GOOD_BLOB = craft(GOOD)

BAD = {
    "empty input": (b"", r"truncated: 0 bytes, the header alone needs 32"),
    "short header": (GOOD_BLOB[:31], r"truncated: 31 bytes"),
    "bad magic": (b"PRTX" + GOOD_BLOB[4:], r"bad magic: not a pyruntime pack"),
    "frame magic": (b"PRTF" + GOOD_BLOB[4:], r"bad magic"),
    "version 0": (craft(GOOD, version=0), r"unknown format version 0 \(this build reads 1\)"),
    "version 2": (craft(GOOD, version=2), r"unknown format version 2"),
    "flags": (craft(GOOD, flags=4), r"unknown flags 0x0004"),
    "data length over": (craft(GOOD, data_len=len(GOOD_BLOB)), r"truncated: header declares more bytes"),
    "huge data length": (craft(GOOD, data_len=2**64 - 1), r"truncated: header declares more bytes"),
    "huge index length": (craft(GOOD, index_len=2**32 - 1), r"truncated: header declares more bytes"),
    "trailing bytes": (craft(GOOD, trailing=b"\0\0\0"), r"3 trailing bytes after the data"),
    "index checksum": (craft(GOOD, index_sum=1), r"index checksum mismatch"),
    "index byte flipped": (GOOD_BLOB[:40] + bytes([GOOD_BLOB[40] ^ 1]) + GOOD_BLOB[41:], r"index checksum mismatch"),
    "count over index": (craft(GOOD, count=100), r"entry count 100 does not fit the \d+-byte index"),
    "count too small": (craft(GOOD, count=1), r"\d+ unused bytes at the end of the index"),
    "count too large": (craft(GOOD, count=3, index_extra=b"\0" * 28), r"entry 2: empty name"),
    "record cut": (craft([rec(b"a", b"x")], count=2, index_extra=b"\0" * 27), r"entry 1: index ends inside its record"),
    "name past index": (craft([(REC.pack(200, 0, 0, 0, 0, xxh64(b"")) + b"abc", b"")]), r"entry 0: name runs past the index"),
    "reserved byte": (craft([rec(b"a", b"x", reserved=1)]), r"entry 0: reserved byte is not zero"),
    "empty name": (craft([rec(b"", b"x")]), r"entry 0: empty name"),
    "dot": (craft([rec(b"ok", b""), rec(b".", b"x")]), r"entry 1: name '\.' is not a file name"),
    "dotdot": (craft([rec(b"..", b"x")]), r"entry 0: name '\.\.' is not a file name"),
    "slash": (craft([rec(b"../etc", b"x")]), r"entry 0: name contains a path separator or NUL"),
    "backslash": (craft([rec(b"a\\b", b"x")]), r"path separator or NUL"),
    "nul": (craft([rec(b"a\0", b"x")]), r"path separator or NUL"),
    "long name": (craft([rec(b"n" * 256, b"x")]), r"name longer than 255 bytes"),
    "stored size differs": (craft([rec(b"a", b"xyz", raw_size=4)]), r"entry 0: stored size differs from raw size"),
    "lz4 not smaller": (craft([rec(b"a", b"xyz", method=1)]), r"entry 0: impossible LZ4 sizes \(3 -> 3\)"),
    "lz4 empty block": (craft([rec(b"a", b"xyz", method=1, stored=b"")]), r"impossible LZ4 sizes \(0 -> 3\)"),
    "lz4 over ratio": (craft([rec(b"a", bytes(100000), method=1, stored=b"\0" * 10)]),
                       r"impossible LZ4 sizes \(10 -> 100000\)"),
    "unknown method": (craft([rec(b"a", b"xyz", method=2)]), r"entry 0: unknown method 2"),
    "entry over limit": (craft([rec(b"big", b"", method=1, stored=bytes(2 * GiB // 255 + 1), raw_size=2 * GiB)]),
                         r"entry 'big' declares 2147483648 bytes, over the 1073741824-byte limit"),
    "entry size 2**64-1": (craft([rec(b"big", b"x", raw_size=2**64 - 1, stored_size=2**64 - 1)]),
                           r"(entry 'big' declares 18446744073709551615 bytes|data runs past)"),
    "total over limit": (craft([rec(b"e%d" % i, b"", method=1, stored=bytes(GiB // 510 + 1), raw_size=GiB // 2 + 1)
                                for i in range(9)]),
                         r"entries declare more than the 4294967296-byte total limit"),
    "block past end": (craft([rec(b"a", b"0123456789"), rec(b"b", b"0123456789")], data_len=15)[:-5],
                       r"entry 1: data runs past the end"),
    "sizes do not add up": (craft([rec(b"a", b"01234")], data_len=10, trailing=b"56789"),
                            r"entry sizes do not add up to the data length"),
    "duplicate": (craft([rec(b"k.json", b"1"), rec(b"other", b""), rec(b"k.json", b"2")]),
                  r"duplicate entry name 'k\.json'"),
    "stored checksum": (craft([rec(b"a", b"fine"), rec(b"bad", b"data", checksum=xxh64(b"DATA"))]),
                        r"entry 'bad': checksum mismatch"),
    "lz4 garbage": (craft([rec(b"z", bytes(1000), method=1, stored=b"\xff" * 20)]), r"entry 'z': corrupt LZ4 block"),
    "lz4 short output": (craft([lz4_rec(b"z", bytes(1000), raw_size=1001, checksum=xxh64(bytes(1001)))]),
                         r"entry 'z': corrupt LZ4 block"),
    "lz4 wrong content": (craft([lz4_rec(b"z", b"abc" * 100, checksum=xxh64(b"abd" * 100))]),
                          r"entry 'z': checksum mismatch"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_unpack_names_the_problem(backend, case):
    blob, match = BAD[case]
    with pytest.raises(BundleFormatError, match=match):
        backend.unpack(blob, *LIMITS)


def _same_unpack_error(c, py, blob: bytes) -> str:
    """Both backends refuse ``blob`` with the same message; returns it."""
    messages = []
    for b in (c, py):
        with pytest.raises(BundleFormatError) as info:
            b.unpack(blob, *LIMITS)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    return messages[0]


@pytest.mark.parametrize("case", list(BAD))
def test_c_and_twin_give_the_same_message(case):
    c, py = _both()
    blob, _ = BAD[case]
    _same_unpack_error(c, py, blob)


@pytest.mark.parametrize("case", ["bad magic", "duplicate", "stored checksum", "dot"])
def test_public_unpack_raises_the_same(case):
    blob, match = BAD[case]
    with pytest.raises(BundleFormatError, match=match):
        packing.unpack(blob)


def test_every_truncation_of_a_valid_container_is_refused(backend):
    blob = backend.pack([(b"a", b"x" * 300), (b"b", os.urandom(50)), (b"c", b"")])
    for n in range(len(blob)):
        with pytest.raises(BundleFormatError, match="truncated"):
            backend.unpack(blob[:n], *LIMITS)


def test_every_single_byte_flip_is_refused_or_harmless(backend):
    """A flipped bit anywhere is caught: header fields by their checks, the
    index by its checksum, data by the entry checksums."""
    blob = bytearray(backend.pack([(b"a", b"hello world " * 20), (b"b", os.urandom(40))]))
    for i in range(len(blob)):
        blob[i] ^= 0x10
        with pytest.raises(BundleFormatError):
            backend.unpack(bytes(blob), *LIMITS)
        blob[i] ^= 0x10


# ---------------------------------------------------------------- decompression bombs
BOMB_CHILD = r"""
import struct, xxhash
from pyruntime import core as native, packing
from pyruntime.errors import BundleFormatError
HDR, REC = struct.Struct("<4sHHIIQQ"), struct.Struct("<HBBQQQ")
def craft(recs, count=None):
    # recs: (name, method, declared raw size, block[, declared stored size])
    recs = [r if len(r) == 5 else (*r, len(r[3])) for r in recs]
    index = b"".join(REC.pack(len(n), m, 0, raw, stored, 0) + n for n, m, raw, _, stored in recs)
    data = b"".join(r[3] for r in recs)
    return HDR.pack(b"PRTP", 1, 0, len(recs) if count is None else count, len(index), len(data),
                    xxhash.xxh3_64_intdigest(index)) + index + data
GiB = 1 << 30
cases = {
    # declared sizes far over any limit
    "stored 2**62": (craft([(b"a", 0, 1 << 62, b"", 1 << 62)]), {}),
    "lz4 2**62": (craft([(b"a", 1, 1 << 62, b"\0" * 64)]), {}),
    # a plausible LZ4 ratio, but over the caller's per-entry limit
    "1 GiB entry, 64 MiB limit": (craft([(b"a", 1, GiB, b"\0" * (GiB // 255 + 1))]), {"max_entry": 64 << 20}),
    # each entry allowed, the sum not
    "3 x 1 GiB, 2 GiB total": (craft([(b"%d" % i, 1, GiB, b"\0" * (GiB // 255 + 1)) for i in range(3)]),
                               {"max_total": 2 * GiB}),
    # a count that would size a huge entry table
    "count 2**32-1": (craft([(b"a", 0, 0, b"")], count=2**32 - 1), {}),
}
limit_address_space(256 << 20)
for name, (blob, kw) in cases.items():
    for unpack in (packing.unpack, lambda d, **k: native.backend.unpack(d, k.get("max_entry", GiB), k.get("max_total", 4 * GiB))):
        try:
            unpack(blob, **kw)
        except BundleFormatError as e:
            print(name, "->", e)
        else:
            raise AssertionError(name + ": accepted")
assert_limit_bites()
print("done", native.BACKEND)
"""


@pytest.mark.timeout(60)
def test_declared_sizes_over_a_limit_allocate_nothing(backend):
    out = run_limited(BOMB_CHILD, backend.name)
    assert out.strip().endswith(f"done {backend.name}")
    assert "stored 2**62 -> entry 'a' declares 4611686018427387904 bytes, over the 1073741824-byte limit" in out
    assert "1 GiB entry, 64 MiB limit -> entry 'a' declares 1073741824 bytes, over the 67108864-byte limit" in out
    assert "3 x 1 GiB, 2 GiB total -> entries declare more than the 2147483648-byte total limit" in out
    assert "count 2**32-1 -> entry count 4294967295 does not fit" in out


@pytest.mark.parametrize("name", [b"x" * 255, "é".encode() * 127, b"a" * 63 + "é".encode()])
def test_long_names_never_crowd_the_problem_out_of_the_message(name):
    c, py = _both()
    cases = {
        "checksum mismatch": craft([rec(name, b"data", checksum=0)]),
        "corrupt LZ4 block": craft([rec(name, bytes(1000), method=1, stored=b"\xff" * 20)]),
        "over the 1073741824-byte limit": craft([rec(name, b"", raw_size=2**40, stored_size=2**40)]),
        "duplicate entry name": craft([rec(name, b"1"), rec(name, b"2")]),
    }
    for problem, blob in cases.items():
        message = _same_unpack_error(c, py, blob)
        assert problem in message
        assert ("...'" in message) == (len(name) > 64)
    with pytest.raises(BundleFormatError, match="duplicate entry name '.*\\.\\.\\.'"):
        c.pack([(name, b""), (name, b"")])
