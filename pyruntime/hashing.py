"""XXH3-128 digests of bytes, files and Triton cache directories.

``hash_dir`` walks the tree canonically (docs/FORMAT.md, "Directory
digest"): depth first, names sorted by raw bytes, symlinks not followed
(their target string is hashed), Triton's ``lock`` files and ``tmp.*``
directories left out. Digests are 32 lowercase hex characters.
"""

from __future__ import annotations

import os

from . import core


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """XXH3-128 of ``data``."""
    return core.backend.hash_bytes(data)


def hash_file(path: str | os.PathLike[str]) -> str:
    """XXH3-128 of a file's contents."""
    return core.backend.hash_file(path)


def hash_dir(path: str | os.PathLike[str]) -> str:
    """Stable XXH3-128 digest of a directory tree (see the module docstring)."""
    return core.backend.hash_dir(path)
