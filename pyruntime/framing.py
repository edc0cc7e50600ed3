"""Length-prefixed frames over file descriptors (pipes, sockets).

A frame is a 32-byte little-endian header followed by the payload::

    offset  size  field
    0       4     magic  b"PRTF"
    4       2     version (1)
    6       2     kind (caller-defined message type)
    8       8     job id
    16      8     payload length
    24      8     XXH3-64 of the payload (seed 0)

:func:`write_frame` sends header and payload with one ``writev`` loop
(partial writes and EINTR are retried); :func:`read_frame` reads exactly one
frame. The C backend releases the GIL for the whole blocking call.
"""

from __future__ import annotations

from typing import NamedTuple

from . import config, core
from .core.twin import FRAME_HEADER

HEADER_SIZE = FRAME_HEADER.size

Buffer = bytes | bytearray | memoryview


class Frame(NamedTuple):
    kind: int
    job_id: int
    payload: bytearray


def write_frame(fd: int, kind: int, job_id: int, payload: Buffer = b"") -> None:
    """Write one frame to ``fd`` (blocking). ``kind`` is 0..65535."""
    if not 0 <= kind <= 0xFFFF:
        raise ValueError(f"frame kind {kind} is outside 0..65535")
    if not 0 <= job_id < 1 << 64:
        raise ValueError(f"job id {job_id} is outside 0..2**64-1")
    core.backend.write_frame(fd, kind, job_id, payload)


def read_frame(fd: int, max_len: int | None = None) -> Frame:
    """Read exactly one frame from ``fd`` (blocking).

    Raises EOFError on a clean end of stream before the first header byte,
    :class:`~pyruntime.errors.ProtocolError` on a truncated frame, bad magic
    or version, checksum mismatch, or a length over ``max_len`` (default
    PYRUNTIME_MAX_FRAME, 2 GiB); the bogus length is never allocated."""
    limit = config.max_frame_bytes() if max_len is None else max_len
    kind, job_id, payload = core.backend.read_frame(fd, limit)
    return Frame(kind, job_id, payload)
