"""Atomic file writes: the bytes go to a temporary file next to the target,
which is then renamed onto it, so the target never holds a partial file."""

from __future__ import annotations

import os


def write_atomic(path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *,
                 unlink_first: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    ``unlink_first`` removes an existing ``path`` just before the rename:
    renaming over an existing file makes ext4 flush the new one at once
    (``auto_da_alloc``), which costs more than writing a bundle."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
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
