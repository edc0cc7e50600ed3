"""Frames over real pipes: both backends, across threads and processes.

Every test that takes ``backend`` runs on the C module and on the twin;
the cross tests write with one backend and read with the other, and compare
the raw bytes on the wire. Corrupt and random streams are fuzzed in
test_fuzz_framing.py.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import threading
import time

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyruntime import core as native, framing
from pyruntime.core import twin as _twin
from pyruntime.errors import ProtocolError

from _limits import run_limited

BACKENDS = native.backends()
HDR = struct.Struct("<4sHHQQQ")
MiB = 1 << 20
FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PY = next(b for b in BACKENDS if b.name == "python")


def _both():
    if BACKENDS[0].name != "c":
        pytest.skip("the C module is not built")
    return BACKENDS[0], PY


@pytest.fixture
def pipe():
    r, w = os.pipe()
    fds = {"r": r, "w": w}
    yield fds
    for fd in fds.values():
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def close_w(fds):
    os.close(fds["w"])
    fds["w"] = None


def drain(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def frame_bytes(kind: int, job_id: int, payload: bytes) -> bytes:
    """The documented layout, built independently of either backend."""
    return HDR.pack(b"PRTF", 1, kind, job_id, len(payload), xxhash.xxh3_64_intdigest(payload)) + payload


def pattern(n: int, seed: int = 1) -> bytes:
    """n bytes that are not all equal and differ between seeds."""
    block = bytes((seed * 131 + i * 7) & 0xFF for i in range(251))
    return (block * (n // 251 + 1))[:n]


class Writer(threading.Thread):
    """Writes frames in a thread; an exception is kept for the test to see."""

    def __init__(self, backend, fd, frames, close=True):
        super().__init__(daemon=True)
        self.backend, self.fd, self.frames, self.close = backend, fd, frames, close
        self.error: BaseException | None = None

    def run(self):
        try:
            for kind, job_id, payload in self.frames:
                self.backend.write_frame(self.fd, kind, job_id, payload)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e
        finally:
            if self.close:
                os.close(self.fd)


# ---------------------------------------------------------------- layout and agreement
def test_header_layout_matches_the_document(backend, pipe):
    backend.write_frame(pipe["w"], 0xBEEF, 0x0102030405060708, b"hello")
    close_w(pipe)
    raw = drain(pipe["r"])
    assert raw == frame_bytes(0xBEEF, 0x0102030405060708, b"hello")
    assert len(raw) == 32 + 5 == framing.HEADER_SIZE + 5
    assert raw[:4] == b"PRTF" and raw[4:6] == b"\x01\x00" and raw[6:8] == b"\xef\xbe"


@FIXTURE_OK
@given(kind=st.integers(0, 0xFFFF), job_id=st.integers(0, 2**64 - 1), payload=st.binary(max_size=4096))
def test_c_and_twin_write_identical_bytes(kind, job_id, payload):
    c, py = _both()
    wires = []
    for b in (c, py):
        r, w = os.pipe()
        try:
            b.write_frame(w, kind, job_id, payload)
            os.close(w)
            wires.append(drain(r))
        finally:
            os.close(r)
    assert wires[0] == wires[1] == frame_bytes(kind, job_id, payload)


@FIXTURE_OK
@given(
    kind=st.integers(0, 0xFFFF),
    job_id=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=8192),
    writer_is_c=st.booleans(),
)
def test_one_backend_writes_the_other_reads(kind, job_id, payload, writer_is_c):
    c, py = _both()
    writer, reader = (c, py) if writer_is_c else (py, c)
    r, w = os.pipe()
    try:
        writer.write_frame(w, kind, job_id, payload)
        writer.write_frame(w, kind ^ 1, job_id, payload[::-1])
        os.close(w)
        w = None
        assert reader.read_frame(r, len(payload)) == (kind, job_id, bytearray(payload))
        assert reader.read_frame(r, len(payload)) == (kind ^ 1, job_id, bytearray(payload[::-1]))
        with pytest.raises(EOFError):
            reader.read_frame(r, len(payload))
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 4096, 65535, 65536, 65537, 3 * MiB + 17])
def test_round_trip_sizes_across_a_thread(backend, pipe, size):
    payload = pattern(size)
    t = Writer(backend, pipe["w"], [(7, size, payload)])
    pipe["w"] = None  # the thread closes it
    t.start()
    kind, job_id, got = backend.read_frame(pipe["r"], size)
    t.join(10)
    assert t.error is None
    assert (kind, job_id, bytes(got)) == (7, size, payload)
    assert isinstance(got, bytearray)
    with pytest.raises(EOFError):
        backend.read_frame(pipe["r"], size)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("writer_name", ["c", "python"])
def test_cross_backend_multi_mib_across_a_thread(backend, pipe, writer_name):
    writers = {b.name: b for b in BACKENDS}
    if writer_name not in writers:
        pytest.skip("the C module is not built")
    frames = [(1, 1, pattern(5 * MiB, 1)), (2, 2, b""), (3, 3, pattern(MiB + 1, 3)), (4, 4, pattern(5 * MiB, 4))]
    t = Writer(writers[writer_name], pipe["w"], frames)
    pipe["w"] = None
    t.start()
    for kind, job_id, payload in frames:
        assert backend.read_frame(pipe["r"], 5 * MiB) == (kind, job_id, bytearray(payload))
    with pytest.raises(EOFError):
        backend.read_frame(pipe["r"], 5 * MiB)
    t.join(10)
    assert t.error is None


@pytest.mark.timeout(60)
def test_many_small_frames_in_a_row(backend, pipe):
    n = 5000
    frames = [(i & 0xFFFF, i * 0x9E3779B97F4A7C15 % 2**64, i.to_bytes(4, "little") * (i % 17)) for i in range(n)]
    t = Writer(backend, pipe["w"], frames)
    pipe["w"] = None
    t.start()
    for kind, job_id, payload in frames:
        assert backend.read_frame(pipe["r"], 64) == (kind, job_id, bytearray(payload))
    with pytest.raises(EOFError):
        backend.read_frame(pipe["r"], 64)
    t.join(10)
    assert t.error is None


def test_payload_may_be_any_contiguous_buffer(backend, pipe):
    import array

    ints = array.array("I", range(1000))
    backend.write_frame(pipe["w"], 1, 2, memoryview(ints))
    backend.write_frame(pipe["w"], 3, 4, bytearray(b"xyz"))
    backend.write_frame(pipe["w"], 5, 6, memoryview(b"0123456789")[2:5])
    close_w(pipe)
    assert PY.read_frame(pipe["r"], 1 << 20) == (1, 2, bytearray(ints.tobytes()))
    assert PY.read_frame(pipe["r"], 1 << 20) == (3, 4, bytearray(b"xyz"))
    assert PY.read_frame(pipe["r"], 1 << 20) == (5, 6, bytearray(b"234"))


# ---------------------------------------------------------------- another process
WRITER_SCRIPT = r"""
import os, sys
from pyruntime import core as native, framing
fd, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
assert native.BACKEND == sys.argv[4], native.BACKEND
for i in range(n):
    block = bytes((i * 131 + k * 7) & 0xFF for k in range(251))
    framing.write_frame(fd, i & 0xFFFF, i, (block * (size // 251 + 1))[:size] if i % 2 == 0 else b"")
os.close(fd)
"""


def _child_env(backend_name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYRUNTIME_PURE_PYTHON", None)
    if backend_name == "python":
        env["PYRUNTIME_PURE_PYTHON"] = "1"
    return env


@pytest.mark.timeout(60)
@pytest.mark.parametrize("writer_name", [b.name for b in BACKENDS])
def test_writer_in_another_process(backend, pipe, writer_name):
    n, size = 6, 3 * MiB + 5  # every other frame is larger than the pipe buffer
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(pipe["w"]), str(n), str(size), writer_name],
        pass_fds=[pipe["w"]],
        env=_child_env(writer_name),
    )
    close_w(pipe)
    try:
        for i in range(n):
            kind, job_id, payload = backend.read_frame(pipe["r"], size)
            assert (kind, job_id) == (i, i)
            assert bytes(payload) == (pattern(size, i) if i % 2 == 0 else b"")
        with pytest.raises(EOFError):
            backend.read_frame(pipe["r"], size)
    finally:
        assert proc.wait(30) == 0


@pytest.mark.timeout(60)
def test_writer_killed_mid_frame_reads_as_truncated(backend, pipe):
    # The child writes a header promising 8 MiB, then only part of the
    # payload, and dies: the reader sees a truncated frame, not EOF.
    script = (
        "import os, struct, sys, xxhash\n"
        "fd = int(sys.argv[1])\n"
        "os.write(fd, struct.pack('<4sHHQQQ', b'PRTF', 1, 1, 1, 8 << 20, 0))\n"
        "os.write(fd, b'x' * 100000)\n"
        "os._exit(3)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(pipe["w"])], pass_fds=[pipe["w"]])
    close_w(pipe)
    with pytest.raises(ProtocolError, match="truncated"):
        backend.read_frame(pipe["r"], 8 << 20)
    assert proc.wait(30) == 3


def test_writer_in_a_multiprocessing_child(backend, pipe):
    import multiprocessing

    # fork: the child inherits the pipe's write end as it is
    proc = multiprocessing.get_context("fork").Process(target=_mp_writer, args=(pipe["w"], 2 * MiB))
    proc.start()
    close_w(pipe)
    assert backend.read_frame(pipe["r"], 2 * MiB) == (9, 99, bytearray(pattern(2 * MiB, 9)))
    with pytest.raises(EOFError):
        backend.read_frame(pipe["r"], 2 * MiB)
    proc.join(30)
    assert proc.exitcode == 0


def _mp_writer(fd: int, size: int) -> None:
    framing.write_frame(fd, 9, 99, pattern(size, 9))
    os.close(fd)


# ---------------------------------------------------------------- limits and errors
def test_clean_eof_at_a_frame_boundary(backend, pipe):
    backend.write_frame(pipe["w"], 1, 1, b"abc")
    close_w(pipe)
    assert backend.read_frame(pipe["r"], 3) == (1, 1, bytearray(b"abc"))
    with pytest.raises(EOFError):
        backend.read_frame(pipe["r"], 3)
    with pytest.raises(EOFError):  # and it stays at EOF
        backend.read_frame(pipe["r"], 3)


def test_eof_is_not_a_protocol_error():
    # EOFError and ProtocolError must stay distinct for callers that catch one.
    assert not issubclass(EOFError, ProtocolError) and not issubclass(ProtocolError, EOFError)
    assert issubclass(ProtocolError, ValueError)


@pytest.mark.timeout(30)
def test_max_len_lower_than_the_payload(backend, pipe):
    size = 4 * MiB
    t = Writer(backend, pipe["w"], [(1, 2, pattern(size))])
    pipe["w"] = None
    t.start()
    with pytest.raises(ProtocolError, match=f"{size} bytes is over the {size - 1}-byte limit"):
        backend.read_frame(pipe["r"], size - 1)
    # The writer is stuck on a full pipe: closing the read end must free it.
    os.close(pipe["r"])
    pipe["r"] = None
    t.join(10)
    assert not t.is_alive()
    assert isinstance(t.error, BrokenPipeError)


def test_max_len_equal_to_the_payload_and_zero(backend, pipe):
    backend.write_frame(pipe["w"], 1, 1, b"12345")
    backend.write_frame(pipe["w"], 2, 2, b"")
    backend.write_frame(pipe["w"], 3, 3, b"1")
    close_w(pipe)
    assert backend.read_frame(pipe["r"], 5)[2] == b"12345"
    assert backend.read_frame(pipe["r"], 0) == (2, 2, bytearray())
    with pytest.raises(ProtocolError, match="over the 0-byte limit"):
        backend.read_frame(pipe["r"], 0)


def test_read_from_a_closed_fd_is_an_os_error(backend):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        backend.read_frame(r, 10)
    assert not isinstance(info.value, (EOFError, ProtocolError))
    with pytest.raises(OSError):
        backend.write_frame(w, 1, 1, b"x")


def test_write_to_a_pipe_with_no_reader_is_broken_pipe(backend, pipe):
    os.close(pipe["r"])
    pipe["r"] = None
    with pytest.raises(BrokenPipeError):
        backend.write_frame(pipe["w"], 1, 1, b"x" * 100)


# ---------------------------------------------------------------- forged lengths
@pytest.mark.timeout(60)
@pytest.mark.parametrize("cut", [None, 0, 20 * MiB + 3, 33 * MiB])
def test_payloads_past_the_eager_allocation_size(backend, pipe, cut):
    """Past 16 MiB the reader grows its buffer as bytes arrive; whole,
    truncated and corrupted frames of that size behave like small ones."""
    size = 40 * MiB + 11
    assert size > _twin.EAGER_PAYLOAD
    frame = frame_bytes(4, 5, pattern(size, 4))
    if cut is not None:
        frame = frame[:32 + cut]
    t = threading.Thread(target=_write_all, args=(pipe["w"], frame), daemon=True)
    pipe["w"] = None  # _write_all closes it
    t.start()
    if cut is None:
        assert backend.read_frame(pipe["r"], size) == (4, 5, bytearray(pattern(size, 4)))
    else:
        with pytest.raises(ProtocolError, match=f"truncated frame: stream ended {cut} of {size}"):
            backend.read_frame(pipe["r"], size)
    t.join(10)


def test_large_payload_checksum_mismatch(backend, pipe):
    size = 17 * MiB
    bad = bytearray(frame_bytes(1, 1, pattern(size)))
    bad[-1] ^= 1
    t = threading.Thread(target=_write_all, args=(pipe["w"], bytes(bad)), daemon=True)
    pipe["w"] = None  # _write_all closes it
    t.start()
    with pytest.raises(ProtocolError, match="checksum mismatch"):
        backend.read_frame(pipe["r"], size)
    t.join(10)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)


FORGED_CHILD = r"""
import os, struct
from pyruntime import core as native, framing
from pyruntime.errors import ProtocolError
limit_address_space(256 << 20)
cases = [
    ("over max_len", 1 << 62, None),              # refused from the header
    ("over explicit max_len", 3 << 30, 1 << 30),
    ("truncated, under max_len", 3 << 30, 1 << 62),  # must not allocate 3 GiB
    ("truncated 2**64-1", 2**64 - 1, 2**64 - 1),
]
for name, length, max_len in cases:
    r, w = os.pipe()
    os.write(w, struct.pack("<4sHHQQQ", b"PRTF", 1, 1, 1, length, 0) + b"x" * 1000)
    os.close(w)
    try:
        framing.read_frame(r, max_len)
    except ProtocolError as e:
        print(name, "->", e)
    else:
        raise AssertionError(name + ": accepted")
    os.close(r)
assert_limit_bites()
print("done", native.BACKEND)
"""


@pytest.mark.timeout(60)
def test_forged_lengths_allocate_nothing_big(backend):
    out = run_limited(FORGED_CHILD, backend.name)
    assert out.strip().endswith(f"done {backend.name}")
    assert "over max_len -> frame payload of 4611686018427387904 bytes is over the 2147483648-byte limit" in out
    assert "over explicit max_len -> frame payload of 3221225472 bytes is over the 1073741824-byte limit" in out
    assert "truncated, under max_len -> truncated frame" in out
    assert "truncated 2**64-1 -> truncated frame" in out


# ---------------------------------------------------------------- the GIL
@pytest.mark.timeout(30)
def test_a_blocked_read_frame_lets_other_threads_run(backend, pipe):
    """While one thread waits in read_frame on an empty pipe, this thread
    keeps running Python code. A reader that held the GIL would freeze this
    thread until the child process writes, one second later."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time, struct, xxhash\n"
         "time.sleep(1.0)\n"
         "p = b'late'\n"
         "os.write(int(sys.argv[1]), struct.pack('<4sHHQQQ', b'PRTF', 1, 5, 6, 4, xxhash.xxh3_64_intdigest(p)) + p)\n",
         str(pipe["w"])],
        pass_fds=[pipe["w"]],
    )
    result: list = []
    entered = threading.Event()

    def reader():
        entered.set()
        result.append(backend.read_frame(pipe["r"], 100))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    entered.wait(5)
    ticks, gaps, last = 0, [], time.monotonic()
    while t.is_alive():
        ticks += 1
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    t.join(10)
    assert child.wait(10) == 0
    assert result == [(5, 6, bytearray(b"late"))]
    assert ticks > 1000
    assert max(gaps) < 0.5, f"this thread stalled for {max(gaps):.2f} s while the other one read"


# ---------------------------------------------------------------- the public module
def test_public_module_round_trip_and_frame_tuple(pipe):
    framing.write_frame(pipe["w"], 3, 4, b"payload")
    framing.write_frame(pipe["w"], 5, 6)
    close_w(pipe)
    f = framing.read_frame(pipe["r"])
    assert isinstance(f, framing.Frame)
    assert (f.kind, f.job_id, bytes(f.payload)) == (3, 4, b"payload")
    assert tuple(framing.read_frame(pipe["r"], 0)) == (5, 6, bytearray())
    with pytest.raises(EOFError):
        framing.read_frame(pipe["r"])


@pytest.mark.parametrize(
    "kind, job_id, match",
    [(-1, 0, "kind -1"), (0x10000, 0, "kind 65536"), (0, -1, "job id -1"), (0, 2**64, "job id")],
)
def test_public_write_frame_checks_kind_and_job_id(pipe, kind, job_id, match):
    with pytest.raises(ValueError, match=match):
        framing.write_frame(pipe["w"], kind, job_id, b"")
    close_w(pipe)
    assert drain(pipe["r"]) == b""  # nothing was written


def test_public_read_frame_default_limit_comes_from_the_environment(pipe, monkeypatch):
    monkeypatch.setenv("PYRUNTIME_MAX_FRAME", "10")
    framing.write_frame(pipe["w"], 1, 1, b"0123456789")
    framing.write_frame(pipe["w"], 1, 1, b"0123456789A")
    close_w(pipe)
    assert framing.read_frame(pipe["r"]).payload == b"0123456789"
    with pytest.raises(ProtocolError, match="over the 10-byte limit"):
        framing.read_frame(pipe["r"])


def test_public_module_uses_the_selected_backend():
    assert native.BACKEND in ("c", "python")
    assert native.backend.name == native.BACKEND
    assert framing.HEADER_SIZE == 32 == _twin.FRAME_HEADER.size


# ---------------------------------------------------------------- one big frame
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_one_gib_payload_through_a_pipe(c_backend, pipe):
    size = 1 << 30
    payload = bytearray(size)
    payload[0], payload[size // 2], payload[-1] = 1, 2, 3
    # A 1 MiB pipe buffer (the default Linux maximum) cuts context switches.
    fcntl.fcntl(pipe["w"], fcntl.F_SETPIPE_SZ, 1 << 20)
    t = Writer(c_backend, pipe["w"], [(1, 2, payload)])
    pipe["w"] = None
    t0 = time.monotonic()
    t.start()
    kind, job_id, got = c_backend.read_frame(pipe["r"], size)
    t.join(30)
    assert t.error is None
    assert (kind, job_id, len(got)) == (1, 2, size)
    assert got == payload
    del got, payload
    assert time.monotonic() - t0 < 60
