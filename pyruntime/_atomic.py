"""Atomic file writes: the bytes go to a temporary file next to the target,
which is then renamed onto it, so the target never holds a partial file."""

from __future__ import annotations

import os
from typing import Union


Buffer = Union[bytes, bytearray, memoryview]
_IOV_BATCH = 512  # buffers per writev call (IOV_MAX is 1024 on Linux)


def _write_all(fd: int, parts: list[Buffer]) -> None:
    """writev every part in order, however much each call takes."""
    views = [v for v in (memoryview(p).cast("B") for p in parts) if len(v)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_BATCH])
        while n:
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


def write_atomic(path: str | os.PathLike[str], data: Buffer | list[Buffer], *,
                 unlink_first: bool = False) -> None:
    """Write ``data`` (a buffer, or a list of buffers written back to back)
    to ``path`` through a temporary file and a rename.

    ``unlink_first`` removes an existing ``path`` just before the rename:
    renaming over an existing file makes ext4 flush the new one at once
    (``auto_da_alloc``), which costs more than writing a bundle."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        try:
            _write_all(fd, data if isinstance(data, list) else [data])
        finally:
            os.close(fd)
        if unlink_first:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
