"""This installation against a bundle's: the installed Triton version and
Python ABI tag, the Triton cache directory, and why a bundled kernel does
not fit (another Triton, another Python ABI, another target) under the
``on_mismatch`` policy.

Why the ABI matters: Triton's cache key hashes its ``libtriton`` library,
and Triton ships one wheel per CPython minor version whose libraries
differ, so the same Triton version under Python 3.11 and 3.12 gives every
kernel a different key: a bundle restored under another Python is written
but never hit. Bundles record ``triton_abi`` (``"cpython-311-x86_64-linux-gnu"``)
at collect time and restore compares it.

Neither Triton nor ``importlib.metadata`` is imported: the version comes
from the distribution's ``METADATA`` file, found the way
``importlib.metadata`` finds it.
"""

from __future__ import annotations

import ctypes
import os
import platform as _platform
import re
import sys
from functools import lru_cache
from typing import Literal

from .. import config as _env
from ..errors import BundleFormatError
from .model import KernelRow, TritonKernelArtifacts
from .rules import check_abi

MismatchPolicy = Literal["warn", "error", "force"]


_TRITON_DISTS = ("triton", "pytorch-triton", "pytorch-triton-rocm", "pytorch-triton-xpu", "triton-xpu")


@lru_cache(maxsize=1)
def installed_triton_version() -> str | None:
    """Version of the installed Triton distribution, from its package
    metadata (Triton itself is not imported); ``None`` when none is found.

    The metadata is found the way ``importlib.metadata.version`` finds it
    (the first ``sys.path`` entry holding the distribution), by listing
    those directories: importing ``importlib.metadata`` alone costs tens of
    milliseconds, a first restore's whole budget. Anything unusual (a zip on
    the path, two copies in one directory, metadata without a version) is
    left to ``importlib.metadata``."""
    for dist in _TRITON_DISTS:
        found = _dist_info_version(dist)
        if found is _UNSURE:
            return _metadata_version()
        if found is not None:
            return found  # type: ignore[return-value]
    return None


_UNSURE = object()


def _dist_info_version(dist: str) -> object:
    """``dist``'s version from its ``.dist-info/METADATA`` in the first
    ``sys.path`` directory that has one; ``None`` when none has;
    :data:`_UNSURE` when only ``importlib.metadata`` can tell."""
    want = re.sub(r"[-_.]+", "_", dist).lower()
    for entry in sys.path:
        try:
            children = os.listdir(entry or ".")
        except NotADirectoryError:
            return _UNSURE  # a zip or egg file: importlib.metadata reads those
        except OSError:
            continue
        # named as importlib.metadata names them: lower case, no
        # extension, up to the first "-", runs of -_. as one _
        hits = [c for c in children
                if c.lower().endswith((".dist-info", ".egg-info"))
                and re.sub(r"[-_.]+", "_", c.lower().rpartition(".")[0].partition("-")[0]) == want]
        if not hits:
            continue
        if len(hits) > 1 or not hits[0].endswith(".dist-info"):
            return _UNSURE
        try:
            with open(os.path.join(entry or ".", hits[0], "METADATA"), encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        break  # end of the header block
                    if line.startswith("Version:"):
                        return line[len("Version:"):].strip() or _UNSURE
        except (OSError, UnicodeDecodeError):
            pass
        return _UNSURE
    return None


def _metadata_version() -> str | None:
    from importlib import metadata

    for dist in _TRITON_DISTS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def abi_from_ext_suffix(suffix: object) -> str | None:
    """The ABI tag in an extension-module suffix: without its dot and file
    extension (``.cpython-312-x86_64-linux-gnu.so`` ->
    ``cpython-312-x86_64-linux-gnu``, ``.cp312-win_amd64.pyd`` ->
    ``cp312-win_amd64``; a free-threaded ``313t`` keeps its ``t``);
    ``None`` when it holds no tag (a bare ``.so``) or is not a string."""
    if not isinstance(suffix, str):
        return None
    tag = suffix.lstrip(".")
    for ext in (".so", ".pyd", ".dylib"):
        if tag.endswith(ext):
            tag = tag[: -len(ext)]
            break
    if tag in ("", "so", "pyd", "dylib"):
        return None
    try:
        return check_abi(tag)
    except BundleFormatError:
        return None


@lru_cache(maxsize=1)
def installed_triton_abi() -> str | None:
    """ABI tag of this interpreter, which picks the Triton wheel installed
    in it: :func:`abi_from_ext_suffix` of ``EXT_SUFFIX`` (the import system's
    first extension suffix, else ``sysconfig``'s),
    falling back to ``sys.implementation.cache_tag``; ``None`` when neither
    is known. Recorded as a bundle's ``triton_abi`` at collect time and
    compared on restore.

    Why the interpreter's tag: Triton's cache key hashes its ``libtriton``
    shared library, which differs between the per-CPython wheels of one
    Triton release. Triton is not imported to find out (slow, and the wheel
    installed was chosen by this very tag)."""
    # The import system's first extension suffix is EXT_SUFFIX on CPython,
    # without loading sysconfig's data module (~1 ms of a first restore).
    from importlib.machinery import EXTENSION_SUFFIXES

    tag = abi_from_ext_suffix(EXTENSION_SUFFIXES[0]) if EXTENSION_SUFFIXES else None
    if tag is None:
        import sysconfig

        tag = abi_from_ext_suffix(sysconfig.get_config_var("EXT_SUFFIX"))
    if tag is None:
        try:
            tag = check_abi(getattr(sys.implementation, "cache_tag", None))
        except BundleFormatError:
            tag = None
    return tag


def triton_cache_dir(device: int = 0) -> str:
    """The Triton cache directory kernels of ``device`` are written to.

    ``TRITON_CACHE_DIR`` when set, else Triton's own default
    (``$TRITON_HOME/.triton/cache``, ``TRITON_HOME`` defaulting to ``~``).
    Triton keys every kernel by its target, so all devices of a process share
    the directory Triton itself writes to; ``device`` is kept in the bundle
    entries so a caller can route kernels per device."""
    del device  # one directory for every device, as Triton uses
    explicit = os.environ.get("TRITON_CACHE_DIR")
    if explicit:
        return explicit
    home = os.environ.get("TRITON_HOME") or os.path.expanduser("~")
    return os.path.join(home, ".triton", "cache")



# --------------------------------------------------------------------------
# the mismatch policy


def _base_version(v: str) -> str:
    return v.split("+", 1)[0]


ABI_HELP = ("Triton's cache keys depend on the exact Triton wheel, which differs per Python version, "
            "so Triton would miss these kernels and recompile them; rebuild the bundle under the target's Python")


def abi_reason(bundle_abi: str | None, local_abi: str | None) -> str | None:
    """Why a bundle collected under Python ABI ``bundle_abi`` does not fit
    an interpreter of ``local_abi``, or ``None`` (equal, or either unknown)."""
    if bundle_abi and local_abi and bundle_abi != local_abi:
        return f"collected under Python ABI {bundle_abi}, this interpreter is {local_abi}"
    return None


def local_platform() -> str:
    """This machine's platform tag as host code records it (``linux-x86_64``)."""
    return f"{sys.platform}-{_platform.machine().lower()}"


@lru_cache(maxsize=1)
def local_target() -> str | None:
    """The target of this machine's first GPU (``cuda:90``), from
    ``PYRUNTIME_TARGET`` or by asking the CUDA driver directly (no Triton
    or torch import: the driver answers in milliseconds); ``None`` when
    there is no driver or no GPU."""
    forced = _env.target()
    if forced:
        return forced
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), 0) != 0 \
            or cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) != 0 \
            or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev) != 0:
        return None
    return f"cuda:{major.value * 10 + minor.value}"


def host_code_reason(kernel: KernelRow, installed: str | None, local_abi: str | None,
                     bundle_abi: str | None) -> str | None:
    """Why host code ``kernel`` is not for this machine, or ``None``: it is
    machine code for one platform, Python ABI and Triton, each of which
    must be known and equal."""
    abi = kernel.triton_abi or bundle_abi
    here = local_platform()
    if kernel.platform != here:
        return f"host code for {kernel.platform or 'an unknown platform'}, this machine is {here}"
    if not abi or abi != local_abi:
        return f"host code for Python ABI {abi or 'unknown'}, this interpreter is {local_abi or 'unknown'}"
    if not kernel.triton_version or not installed or _base_version(kernel.triton_version) != _base_version(installed):
        return f"host code for triton {kernel.triton_version or 'unknown'}, installed is {installed or 'none'}"
    return None


def mismatch_reason(
    kernel: TritonKernelArtifacts | KernelRow,
    installed: str | None,
    target: str | None,
    default_version: str | None = None,
    *,
    bundle_abi: str | None = None,
    local_abi: str | None = None,
) -> str | None:
    """Why ``kernel`` does not fit this installation, or ``None``: another
    Triton version, another Python ABI (``bundle_abi`` vs ``local_abi``,
    see :func:`abi_reason`), or another target than ``target``."""
    built = kernel.triton_version or default_version
    if built and installed and _base_version(built) != _base_version(installed):
        return f"built with triton {built}, installed is {installed}"
    abi = abi_reason(bundle_abi, local_abi)
    if abi is not None:
        return abi
    if target and kernel.target and kernel.target != target:
        return f"built for {kernel.target}, expected {target}"
    return None


def policy(on_mismatch: str | None) -> str:
    policy = on_mismatch or _env.bundle_on_mismatch()
    if policy not in ("warn", "error", "force"):
        raise ValueError(f"on_mismatch must be 'warn', 'error' or 'force', not {policy!r}")
    return policy


def mismatch_message(incompatible: dict[str, str], wrong_abi: str | None) -> str:
    """One line about the skipped kernels: the ABI mismatch (which hits
    every kernel alike) once with its explanation, the rest up to 5 by name."""
    parts = []
    others = incompatible
    if wrong_abi is not None:
        others = {h: r for h, r in incompatible.items() if r != wrong_abi}
        n_abi = len(incompatible) - len(others)
        if n_abi:
            parts.append(f"{n_abi} bundled kernel(s) were {wrong_abi}: {ABI_HELP}")
    if others:
        lines = "; ".join(f"{h}: {r}" for h, r in list(others.items())[:5])
        more = len(others) - 5
        parts.append(f"{len(others)} bundled kernel(s) do not fit this installation "
                     f"({lines}{f'; and {more} more' if more > 0 else ''})")
    return "; ".join(parts)
