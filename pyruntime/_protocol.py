"""Wire vocabulary shared by the pool, the sidecar and the workers.

Data channels: one pipe pair per worker, framed by pyruntime.framing. The
caller writes call items straight into a worker's job pipe and reads result
items straight from its result pipe; the sidecar never touches job data.
Workers read and write those pipes blocking (pyruntime.framing); the caller
keeps its ends non-blocking: :func:`encode_frame` gives the buffers of one
frame for a non-blocking ``writev`` that may take them in pieces, and
:class:`FrameReader` reassembles frames from whatever a non-blocking read
returns, so the caller never waits on a worker in the middle of a frame.

Control channel: an AF_UNIX SOCK_SEQPACKET socket pair between the caller and
the sidecar, one small JSON object per packet. The sidecar hands each new
worker's pipe ends to the caller with SCM_RIGHTS ("worker_up") and reports
every worker exit with its status ("worker_exit").
"""

from __future__ import annotations

import json
import os
import pickle
import socket
from enum import Enum
from typing import Any

import xxhash

from .core.twin import EAGER_PAYLOAD, FRAME_HEADER, FRAME_MAGIC, encode_frame_header, parse_frame_header
from .errors import ProtocolError

# frame kinds on the per-worker pipes
CALL = 1          # caller -> worker: pickled (fn, args, kwargs)
INIT = 2          # caller -> worker: pickled (initializer, initargs), first frame
RESULT = 3        # worker -> caller: pickled (seconds, result)
ERROR = 4         # worker -> caller: pickled (seconds, remote exception tuple)
INIT_FAILED = 5   # worker -> caller: like ERROR, then the worker exits

HEADER_SIZE = FRAME_HEADER.size
READ_CHUNK = 1 << 16    # one read() for a whole small result item, or several
READ_BUDGET = 4 << 20   # bytes FrameReader.read takes from one pipe per call


def encode_frame(kind: int, job_id: int, payload: bytes) -> list[memoryview]:
    """The buffers of one frame (header, then payload), the same bytes
    pyruntime.framing.write_frame writes, for a writev that may be partial."""
    header = memoryview(encode_frame_header(kind, job_id, payload))
    return [header, memoryview(payload)] if payload else [header]


class FrameReader:
    """Frames from a non-blocking pipe, reassembled across reads.

    :meth:`read` takes what the pipe holds now and never waits. A payload
    is read straight into its own buffer, allocated up to EAGER_PAYLOAD at
    once and grown as bytes arrive past that, so a forged length costs at
    most twice the bytes actually sent. Bad magic is seen from the first
    four bytes, without waiting for a whole header."""

    __slots__ = ("fd", "max_len", "buf", "head", "payload", "got")

    def __init__(self, fd: int, max_len: int) -> None:
        self.fd = fd
        self.max_len = max_len
        self.buf = bytearray()  # read, not yet parsed (no payload in progress)
        self.head: tuple[int, int, int, int] | None = None  # kind, job id, length, checksum
        self.payload: bytearray | None = None
        self.got = 0

    def read(self) -> tuple[list[tuple[int, int, bytearray]], BaseException | None]:
        """(frames now complete, how reading stopped): None when the pipe is
        drained for now (or READ_BUDGET was reached: read again when it polls
        readable), EOFError at its end (a frame cut short by the writer's
        death included: nothing malformed was received), ProtocolError for
        a malformed frame (after which the stream cannot be trusted)."""
        frames: list[tuple[int, int, bytearray]] = []
        taken = 0
        try:
            while taken < READ_BUDGET:
                if self.payload is not None:
                    want = len(self.payload) - self.got
                    n = os.readv(self.fd, [memoryview(self.payload)[self.got:]])
                    if n == 0:
                        return frames, EOFError(f"end of stream {self.got} bytes into a payload")
                    taken += n
                    self.got += n
                    if self.got == len(self.payload):
                        self._payload_full(frames)
                    if n < want:
                        return frames, None  # a short read: the pipe is empty
                    continue
                data = os.read(self.fd, READ_CHUNK)
                if not data:
                    return frames, EOFError(f"end of stream {len(self.buf)} bytes into a header"
                                            if self.buf else "end of stream")
                taken += len(data)
                self.buf += data
                self._parse(frames)
                if len(data) < READ_CHUNK:
                    return frames, None
        except BlockingIOError:
            return frames, None
        except ProtocolError as e:
            return frames, e
        except OSError as e:
            return frames, EOFError(f"result pipe read failed: {e}")
        return frames, None

    def _parse(self, frames: list[tuple[int, int, bytearray]]) -> None:
        buf = self.buf
        while buf:
            if not FRAME_MAGIC.startswith(bytes(buf[:len(FRAME_MAGIC)])):
                raise ProtocolError(f"bad frame magic {bytes(buf[:len(FRAME_MAGIC)])!r} (expected {FRAME_MAGIC!r})")
            if len(buf) < HEADER_SIZE:
                return
            kind, job_id, length, checksum = parse_frame_header(bytes(buf[:HEADER_SIZE]), self.max_len)
            end = HEADER_SIZE + length
            if len(buf) >= end:
                payload = buf[HEADER_SIZE:end]
                del buf[:end]
                if xxhash.xxh3_64_intdigest(payload) != checksum:
                    raise ProtocolError("frame payload checksum mismatch")
                frames.append((kind, job_id, payload))
                continue
            # a payload longer than what arrived: read the rest straight into it
            self.head = (kind, job_id, length, checksum)
            rest = len(buf) - HEADER_SIZE  # under READ_CHUNK, so under EAGER_PAYLOAD
            self.payload = bytearray(min(length, EAGER_PAYLOAD))
            self.payload[:rest] = memoryview(buf)[HEADER_SIZE:]
            self.got = rest
            buf.clear()
            return

    def _payload_full(self, frames: list[tuple[int, int, bytearray]]) -> None:
        assert self.head is not None and self.payload is not None
        kind, job_id, length, checksum = self.head
        if len(self.payload) < length:  # grown as bytes arrive, never to more than twice what came
            self.payload.extend(bytes(min(len(self.payload), length - len(self.payload))))
            return
        payload, self.payload, self.head, self.got = self.payload, None, None, 0
        if xxhash.xxh3_64_intdigest(payload) != checksum:
            raise ProtocolError("frame payload checksum mismatch")
        frames.append((kind, job_id, payload))


# control channel (AF_UNIX SOCK_SEQPACKET, one JSON object per packet; the
# sidecar attaches a new worker's pipe ends with SCM_RIGHTS)
MAX_CONTROL = 1 << 16


def send_control(sock: socket.socket, op: str, fds: list[int] | None = None, **fields: Any) -> None:
    data = json.dumps({"op": op, **fields}).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def recv_control(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One control message and the fds that came with it; (None, []) at EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_CONTROL, 4, socket.MSG_CMSG_CLOEXEC)
    if not data:
        for fd in fds:
            _close_quietly(fd)
        return None, []
    return json.loads(data), list(fds)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def describe_exit(status: int | None, signame: str | None = None) -> str:
    """'exit code 3' or 'signal 11 (SIGSEGV)' for a waitpid-style return code
    (negative = killed by that signal, as subprocess reports it)."""
    import signal

    if status is None:
        return "an unknown status"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = "unknown"
        extra = "; possibly killed for memory" if -status == signal.SIGKILL else ""
        return f"signal {-status} ({name}{extra})"
    return f"exit code {status}"


class SubprocKind(str, Enum):
    """How the sidecar starts workers. FORK (default): fork the clean sidecar,
    fast and cheap to respawn. SPAWN: exec a fresh interpreter per worker."""

    FORK = "fork"
    SPAWN = "spawn"


class SubprocPickler:
    """How call and result items are serialised. Subclass it to change that;
    the sidecar and workers import the subclass by its qualified name, so it
    must live in an importable module (not ``__main__``)."""

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes | bytearray | memoryview) -> Any:
        return pickle.loads(data)


def pickler_qualname(pickler: SubprocPickler) -> str:
    cls = type(pickler)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ValueError(
            f"pickler class {cls.__qualname__} must be defined at module level of an importable "
            "module (the sidecar imports it by name)"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def lookup_pickler(qualname: str) -> SubprocPickler:
    """Import ``module:Class``, check it is a SubprocPickler, instantiate it."""
    import importlib

    module_name, _, attr = qualname.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, SubprocPickler)):
        raise TypeError(f"{qualname} is not a subclass of pyruntime.SubprocPickler")
    return obj()
