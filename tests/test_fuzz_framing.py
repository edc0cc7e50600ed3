"""Fuzz read_frame with random and corrupted streams through real pipes.

A reference parser written from docs/FORMAT.md ("Frame") says what each
stream must yield: the frames before the first problem, then EOFError
(clean end at a frame boundary) or a ProtocolError of one category. Both
backends must match it exactly, and nothing may crash the interpreter.
"""

from __future__ import annotations

import os
import struct

import pytest
import xxhash
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pyruntime import core as native
from pyruntime.errors import ProtocolError

BACKENDS = native.backends()
HDR = struct.Struct("<4sHHQQQ")
PIPE_SAFE = 60000  # stay under the 64 KiB pipe buffer: write everything, then read
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# The words each ProtocolError message must contain, by category.
CATEGORY_WORDS = {
    "truncated": "truncated",
    "magic": "magic",
    "version": "version",
    "limit": "limit",
    "checksum": "checksum",
}


def encode(kind: int, job_id: int, payload: bytes) -> bytes:
    return HDR.pack(b"PRTF", 1, kind, job_id, len(payload), xxhash.xxh3_64_intdigest(payload)) + payload


def reference(stream: bytes, max_len: int):
    """(frames, outcome) where outcome is "eof" or a ProtocolError category."""
    frames, pos = [], 0
    while True:
        if pos == len(stream):
            return frames, "eof"
        if len(stream) - pos < HDR.size:
            return frames, "truncated"
        magic, version, kind, job_id, length, checksum = HDR.unpack_from(stream, pos)
        if magic != b"PRTF":
            return frames, "magic"
        if version != 1:
            return frames, "version"
        if length > max_len:
            return frames, "limit"
        payload = stream[pos + HDR.size:pos + HDR.size + length]
        if len(payload) < length:
            return frames, "truncated"
        if xxhash.xxh3_64_intdigest(payload) != checksum:
            return frames, "checksum"
        frames.append((kind, job_id, payload))
        pos += HDR.size + length


def run_backend(backend, stream: bytes, max_len: int):
    r, w = os.pipe()
    try:
        os.write(w, stream)
        os.close(w)
        w = -1
        frames = []
        while True:
            try:
                kind, job_id, payload = backend.read_frame(r, max_len)
            except EOFError:
                return frames, "eof"
            except ProtocolError as e:
                msg = str(e)
                cats = [c for c, word in CATEGORY_WORDS.items() if word in msg]
                assert len(cats) == 1, f"message {msg!r} names no single problem"
                return frames, cats[0]
            assert isinstance(payload, bytearray)
            frames.append((kind, job_id, bytes(payload)))
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


def check(stream: bytes, max_len: int) -> None:
    want = reference(stream, max_len)
    event(f"{len(want[0])} frames, then {want[1]}")
    for b in BACKENDS:
        assert run_backend(b, stream, max_len) == want, b.name


frames_st = st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1), st.binary(max_size=600)), max_size=6
)
max_lens = st.one_of(st.just(600), st.integers(0, 700), st.just(2**64 - 1))


@given(stream=st.binary(max_size=300), max_len=max_lens)
def test_random_bytes(stream, max_len):
    check(stream, max_len)


@given(stream=st.binary(min_size=26, max_size=200), max_len=max_lens)
def test_random_bytes_after_a_valid_magic(stream, max_len):
    check(b"PRTF\x01\x00" + stream, max_len)


@given(frames=frames_st, max_len=max_lens, data=st.data())
def test_truncated_streams(frames, max_len, data):
    stream = b"".join(encode(*f) for f in frames)
    cut = data.draw(st.integers(0, len(stream)), label="cut")
    check(stream[:cut], max_len)


@given(frames=frames_st.filter(bool), max_len=max_lens, data=st.data())
def test_corrupted_streams(frames, max_len, data):
    stream = bytearray(b"".join(encode(*f) for f in frames))
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        if not stream:
            break
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]), label="op")
        i = data.draw(st.integers(0, len(stream) - 1), label="at")
        if op == "flip":
            stream[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif op == "set":
            stream[i] = data.draw(st.integers(0, 255), label="byte")
        elif op == "insert":
            stream[i:i] = data.draw(st.binary(min_size=1, max_size=8), label="ins")
        else:
            del stream[i:i + data.draw(st.integers(1, 40), label="len")]
    check(bytes(stream[:PIPE_SAFE]), max_len)


@given(
    kind=st.integers(0, 0xFFFF),
    job_id=st.integers(0, 2**64 - 1),
    length=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([2**63, 2**64 - 1, 2**32, 2**31])),
    checksum=st.integers(0, 2**64 - 1),
    tail=st.binary(max_size=64),
)
def test_forged_headers_never_allocate_the_declared_length(kind, job_id, length, checksum, tail):
    # max_len 1 MiB: any length above it must be refused before allocation,
    # which a 2**64-1 length would make fatal.
    check(HDR.pack(b"PRTF", 1, kind, job_id, length, checksum) + tail, 1 << 20)


def test_reference_parser_is_not_vacuous():
    # the reference yields every outcome the fuzzers compare on
    good = encode(1, 2, b"abc")
    assert reference(good + good, 10) == ([(1, 2, b"abc")] * 2, "eof")
    assert reference(good[:10], 10)[1] == "truncated"
    assert reference(b"XXXX" + good[4:], 10)[1] == "magic"
    assert reference(good[:4] + b"\x02" + good[5:], 10)[1] == "version"
    assert reference(good, 2)[1] == "limit"
    assert reference(good[:-1] + b"x", 10)[1] == "checksum"
    for outcome_stream, cat in [(good[:10], "truncated"), (good[:-1] + b"x", "checksum")]:
        for b in BACKENDS:
            assert run_backend(b, outcome_stream, 10) == ([], cat)


@pytest.mark.timeout(60)
def test_every_prefix_of_a_frame_sequence(backend):
    stream = encode(1, 1, b"") + encode(2, 2, b"x" * 100) + encode(3, 3, b"yz")
    for cut in range(len(stream) + 1):
        assert run_backend(backend, stream[:cut], 1000) == reference(stream[:cut], 1000)
