"""Typed environment knobs, all in one place.

Each knob is read when it is used (not at import), so tests and launchers
can set them late. Names and meanings are listed in the README.
"""

from __future__ import annotations

import os


def _flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None


def pure_python() -> bool:
    """PYRUNTIME_PURE_PYTHON=1 forces the pure-Python twin of the C core."""
    return _flag("PYRUNTIME_PURE_PYTHON")


def max_frame_bytes() -> int:
    """PYRUNTIME_MAX_FRAME: largest frame payload a reader accepts (2 GiB)."""
    return _int("PYRUNTIME_MAX_FRAME", 2 << 30)


def io_spin_us() -> int:
    """PYRUNTIME_IO_SPIN_US: microseconds an idle C worker thread (and a
    call waiting for its helpers) keeps polling for work before it sleeps
    (default 1000; 0 sleeps at once). Waking a sleeping thread costs tens
    of microseconds on a virtual machine, a load+restore makes several
    calls in a row, and polling yields the CPU to whatever else needs it."""
    n = _int("PYRUNTIME_IO_SPIN_US", 1000)
    if not 0 <= n <= 1_000_000:
        raise ValueError(f"environment variable PYRUNTIME_IO_SPIN_US={n} is not 0 to 1000000")
    return n


def bundle_level() -> int:
    """PYRUNTIME_BUNDLE_LEVEL: how kernel blobs are compressed into bundles,
    0 for LZ4's fast mode or 1 to 12 for its HC mode at that level (default
    9: a file about a fifth smaller than fast mode, which also unpacks about
    a third faster, for several times the packing work; collect does that
    work on its bundle threads as kernels are put)."""
    n = _int("PYRUNTIME_BUNDLE_LEVEL", 9)
    if not 0 <= n <= 12:
        raise ValueError(f"environment variable PYRUNTIME_BUNDLE_LEVEL={n} is not 0 to 12")
    return n


def default_workers() -> int:
    """PYRUNTIME_WORKERS, else the CPUs this process may run on, capped at 32."""
    n = _int("PYRUNTIME_WORKERS", 0)
    if n > 0:
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 32))


def io_threads() -> int:
    """PYRUNTIME_IO_THREADS: threads that read, compress, unpack and write
    bundle files and kernel directories (the C side runs them without the
    GIL); default the CPUs this process may run on, capped at 8."""
    n = _int("PYRUNTIME_IO_THREADS", 0)
    if n > 0:
        return min(n, 64)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def shutdown_grace_s() -> float:
    """PYRUNTIME_SHUTDOWN_GRACE: seconds workers get after SIGTERM (2.0)."""
    return _float("PYRUNTIME_SHUTDOWN_GRACE", 2.0)


def pipe_size() -> int:
    """PYRUNTIME_PIPE_SIZE: bytes the sidecar asks for with F_SETPIPE_SZ on
    each worker's job and result pipe (default 1 MiB; 0 keeps the kernel's
    default). The kernel rounds up to a power-of-two number of pages and
    silently keeps its default when the size is refused (over
    /proc/sys/fs/pipe-max-size, or an unprivileged user past
    pipe-user-pages-soft, who then gets pipes of one or two pages). 4096
    forces one-page pipes: the pool must stay live with them."""
    n = _int("PYRUNTIME_PIPE_SIZE", 1 << 20)
    if not 0 <= n <= 1 << 30:
        raise ValueError(f"environment variable PYRUNTIME_PIPE_SIZE={n} is not 0 to 1073741824")
    return n


def bundle_enabled() -> bool | None:
    """PYRUNTIME_BUNDLE: 1/0 turns kernel recording on/off; unset defers to config."""
    raw = os.environ.get("PYRUNTIME_BUNDLE")
    if raw is None or raw == "":
        return None
    return _flag("PYRUNTIME_BUNDLE")


def fsync_enabled() -> bool:
    """PYRUNTIME_FSYNC=1 fsyncs restored files and directories."""
    return _flag("PYRUNTIME_FSYNC")


def bundle_on_mismatch() -> str:
    """PYRUNTIME_BUNDLE_ON_MISMATCH: what a restore does with kernels built for
    another Triton version or target: warn (skip them, default), error, force."""
    raw = (os.environ.get("PYRUNTIME_BUNDLE_ON_MISMATCH") or "warn").strip().lower()
    if raw not in ("warn", "error", "force"):
        raise ValueError(f"environment variable PYRUNTIME_BUNDLE_ON_MISMATCH={raw!r} is not one of warn, error, force")
    return raw


def host_code() -> bool:
    """PYRUNTIME_HOST_CODE: 1 (default) restores a bundle's host code (Triton's
    compiled launcher and cuda_utils modules) when it fits this machine, 0
    never writes it."""
    raw = (os.environ.get("PYRUNTIME_HOST_CODE") or "1").strip().lower()
    if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"environment variable PYRUNTIME_HOST_CODE={raw[:64]!r} is not 0 or 1")
    return raw in ("1", "true", "yes", "on")


def target() -> str | None:
    """PYRUNTIME_TARGET: the target this machine's kernels are for
    (``cuda:90``), where a restore of a bundle for several targets should not
    ask the driver; unset: ask it (``pyruntime.bundle.compat.local_target``)."""
    raw = (os.environ.get("PYRUNTIME_TARGET") or "").strip()
    return raw or None


def restore_on_conflict() -> str:
    """PYRUNTIME_RESTORE_ON_CONFLICT: what a restore does with a kernel path
    held by something that is not a kernel directory (a file, FIFO, socket,
    device or symlink): replace it (default), error, skip."""
    raw = (os.environ.get("PYRUNTIME_RESTORE_ON_CONFLICT") or "replace").strip().lower()
    if raw not in ("replace", "error", "skip"):
        raise ValueError(f"environment variable PYRUNTIME_RESTORE_ON_CONFLICT={raw[:64]!r} is not one of "
                         "replace, error, skip")
    return raw


def debug() -> bool:
    """PYRUNTIME_DEBUG=1: the sidecar and pool log every worker start and exit."""
    return _flag("PYRUNTIME_DEBUG")
