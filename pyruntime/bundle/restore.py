"""Restore bundled kernels into a Triton cache, atomically and concurrently.

:func:`restore` hardens Inductor's ``read_and_emit``:

1. The bundle is checked as a whole (names, duplicates, compatibility)
   before the first byte is written; a bundle read from a file was already
   verified byte for byte by :func:`pyruntime.pyruntime.bundle.format.decode`.
2. Each kernel is written into ``<cache>/tmp.pid_<pid>_<random>`` and
   renamed onto ``<cache>/<kernel_hash>`` with :func:`os.replace`, so a
   partial kernel directory is never visible. A kernel directory that exists
   and holds files is left alone (an empty one is replaced).
3. No lock is needed: when several processes restore the same kernel, the
   first rename wins and the others see ``ENOTEMPTY``, drop their copy and
   count the kernel as already present. Every restorer succeeds.
4. A restorer killed mid-way (even by SIGKILL) leaves only its ``tmp.pid_*``
   directory. The next restore removes ``tmp.*`` directories of processes
   that are gone, and :func:`clean` (``python -m pyruntime cache clean``)
   removes those plus any ``tmp.*`` older than ``max_age``.
5. ``fsync=True`` (or ``PYRUNTIME_FSYNC=1``) fsyncs every file, every new
   kernel directory and the cache directory; it is off by default because
   a lost cache entry is only a recompile.
6. Kernels built for another Triton version, or for a target other than
   ``target`` when one is given, follow ``on_mismatch``: ``"warn"`` (the
   default: a warning naming them, and they are skipped), ``"error"``
   (:class:`BundleCompatibilityError` before anything is written) or
   ``"force"`` (written anyway). ``PYRUNTIME_BUNDLE_ON_MISMATCH`` sets the
   default. Versions compare without their local part (``3.6.0+git1`` is
   ``3.6.0``); a kernel or installation whose version is unknown is not
   checked. Triton keys its cache by version and target, so a mismatched
   kernel would never be loaded: skipping it only saves disk.
7. A bundle whose ``triton_abi`` (the ABI tag of the Python that collected
   it, e.g. ``cpython-312-x86_64-linux-gnu``) differs from this
   interpreter's is a mismatch under the same ``on_mismatch`` policy, for
   every kernel in it: Triton's cache key hashes its ``libtriton`` library,
   and the wheels of one Triton release differ per CPython version, so such
   kernels would be written and then never hit (everything recompiles).
   The fix is to rebuild the bundle under the Python that will load it. A
   bundle without ``triton_abi`` (written before it was recorded), or a
   restore where no Triton is installed, is not checked.

Speed: one listing of the cache directory replaces a stat per kernel; the
kernel directories are written by the C core (``csrc/kernel_dirs.c``), one
``open``/``write``/``close`` per file, several kernels at once on the
``PYRUNTIME_IO_THREADS`` worker pool, from one flat file table (for a
loaded bundle, the one :func:`pyruntime.pyruntime.bundle.format.decode` built over the
unpacked blobs: no Python object per file, and a kernel row instead of a
kernel object, see :func:`pyruntime.bundle.model.kernel_rows`); the
``[REPLACE]`` sentinel in ``.json`` files is swapped for the kernel's
directory as they are written.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import time
import warnings
from typing import Callable, Sequence

from .. import config as _env
from .. import core
from ..core.twin import FileTable, KernelJob, Swap
from ..errors import BundleCompatibilityError, BundleFormatError
from .compat import (
    MismatchPolicy,
    abi_reason,
    installed_triton_abi,
    installed_triton_version,
    mismatch_message,
    mismatch_reason,
    policy as mismatch_policy,
    triton_cache_dir,
)
from .model import KernelRow, RestoreResult, TritonBundle, check_bundle, decoded_table, is_checked, kernel_rows
from .rules import (
    MAX_JSON_FILE_BYTES,
    MAX_SENTINEL_GROWTH,
    REPLACE_SENTINEL,
    TMP_PREFIX,
    check_target,
    kernel_names_in,
    shown,
)

log = logging.getLogger(__name__)

# A writer thread is worth starting for this many kernels: writing one kernel
# directory costs several times what starting a thread does
# (docs/PERFORMANCE.md).
KERNELS_PER_THREAD = 2
DEFAULT_MAX_AGE_S = 3600.0

# Test-only: called with (kernel_hash, file name) after each file is written
# into a temporary directory (the SIGKILL test pauses a restore here). When
# set, restores write through the pure-Python twin, which can call it.
_after_file_hook: Callable[[str, str], None] | None = None


# --------------------------------------------------------------------------
# compatibility


# --------------------------------------------------------------------------
# temporary directories


def _pid_of(name: str) -> int | None:
    """The owner pid of ``tmp.pid_<pid>_<...>`` (ours and Triton's names)."""
    if not name.startswith("tmp.pid_"):
        return None
    digits = name[8:].split("_", 1)[0]
    return int(digits) if digits.isdigit() else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _is_stale(path: str, name: str, max_age: float | None, now: float) -> bool:
    pid = _pid_of(name)
    if pid is not None and not _pid_alive(pid):
        return True
    if max_age is None:
        return False
    try:
        return now - os.lstat(path).st_mtime > max_age
    except FileNotFoundError:
        return False


def _remove(path: str) -> bool:
    """Remove a file or tree; ``False`` when it was already gone."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise


def _remove_stale(cache_dir: str, names: list[str], max_age: float | None) -> list[str]:
    now = time.time()
    removed = []
    for name in names:
        path = os.path.join(cache_dir, name)
        if _is_stale(path, name, max_age, now) and _remove(path):
            removed.append(path)
    return removed


@dataclasses.dataclass
class CleanResult:
    removed: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)  # tmp.* of live processes or too young


def clean(
    cache_dir: str | os.PathLike[str],
    *,
    max_age: float | None = DEFAULT_MAX_AGE_S,
    everything: bool = False,
    dry_run: bool = False,
) -> CleanResult:
    """Remove restore and Triton litter from ``cache_dir``: ``tmp.*`` entries
    at the top level and inside kernel directories whose owning process is
    gone (``tmp.pid_<pid>_*`` names) or that are older than ``max_age``
    seconds (any ``tmp.*``; ``None``: never by age). ``everything=True``
    removes every ``tmp.*`` (only when no compile or restore is running)."""
    root = os.fspath(cache_dir)
    now = time.time()
    result = CleanResult()
    candidates: list[tuple[str, str]] = []
    with os.scandir(root) as it:
        for e in it:
            if e.name.startswith(TMP_PREFIX):
                candidates.append((e.path, e.name))
            elif e.is_dir(follow_symlinks=False):
                try:
                    with os.scandir(e.path) as sub:
                        candidates += [(s.path, s.name) for s in sub if s.name.startswith(TMP_PREFIX)]
                except (FileNotFoundError, NotADirectoryError):
                    continue
    for path, name in sorted(candidates):
        if everything or _is_stale(path, name, max_age, now):
            if dry_run or _remove(path):
                result.removed.append(path)
        else:
            result.kept.append(path)
    return result


# --------------------------------------------------------------------------
# restore


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dir_has_files(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _file_table(bundle: TritonBundle, checked: bool | None = None) -> FileTable:
    """Every file of ``bundle`` in kernel order: the table a decode built
    (pointing into the unpacked blobs) while the bundle is unchanged, else
    one blob per artifact."""
    table = decoded_table(bundle, checked)
    if table is not None:
        return table
    arts = [a for k in bundle.kernel_artifacts for a in k.artifacts]
    n = len(arts)
    return FileTable([a.payload for a in arts], [a.filename for a in arts], list(range(n)), [0] * n,
                     [memoryview(a.payload).nbytes for a in arts])


def _restored_kernel_names(kernels: list[KernelRow], names: Sequence[str], restored: set[str]) -> list[str]:
    """:meth:`TritonKernelArtifacts.kernel_names` of the restored kernels, in
    order, from the table's file names (in kernel order)."""
    if len(restored) == len(kernels):
        return kernel_names_in(names)
    out: list[str] = []
    first = 0
    for k in kernels:
        if k.kernel_hash in restored:
            out += kernel_names_in(names[first:first + k.nfiles])
        first += k.nfiles
    return out


def _sentinel_swap(root: str) -> Swap:
    """``[REPLACE]`` in a kernel's ``.json`` files becomes the absolute path
    of its directory under ``root``, JSON-escaped (so any directory name
    keeps the file valid; a kernel hash needs no escaping)."""
    prefix = json.dumps(os.path.join(os.path.abspath(root), ""))[1:-1]
    return REPLACE_SENTINEL, prefix.encode("ascii")


def check_sentinel_growth(table: FileTable, jobs: list[KernelJob], prefix_len: dict[str, int]) -> None:
    """Refuse, before anything is written, a restore whose ``[REPLACE]``
    sentinels would grow one ``.json`` file past
    :data:`~pyruntime.bundle.rules.MAX_JSON_FILE_BYTES` or all of them by
    more than :data:`~pyruntime.bundle.rules.MAX_SENTINEL_GROWTH` (a small
    bundle packing millions of sentinels would otherwise write gigabytes).
    ``prefix_len`` is the longest replacement (per cache root: the kernel
    directory, without the kernel's own name, which is at most 128 bytes)."""
    longest = max(prefix_len.values(), default=0) + 128
    grow = max(0, longest - len(REPLACE_SENTINEL))
    total = 0
    for _tmp, final, first, count in jobs:
        for i in range(first, first + count):
            name = table.names[i]
            if not name.endswith(".json"):
                continue
            size = table.sizes[i]
            if size > MAX_JSON_FILE_BYTES:
                raise BundleFormatError(f"kernel {final}: {shown(name)} is {size} bytes, over the "
                                        f"{MAX_JSON_FILE_BYTES}-byte limit for a .json kernel file")
            off = table.offs[i]
            n = bytes(table.blobs[table.blob_of[i]][off:off + size]).count(REPLACE_SENTINEL)
            if size + n * grow > MAX_JSON_FILE_BYTES:
                raise BundleFormatError(f"kernel {final}: {shown(name)} would be {size + n * grow} bytes once its "
                                        f"{n} [REPLACE] sentinels are expanded, over the "
                                        f"{MAX_JSON_FILE_BYTES}-byte limit; nothing was written")
            total += n * grow
    if total > MAX_SENTINEL_GROWTH:
        raise BundleFormatError(f"the bundle's [REPLACE] sentinels would add {total} bytes in all, over the "
                                f"{MAX_SENTINEL_GROWTH}-byte limit; nothing was written")


def restore(
    bundle: TritonBundle,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    on_mismatch: MismatchPolicy | None = None,
    target: str | None = None,
    fsync: bool | None = None,
) -> RestoreResult:
    """Write ``bundle``'s kernels into ``cache_dir`` (default: the Triton
    cache directory of each kernel's device). See the module docstring for
    the guarantees and the ``on_mismatch``/``target`` policy."""
    checked = is_checked(bundle)
    if not checked:  # a bundle just loaded or collected was checked then
        check_bundle(bundle)
    check_target(target)
    policy = mismatch_policy(on_mismatch)
    do_fsync = _env.fsync_enabled() if fsync is None else bool(fsync)
    result = RestoreResult()

    # 1. decide everything before writing anything
    installed = installed_triton_version()
    # No Triton here: nothing to compare the ABI with (as for the version).
    local_abi = installed_triton_abi() if installed else None
    wrong_abi = abi_reason(bundle.triton_abi, local_abi)
    kernels = kernel_rows(bundle)  # no kernel or artifact object is built for a loaded bundle
    reasons: dict[tuple[str | None, str | None], str | None] = {}  # one check per (version, target)
    todo: list[tuple[str, KernelRow, int]] = []  # (root, kernel, its first file in the table)
    first = 0
    for k in kernels:
        key = (k.triton_version, k.target)
        if key not in reasons:
            reasons[key] = mismatch_reason(k, installed, target, bundle.triton_version,
                                           bundle_abi=bundle.triton_abi, local_abi=local_abi)
        reason = reasons[key]
        if reason is not None and policy != "force":
            result.incompatible[k.kernel_hash] = reason
        else:
            root = os.fspath(cache_dir) if cache_dir is not None else triton_cache_dir(k.device)
            todo.append((root, k, first))
        first += k.nfiles
    if wrong_abi is not None and policy == "force":
        log.debug("bundle %s; writing it anyway (on_mismatch='force')", wrong_abi)
    if result.incompatible:
        msg = mismatch_message(result.incompatible, wrong_abi)
        if policy == "error":
            raise BundleCompatibilityError(msg + "; nothing was written")
        result.message = msg + "; skipped them"
        warnings.warn(result.message, RuntimeWarning, stacklevel=2)
        log.debug("%s", result.message)

    # 2. one listing per cache directory: existing kernels and stale litter
    listings: dict[str, set[str]] = {}
    token = os.urandom(6).hex()
    pid = os.getpid()
    jobs: dict[str, list[tuple[KernelRow, KernelJob]]] = {}
    for n, (root, k, first) in enumerate(todo):
        names = listings.get(root)
        if names is None:
            if not os.path.isdir(root):
                os.makedirs(root, exist_ok=True)
            names = set(os.listdir(root))
            litter = [x for x in names if x.startswith(TMP_PREFIX)]
            if litter:
                result.stale_removed += _remove_stale(root, litter, max_age=None)
            listings[root] = names
        h = k.kernel_hash
        if h in names and _dir_has_files(os.path.join(root, h)):
            result.existing.append(h)
            continue
        jobs.setdefault(root, []).append((k, (f"tmp.pid_{pid}_{token}_{n}", h, first, k.nfiles)))

    # 3. write: each kernel into its tmp directory, renamed into place (on
    # PYRUNTIME_IO_THREADS threads in C; the test hook needs the twin)
    hook = _after_file_hook
    backend = core.twin if hook is not None else core.backend
    table = _file_table(bundle, checked) if jobs else None
    if table is not None:  # before the first byte is written
        check_sentinel_growth(table, [j for todo_here in jobs.values() for _, j in todo_here],
                              {root: len(_sentinel_swap(root)[1]) for root in jobs})
    for root, todo_here in jobs.items():
        threads = max(1, min(_env.io_threads(), len(todo_here) // KERNELS_PER_THREAD))
        done = backend.write_kernels(root, table, [j for _, j in todo_here], threads, do_fsync,
                                     _sentinel_swap(root), after_file=hook)
        for (k, _), (ok, nbytes) in zip(todo_here, done):
            if ok == 1:
                result.restored.append(k.kernel_hash)
                result.files_written += k.nfiles
                result.bytes_written += nbytes
            else:
                result.existing.append(k.kernel_hash)
        if do_fsync and any(ok == 1 for ok, _ in done):
            _fsync_dir(root)
    if table is not None:
        result.kernel_names = _restored_kernel_names(kernels, table.names, set(result.restored))
    return result
