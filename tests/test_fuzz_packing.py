"""Fuzz unpack with random, forged and mutated containers.

Every input must either unpack to the same entries on both backends or
raise BundleFormatError with the same message on both; any other exception,
or a crash, fails. Forged containers carry a correct index checksum so the
fuzzer reaches the record, limit, name and data checks behind it.
"""

from __future__ import annotations

import re
import struct

import xxhash
from hypothesis import event, given
from hypothesis import strategies as st

from pyruntime import core as native
from pyruntime.errors import BundleFormatError

BACKENDS = native.backends()
HDR = struct.Struct("<4sHHIIQQ")
REC = struct.Struct("<HBBQQQ")
xxh64 = xxhash.xxh3_64_intdigest
LIMIT_SETS = st.sampled_from([(1 << 30, 4 << 30), (64, 100), (1000, 1000), (2**64 - 1, 2**64 - 1)])


def outcome(backend, blob: bytes, limits):
    try:
        return ("ok", backend.unpack(blob, *limits))
    except BundleFormatError as e:
        msg = str(e)
        assert msg, "empty error message"
        return ("error", msg)


def check(blob: bytes, limits=(1 << 30, 4 << 30)):
    results = [outcome(b, blob, limits) for b in BACKENDS]
    assert all(r == results[0] for r in results), results
    # the statistics (--hypothesis-show-statistics) show which checks were reached
    event(results[0][0] if results[0][0] == "ok" else re.sub(r"'[^']*'|0x[0-9a-f]+|\d+", "N", results[0][1]))
    return results[0]


def valid_blob(entries) -> bytes:
    return BACKENDS[0].pack(entries)


good_names = st.sampled_from([b"a", b"b", b"kernel.cubin", b"k.json", b"\xff", b"x" * 255])
bad_names = st.one_of(
    st.sampled_from([b"", b".", b"..", b"a/b", b"a\\b", b"a\0", b"x" * 256, b"a"]),
    st.binary(min_size=0, max_size=12),
)
odd_sizes = st.one_of(st.integers(0, 3000), st.sampled_from([2**31, 2**32, 2**63, 2**64 - 1]))


def maybe(draw, honest, other, percent: int = 12):
    """``honest``, or a draw from ``other`` about ``percent`` % of the time,
    so most forged containers get deep before something is wrong."""
    return draw(other) if draw(st.integers(0, 99)) < percent else honest


@st.composite
def forged(draw):
    """A container with a correct index checksum whose fields are mostly
    honest, each one sometimes wrong, to reach every check behind it."""
    import lz4.block

    n = draw(st.integers(0, 4))
    index, data = b"", b""
    for _ in range(n):
        name = maybe(draw, draw(good_names), bad_names)
        content = draw(st.one_of(st.binary(max_size=200), st.builds(bytes, st.integers(0, 3000))))
        packed = lz4.block.compress(content, store_size=False) if content else b""
        method, block = (1, packed) if len(packed) < len(content) else (0, content)
        method = maybe(draw, method, st.sampled_from([0, 1, 2, 255]))
        block = maybe(draw, block, st.one_of(st.binary(max_size=60), st.just(content), st.just(packed)))
        raw = maybe(draw, len(content), st.one_of(odd_sizes, st.just(len(content) + 1),
                                                  st.just(max(len(content) - 1, 0))))
        stored = maybe(draw, len(block), st.one_of(odd_sizes, st.just(len(block) + 1)))
        checksum = maybe(draw, xxh64(content), st.integers(0, 2**64 - 1))
        name_len = maybe(draw, len(name), st.integers(0, 0xFFFF), 4)
        reserved = maybe(draw, 0, st.integers(1, 255), 4)
        index += REC.pack(name_len, method, reserved, raw, stored, checksum) + name
        data += block
    index += maybe(draw, b"", st.sampled_from([b"\0", b"\0" * 28]), 5)
    count = maybe(draw, n, st.one_of(st.integers(0, 6), st.just(2**32 - 1)), 5)
    data_len = maybe(draw, len(data), st.one_of(st.integers(0, 4000), st.just(2**64 - 1)), 5)
    version = maybe(draw, 1, st.integers(0, 0xFFFF), 3)
    flags = maybe(draw, 0, st.integers(1, 0xFFFF), 3)
    blob = HDR.pack(b"PRTP", version, flags, count, len(index), data_len, xxh64(index)) + index + data
    blob = blob[:maybe(draw, len(blob), st.integers(0, len(blob)), 5)]
    return blob + maybe(draw, b"", st.sampled_from([b"\0", b"junk"]), 5)


@given(blob=st.binary(max_size=400), limits=LIMIT_SETS)
def test_random_bytes(blob, limits):
    kind, _ = check(blob, limits)
    assert kind == "error" or blob[:4] == b"PRTP"


@given(tail=st.binary(min_size=26, max_size=300), limits=LIMIT_SETS)
def test_random_bytes_after_a_valid_magic_and_version(tail, limits):
    check(b"PRTP\x01\x00" + tail, limits)


@given(blob=forged(), limits=LIMIT_SETS)
def test_forged_containers(blob, limits):
    kind, value = check(blob, limits)
    if kind == "ok":  # whatever unpack accepts, pack can write and read back
        assert check(valid_blob(value)) == ("ok", value)


entries = st.lists(
    st.tuples(st.sampled_from([b"a", b"b", b"kernel.cubin", b"k.json", b"\xc3\xa9"]),
              st.one_of(st.binary(max_size=300), st.builds(lambda u, n: u * n, st.binary(min_size=1, max_size=4),
                                                           st.integers(1, 200)))),
    min_size=1, max_size=4, unique_by=lambda e: e[0],
)


@given(ents=entries, data=st.data())
def test_mutated_valid_containers(ents, data):
    original = valid_blob(ents)
    index_len = struct.unpack_from("<I", original, 12)[0]
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]), label="op")
        # pick the region first: uniform positions would mostly hit the header
        lo, hi = data.draw(st.sampled_from([(32, 32 + index_len), (32 + index_len, len(original)), (0, 32)]),
                           label="region")
        hi = min(hi, len(blob))
        i = data.draw(st.integers(min(lo, hi - 1), hi - 1), label="at") if hi > 0 else 0
        if op == "flip" and blob:
            blob[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif op == "set" and blob:
            blob[i] = data.draw(st.integers(0, 255), label="byte")
        elif op == "insert":
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=8), label="ins")
        elif op == "delete":
            del blob[i:i + data.draw(st.integers(1, 16), label="len")]
        else:
            del blob[i:]
    kind, value = check(bytes(blob))
    if kind == "ok":  # the checksums let no changed content through
        assert value == ents
