"""pyruntime: Triton kernels compiled in a sidecar worker pool, shipped as
small verified bundles.

Importing this package is cheap: it never imports torch or triton, and the
heavier submodules load on first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    BrokenPoolError,
    BundleCompatibilityError,
    BundleFormatError,
    JITCompileError,
    JobTimeoutError,
    ProtocolError,
    PyRuntimeError,
    WorkerDiedError,
    WorkerMemoryError,
)

_LAZY = {
    "read_frame": "framing",
    "write_frame": "framing",
    "Frame": "framing",
    "hash_bytes": "hashing",
    "hash_file": "hashing",
    "hash_dir": "hashing",
    "pack": "packing",
    "unpack": "packing",
    "SubprocPool": "pool",
    "SubprocKind": "pool",
    "SubprocPickler": "pool",
    "SubprocException": "pool",
    "TritonBundler": "bundle",
    "TritonBundle": "bundle",
    "TritonBundleEntry": "bundle",
    "TritonKernelArtifact": "bundle",
    "TritonKernelArtifacts": "bundle",
    "TritonBundlerMetadata": "bundle",
    "collect_dir": "bundle",
    "load_bundle": "bundle",
    "run_out_of_process": "outofproc",
    "submit_out_of_process": "outofproc",
    "bump_cache_generation": "outofproc",
    "cache_generation": "outofproc",
    "register_clear_hook": "outofproc",
    "unregister_clear_hook": "outofproc",
    "shutdown_out_of_process": "outofproc",
    "freeze": "jit_guard",
    "record_launches": "record",
}

__all__ = [
    "__version__",
    "BrokenPoolError",
    "BundleCompatibilityError",
    "BundleFormatError",
    "JITCompileError",
    "JobTimeoutError",
    "ProtocolError",
    "PyRuntimeError",
    "WorkerDiedError",
    "WorkerMemoryError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyruntime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .framing import Frame, read_frame, write_frame
    from .jit_guard import freeze
    from .hashing import hash_bytes, hash_dir, hash_file
    from .packing import pack, unpack
    from .pool import SubprocException, SubprocKind, SubprocPickler, SubprocPool
    from .record import record_launches
