"""Pack named artifacts into one verified, LZ4-compressed container.

The byte layout is in docs/FORMAT.md ("Pack container"). :func:`unpack`
checks the header, the index checksum, every name, size limit and block
checksum before it returns anything, and raises
:class:`~pyruntime.errors.BundleFormatError` naming the first problem.
"""

from __future__ import annotations

from typing import Iterable

from . import core
from .errors import BundleFormatError

DEFAULT_MAX_ENTRY = 1 << 30  # 1 GiB per entry
DEFAULT_MAX_TOTAL = 4 << 30  # 4 GiB per container

Buffer = bytes | bytearray | memoryview


def pack(entries: Iterable[tuple[str, Buffer]]) -> bytes:
    """Pack ``(name, data)`` pairs; names are plain file names (no ``/``,
    ``\\``, NUL, ``.`` or ``..``, at most 255 UTF-8 bytes)."""
    encoded = []
    for i, (name, data) in enumerate(entries):
        if not isinstance(name, str):
            raise TypeError(f"entry {i}: name must be str, not {type(name).__name__}")
        try:
            raw_name = name.encode("utf-8")
        except UnicodeEncodeError:
            raise BundleFormatError(f"entry {i}: name is not valid UTF-8") from None
        encoded.append((raw_name, data))
    return core.backend.pack(encoded)


def unpack(
    data: Buffer, *, max_entry: int = DEFAULT_MAX_ENTRY, max_total: int = DEFAULT_MAX_TOTAL
) -> list[tuple[str, bytes]]:
    """Verify and unpack a container made by :func:`pack`."""
    out = []
    for i, (raw_name, content) in enumerate(core.backend.unpack(data, max_entry, max_total)):
        try:
            out.append((raw_name.decode("utf-8"), content))
        except UnicodeDecodeError:
            raise BundleFormatError(f"entry {i}: name is not valid UTF-8") from None
    return out
