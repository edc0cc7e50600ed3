"""Restore bundled kernels into a Triton cache, atomically and concurrently.

:func:`restore` hardens Inductor's ``read_and_emit``:

1. The bundle is checked as a whole (names, duplicates, compatibility)
   before the first byte is written; a bundle read from a file was already
   verified byte for byte by :func:`pyruntime.pyruntime.bundle.format.decode`.
2. Each kernel is written into ``<cache>/tmp.pid_<pid>_prt<random>_<n>``
   and renamed onto ``<cache>/<kernel_hash>``, so a partial kernel
   directory is never visible. A kernel directory that exists and holds
   files is left alone (an empty one is replaced).
3. No lock orders the restorers: when several restore the same kernel, the
   first rename wins and the others see ``ENOTEMPTY``, drop their copy and
   count the kernel as already present. Every restorer succeeds.
4. A kernel's path held by something that is not a directory (a file, FIFO,
   socket, device or symlink, dangling or not, wherever it points: never
   followed) is never counted as present. ``on_conflict`` decides:
   ``"replace"`` (the default) unlinks it and renames the kernel onto the
   path (a reader sees the old entry, then nothing, then the complete
   kernel: never a partial one; a restorer that puts the kernel there
   first wins, as in 3, since unlinking never removes a directory);
   ``"error"`` raises :class:`KernelPathConflictError` before anything is
   written; ``"skip"`` leaves it. Kernels left so (also under ``"replace"``
   when the entry cannot be removed) are in :attr:`RestoreResult.blocked`
   with what holds their path, and a warning names them; replaced ones are
   in :attr:`RestoreResult.replaced`. ``PYRUNTIME_RESTORE_ON_CONFLICT``
   sets the default.
5. Each ``tmp.*`` directory of a restore is held under an ``flock`` from
   its ``mkdir`` until it is renamed or removed. A restorer killed mid-way
   (even by SIGKILL) leaves only that directory, unlocked. The next restore
   removes unlocked restore directories at the top of the cache, and any
   other ``tmp.*`` older than an hour; :func:`clean` (``python -m pyruntime
   cache clean``) does the same there and inside kernel directories, with
   its own ``max_age``. A pid never decides: in a cache shared between
   containers (other PID namespaces) it names another process or none.
   Triton's own ``tmp.pid_*`` directories are not locked, so they go by
   age only. What is litter is one rule
   (:func:`pyruntime.bundle.rules.is_litter`: ``tmp.*`` and
   ``*.tmp.pid_*``), and the reader refuses such kernel hashes and file
   names, so a cleaner never removes a restored file.
6. ``fsync=True`` (or ``PYRUNTIME_FSYNC=1``) fsyncs every file, every new
   kernel directory and the cache directory; it is off by default because
   a lost cache entry is only a recompile.
7. Kernels built for another Triton version, or for a target other than
   ``target`` when one is given, follow ``on_mismatch``: ``"warn"`` (the
   default: a warning naming them, and they are skipped), ``"error"``
   (:class:`BundleCompatibilityError` before anything is written) or
   ``"force"`` (written anyway). ``PYRUNTIME_BUNDLE_ON_MISMATCH`` sets the
   default. Versions compare without their local part (``3.6.0+git1`` is
   ``3.6.0``); a kernel or installation whose version is unknown is not
   checked. Triton keys its cache by version and target, so a mismatched
   kernel would never be loaded: skipping it only saves disk.
8. A bundle whose ``triton_abi`` (the ABI tag of the Python that collected
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

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import time
import warnings
from typing import Callable, Iterator, Sequence

from .. import config as _env
from .. import core
from ..core.twin import KERNEL_PRESENT, KERNEL_RENAMED, KERNEL_REPLACED, FileTable, KernelJob, Swap
from ..errors import BundleCompatibilityError, BundleFormatError, KernelPathConflictError
from .compat import (
    MismatchPolicy,
    abi_reason,
    host_code_reason,
    installed_triton_abi,
    installed_triton_version,
    local_target,
    mismatch_message,
    mismatch_reason,
    policy as mismatch_policy,
    triton_cache_dir,
)
from .model import (
    HOST,
    KERNEL,
    ConflictPolicy,
    KernelRow,
    RestoreResult,
    TritonBundle,
    check_bundle,
    decoded_table,
    is_checked,
    kernel_rows,
)
from .rules import (
    MAX_JSON_FILE_BYTES,
    MAX_SENTINEL_GROWTH,
    REPLACE_SENTINEL,
    check_target,
    is_kernel_hash,
    is_litter,
    is_restore_tmp,
    kernel_names_in,
    restore_tmp_name,
    shown,
)

log = logging.getLogger(__name__)

# A writer thread is worth starting for this many kernels: writing one kernel
# directory costs several times what starting a thread does
# (docs/PERFORMANCE.md).
KERNELS_PER_THREAD = 2
DEFAULT_MAX_AGE_S = 3600.0

CONFLICT_POLICIES = ("replace", "error", "skip")

# Test-only: called with (kernel_hash, file name) after each file is written
# into a temporary directory (the SIGKILL test pauses a restore here). When
# set, restores write through the pure-Python twin, which can call it.
_after_file_hook: Callable[[str, str], None] | None = None


# --------------------------------------------------------------------------
# what holds a path


_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _describe(path: str, mode: int) -> str:
    """What a non-directory at ``path`` is, for a message (a symlink is
    read, never followed)."""
    if stat.S_ISLNK(mode):
        try:
            return f"a symlink to {shown(os.readlink(path))}"
        except OSError:
            return "a symlink"
    return next((what for is_kind, what in _KINDS if is_kind(mode)), "not a directory")


def _blocker(path: str) -> str | None:
    """What holds ``path`` when that is not a directory (see
    :func:`_describe`); ``None`` when nothing or a real directory does."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return None if stat.S_ISDIR(st.st_mode) else _describe(path, st.st_mode)


def _blocked_reason(path: str, err_no: int) -> str:
    held = _blocker(path) or "a non-directory"
    if err_no:
        return f"{held}; cannot remove it: {os.strerror(err_no)}"
    return held


def conflict_policy(on_conflict: str | None) -> str:
    """``on_conflict``, else ``PYRUNTIME_RESTORE_ON_CONFLICT``, else
    ``"replace"``; a value not in :data:`CONFLICT_POLICIES` is a ValueError."""
    policy = on_conflict or _env.restore_on_conflict()
    if policy not in CONFLICT_POLICIES:
        raise ValueError(f"on_conflict must be 'replace', 'error' or 'skip', not {shown(policy)}")
    return policy


def conflict_message(blocked: dict[str, str]) -> str:
    """One line naming up to 5 kernels whose path is held by a
    non-directory, and what holds each."""
    lines = "; ".join(f"{h}: {r}" for h, r in list(blocked.items())[:5])
    more = len(blocked) - 5
    return (f"{len(blocked)} kernel path(s) held by something that is not a kernel directory "
            f"({lines}{f'; and {more} more' if more > 0 else ''})")


# --------------------------------------------------------------------------
# temporary directories

_PROBE_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@contextlib.contextmanager
def _probe(path: str) -> Iterator[str]:
    """Whether a writer holds ``path``'s flock: ``"held"`` (a live writer),
    ``"free"`` (this process holds it now, until the block ends, so no
    writer takes the directory up while it is removed), ``"not a
    directory"`` (no writer locks one; never opened), ``"unknown"`` (no
    locks on this file system, or it cannot be opened) or ``"gone"``."""
    try:
        fd = os.open(path, _PROBE_FLAGS)
    except FileNotFoundError:
        fd, state = -1, "gone"
    except OSError as e:
        fd, state = -1, "not a directory" if e.errno in (errno.ENOTDIR, errno.ELOOP) else "unknown"
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            state = "free"
        except BlockingIOError:
            state = "held"
        except OSError:
            state = "unknown"
    try:
        yield state
    finally:
        if fd >= 0:
            os.close(fd)


def _older(path: str, max_age: float | None, now: float) -> bool:
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


def _sweep(candidates: list[tuple[str, str, bool]], max_age: float | None, everything: bool,
           dry_run: bool) -> tuple[list[str], list[str]]:
    """(removed, kept) of the litter ``candidates`` (path, name, whether at
    the top of the cache). Never what a writer holds locked; else a
    restore's directory (at the top) at once, and anything older than
    ``max_age`` seconds (``None``: nothing by age; ``everything``: all)."""
    now = time.time()
    removed: list[str] = []
    kept: list[str] = []
    for path, name, top in sorted(candidates):
        with _probe(path) as state:
            if state in ("held", "gone"):
                if state == "held":
                    kept.append(path)
                continue
            unowned = top and is_restore_tmp(name) and state in ("free", "not a directory")
            if everything or unowned or _older(path, max_age, now):
                if dry_run or _remove(path):
                    removed.append(path)
            else:
                kept.append(path)
    return removed, kept


@dataclasses.dataclass
class CleanResult:
    removed: list[str] = dataclasses.field(default_factory=list)
    #: litter kept: locked by a running restore, or too young
    kept: list[str] = dataclasses.field(default_factory=list)
    #: entries named like a kernel that are not a directory (a file, FIFO,
    #: socket, device or symlink): path -> what it is. Reported, left for a
    #: restore's ``on_conflict`` to replace.
    blocked: dict[str, str] = dataclasses.field(default_factory=dict)


def clean(
    cache_dir: str | os.PathLike[str],
    *,
    max_age: float | None = DEFAULT_MAX_AGE_S,
    everything: bool = False,
    dry_run: bool = False,
) -> CleanResult:
    """Remove restore and Triton litter (:func:`~pyruntime.bundle.rules.is_litter`:
    ``tmp.*``, ``*.tmp.pid_*``) from ``cache_dir``, at the top level and
    inside kernel directories: never an entry a running restore holds
    locked; a restore's directory whose writer is gone (unlocked) at once;
    any other (Triton's, which are never locked) once older than ``max_age``
    seconds (``None``: never by age). ``everything=True`` removes all that
    is not locked, whatever its age (only when no compile is running).
    Entries named like a kernel that are not directories are reported in
    :attr:`CleanResult.blocked`, not removed."""
    root = os.fspath(cache_dir)
    result = CleanResult()
    candidates: list[tuple[str, str, bool]] = []
    with os.scandir(root) as it:
        for e in it:
            if is_litter(e.name):
                candidates.append((e.path, e.name, True))
            elif e.is_dir(follow_symlinks=False):
                try:
                    with os.scandir(e.path) as sub:
                        candidates += [(s.path, s.name, False) for s in sub if is_litter(s.name)]
                except (FileNotFoundError, NotADirectoryError):
                    continue
            elif is_kernel_hash(e.name):
                held = _blocker(e.path)
                if held is not None:
                    result.blocked[e.path] = held
    result.removed, result.kept = _sweep(candidates, max_age, everything, dry_run)
    return result


# --------------------------------------------------------------------------
# restore


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def kernel_present(path: str) -> bool:
    """Whether ``path`` is a kernel directory in place: a real directory
    (never a symlink to one) holding files."""
    return _blocker(path) is None and _dir_has_files(path)


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


def sentinel_swap(root: str) -> Swap:
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
    # the usual case in two C-speed calls: even if every byte of every file
    # were sentinels, nothing could pass a limit, so there is nothing to count
    sizes = table.sizes
    if sizes and (sum(sizes) // len(REPLACE_SENTINEL) * grow <= MAX_SENTINEL_GROWTH
                  and max(sizes) // len(REPLACE_SENTINEL) * grow + max(sizes) <= MAX_JSON_FILE_BYTES):
        return
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


def _kernel_reasons(bundle: TritonBundle, kernels: list[KernelRow], installed: str | None,
                    local_abi: str | None, target: str | None, host_code: bool,
                    result: RestoreResult) -> list[str | None]:
    """Why each kernel does not fit this installation (``None``: it fits).

    Host code that is not for this machine (or with host code off) goes to
    ``result.skipped``. So do the kernels of other (target, Python ABI)
    variants of a bundle that holds several, once one variant fits this
    machine (its target: ``target``, else the GPU's, see
    :func:`~pyruntime.bundle.compat.local_target`); the rest are
    mismatches under the ``on_mismatch`` policy, as in a bundle of one
    variant."""
    variants = {(k.target, k.triton_abi or bundle.triton_abi) for k in kernels if k.kind == KERNEL}
    if target is None and len({t for t, _ in variants}) > 1:
        target = local_target()  # None without a GPU: every target is written
    cache: dict[tuple[str | None, str | None, str | None], str | None] = {}
    reasons: list[str | None] = []
    for k in kernels:
        abi = k.triton_abi or bundle.triton_abi
        if k.kind == HOST:
            why = "host code is turned off" if not host_code else host_code_reason(k, installed, local_abi,
                                                                                   bundle.triton_abi)
            if why is not None:
                result.skipped[k.kernel_hash] = why
            reasons.append(None)
            continue
        key = (k.triton_version, k.target, abi)
        if key not in cache:
            cache[key] = mismatch_reason(k, installed, target, bundle.triton_version, bundle_abi=abi,
                                         local_abi=local_abi)
        reasons.append(cache[key])
    if len(variants) > 1 and any(r is None for k, r in zip(kernels, reasons) if k.kind == KERNEL):
        for k, r in zip(kernels, reasons):
            if k.kind == KERNEL and r is not None:
                result.skipped[k.kernel_hash] = f"not for this machine: {r}"
    return reasons


def restore(
    bundle: TritonBundle,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    on_mismatch: MismatchPolicy | None = None,
    target: str | None = None,
    fsync: bool | None = None,
    on_conflict: ConflictPolicy | None = None,
    host_code: bool | None = None,
) -> RestoreResult:
    """Write ``bundle``'s kernels into ``cache_dir`` (default: the Triton
    cache directory of each kernel's device). See the module docstring for
    the guarantees and the ``on_mismatch``/``target``/``on_conflict``
    policies."""
    checked = is_checked(bundle)
    if not checked:  # a bundle just loaded or collected was checked then
        check_bundle(bundle)
    check_target(target)
    policy = mismatch_policy(on_mismatch)
    conflicts_policy = conflict_policy(on_conflict)
    do_fsync = _env.fsync_enabled() if fsync is None else bool(fsync)
    result = RestoreResult()

    # 1. decide everything before writing anything
    installed = installed_triton_version()
    # No Triton here: nothing to compare the ABI with (as for the version).
    local_abi = installed_triton_abi() if installed else None
    wrong_abi = abi_reason(bundle.triton_abi, local_abi)
    kernels = kernel_rows(bundle)  # no kernel or artifact object is built for a loaded bundle
    reasons = _kernel_reasons(bundle, kernels, installed, local_abi, target,
                              _env.host_code() if host_code is None else bool(host_code), result)
    todo: list[tuple[str, KernelRow, int]] = []  # (root, kernel, its first file in the table)
    first = 0
    for k, reason in zip(kernels, reasons):
        if k.kernel_hash in result.skipped:
            pass
        elif reason is not None and policy != "force":
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

    # 2. one listing per cache directory: existing kernels, what holds the
    # paths of the others (never followed), stale litter
    listings: dict[str, set[str]] = {}
    litter: dict[str, list[str]] = {}
    token = os.urandom(6).hex()
    pid = os.getpid()
    jobs: dict[str, list[tuple[KernelRow, KernelJob]]] = {}
    held: dict[str, str] = {}  # kernel hash -> the non-directory holding its path
    for n, (root, k, first) in enumerate(todo):
        names = listings.get(root)
        if names is None:
            if not os.path.isdir(root):
                os.makedirs(root, exist_ok=True)
            names = listings[root] = set(os.listdir(root))
            litter[root] = [x for x in names if is_litter(x)]
        h = k.kernel_hash
        if h in names:
            path = os.path.join(root, h)
            what = _blocker(path)
            if what is None and _dir_has_files(path):
                result.existing.append(h)
                continue
            if what is not None:
                held[h] = what
                if conflicts_policy != "replace":
                    continue
        jobs.setdefault(root, []).append((k, (restore_tmp_name(pid, token, n), h, first, k.nfiles)))
    if held and conflicts_policy == "error":
        raise KernelPathConflictError(conflict_message(held) + " (on_conflict='error'); nothing was written",
                                      held)
    if conflicts_policy == "skip":
        result.blocked.update(held)

    # 3. write: each kernel into its tmp directory, renamed into place (on
    # PYRUNTIME_IO_THREADS threads in C; the test hook needs the twin)
    hook = _after_file_hook
    backend = core.twin if hook is not None else core.backend
    table = _file_table(bundle, checked) if jobs else None
    if table is not None:  # before the first byte is written
        check_sentinel_growth(table, [j for todo_here in jobs.values() for _, j in todo_here],
                              {root: len(sentinel_swap(root)[1]) for root in jobs})
    for root, names in litter.items():
        if names:
            removed, _ = _sweep([(os.path.join(root, x), x, True) for x in names], DEFAULT_MAX_AGE_S,
                                everything=False, dry_run=False)
            result.stale_removed += removed
    for root, todo_here in jobs.items():
        threads = max(1, min(_env.io_threads(), len(todo_here) // KERNELS_PER_THREAD))
        done = backend.write_kernels(root, table, [j for _, j in todo_here], threads, do_fsync,
                                     sentinel_swap(root), replace=conflicts_policy == "replace", after_file=hook)
        for (k, _), w in zip(todo_here, done):
            h = k.kernel_hash
            if w.outcome in (KERNEL_RENAMED, KERNEL_REPLACED):
                result.restored.append(h)
                result.files_written += k.nfiles
                result.bytes_written += w.nbytes
                if w.outcome == KERNEL_REPLACED or h in held:
                    result.replaced[h] = held.get(h, "a non-directory")
            elif w.outcome == KERNEL_PRESENT:
                result.existing.append(h)
            else:  # a non-directory holds its path: left (policy), or it could not be removed
                result.blocked[h] = _blocked_reason(os.path.join(root, h), w.err_no)
        if do_fsync and any(w.outcome in (KERNEL_RENAMED, KERNEL_REPLACED) for w in done):
            _fsync_dir(root)
    if table is not None:
        result.kernel_names = _restored_kernel_names(kernels, table.names, set(result.restored))
    _report_conflicts(result, conflicts_policy)
    return result


def _report_conflicts(result: RestoreResult, policy: str) -> None:
    """Say what became of kernel paths held by non-directories: replaced
    ones in the log, blocked ones in a warning (or, under ``"error"``, as
    the error: they appeared after the check, while writing)."""
    if result.replaced:
        log.warning("replaced %s", conflict_message(result.replaced))
    if not result.blocked:
        return
    msg = conflict_message(result.blocked)
    if policy == "error":
        raise KernelPathConflictError(f"{msg} (on_conflict='error'); {len(result.restored)} other kernel(s) "
                                      "were written", result.blocked, result)
    msg += f"; left them in place (on_conflict={policy!r}), so those kernels were not restored"
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
