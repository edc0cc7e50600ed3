"""Record compiled Triton kernels and gather them into a :class:`TritonBundle`.

The life cycle follows Inductor's bundler:

* :meth:`TritonBundler.begin_compile` starts recording (when
  :meth:`TritonBundler.is_enabled`);
* :meth:`TritonBundler.put` notes each compiled kernel by its cache
  directory name (Triton's cache key) and device;
* :meth:`TritonBundler.collect` reads every noted kernel directory once and
  returns the bundle plus the kernel names, then ends the recording;
* :meth:`TritonBundler.end_compile` drops an uncollected recording;
* :meth:`TritonBundler.read_and_emit` writes a bundle back into the cache
  (the atomic restore of :mod:`pyruntime.bundle.restore`).

:func:`collect_dir` bundles what is already in a cache directory without a
live compile.

Kernel directories hold absolute paths inside their ``.json`` files
(``__grp__*.json`` lists every child file). On collect the kernel
directory's path is replaced by the sentinel ``[REPLACE]`` and on restore the
sentinel becomes the new directory, so a bundle is relocatable. A ``.json``
that already contains the sentinel is refused on collect, since it could not
be told apart from a replaced path. Every collected bundle also records the
Triton version and the Python ABI tag of this installation
(:mod:`pyruntime.bundle.compat`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, ClassVar, Iterable

from .. import config as _env
from .. import core
from ..core.twin import FileChanged, PackedEntry
from ..errors import BundleFormatError
from .compat import (
    MismatchPolicy,
    abi_from_ext_suffix,
    installed_triton_abi,
    installed_triton_version,
    triton_cache_dir,
)
from .format import kernel_layout, table_record
from .model import (
    AUTOTUNE,
    Buffer,
    TritonBundle,
    TritonBundleEntry,
    TritonBundlerMetadata,
    TritonKernelArtifact,
    TritonKernelArtifacts,
    mark_checked,
)
from .restore import restore
from .rules import (
    _BIN_EXTS,
    _SKIP_FILES,
    MAX_ARTIFACT_BYTES,
    REPLACE_SENTINEL,
    check_abi,
    check_file_name,
    check_kernel_hash,
    check_platform,
    check_target,
    check_version,
    is_kernel_hash,
    is_litter,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# host code: Triton's compiled host modules (pyruntime.host_code)

#: A file :mod:`pyruntime.host_code` writes next to a host module (Triton
#: never reads it): which Triton, Python ABI tag and platform built it.
HOST_MARKER = "pyruntime.host.json"
# A Python extension module Triton compiles into its cache: <module><EXT_SUFFIX>
# (cuda_utils.cpython-312-x86_64-linux-gnu.so, __triton_launcher.cpython-...).
_HOST_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z0-9_\-]{1,64}\.so)")


def is_autotune_dir(names: Iterable[str]) -> bool:
    """Whether a cache directory holds the autotuner's saved timings of
    one kernel for one tuning key (``@triton.autotune(cache_results=True)``,
    ``TRITON_CACHE_AUTOTUNING=1``): only ``<fn>.autotune.json`` files. Only
    a machine with the GPU can make them (they are benchmarks); carried in
    a bundle, they spare a launcher the benchmarking of every config."""
    names = list(names)
    return bool(names) and all(n.endswith(".autotune.json") for n in names)


def host_dir_abi(names: Iterable[str]) -> str | None:
    """The Python ABI tag of a host-code directory, else ``None``.

    A host-code directory holds only Python extension modules Triton
    compiled (a launcher stub, ``cuda_utils``: ``<module><EXT_SUFFIX>``, all
    of one ABI) and optionally :data:`HOST_MARKER`; a kernel directory
    never holds such a file."""
    abi = None
    for n in names:
        if n == HOST_MARKER:
            continue
        m = _HOST_MODULE_RE.fullmatch(n)
        tag = abi_from_ext_suffix(m.group(1)) if m else None
        if tag is None or (abi is not None and tag != abi):
            return None
        abi = tag
    return abi


def _host_fields(abi: str, marker: bytes | None) -> dict[str, Any]:
    """``kind``, ``triton_abi``, ``platform`` and ``triton_version`` of a host
    directory: the marker's when it has them, else the ABI tag's
    (``cpython-312-x86_64-linux-gnu`` -> ``linux-x86_64``)."""
    parts = abi.split("-")
    platform = f"{parts[3]}-{parts[2]}" if len(parts) >= 4 else None
    fields: dict[str, Any] = {"kind": "host", "triton_abi": abi, "platform": None, "triton_version": None}
    try:
        fields["platform"] = check_platform(platform)
    except BundleFormatError:
        pass
    try:
        info = json.loads(marker) if marker is not None else {}
    except (ValueError, RecursionError, UnicodeDecodeError):
        info = {}
    if isinstance(info, dict):
        for key, check in (("platform", check_platform), ("triton_version", lambda v: check_version(v, "x"))):
            try:
                if info.get(key) is not None:
                    fields[key] = check(info[key])
            except BundleFormatError:
                pass
    return fields


# --------------------------------------------------------------------------
# reading kernel directories

_TARGET_RE = re.compile(rb'"target":\s*\{\s*"backend":\s*"([A-Za-z0-9_\-]{1,32})",\s*"arch":\s*(\d{1,9}|"[A-Za-z0-9_\-.:]{1,48}")')
_VERSION_RE = re.compile(rb'"triton_version":\s*"([A-Za-z0-9_.+\-]{1,64})"')


def parse_kernel_metadata(payload: Buffer) -> tuple[str | None, str | None]:
    """``(target, triton_version)`` from a kernel's metadata ``.json``.

    A regular expression reads Triton's usual key order without a full JSON
    parse (collect reads many kernels); other layouts fall back to json."""
    data = bytes(payload)
    m = _TARGET_RE.search(data)
    v = _VERSION_RE.search(data)
    if m is not None:
        arch = m.group(2).decode().strip('"')
        return f"{m.group(1).decode()}:{arch}", (v.group(1).decode() if v else None)
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(meta, dict):
        return None, None
    target = meta.get("target")
    tstr = None
    if isinstance(target, dict) and "backend" in target and "arch" in target:
        tstr = f"{target['backend']}:{target['arch']}"
    elif isinstance(target, (list, tuple)) and len(target) >= 2:
        tstr = f"{target[0]}:{target[1]}"
    version = meta.get("triton_version")
    try:
        tstr = check_target(tstr)
    except BundleFormatError:
        tstr = None
    return tstr, (version if isinstance(version, str) and version.isprintable() else None)


def _read_file(path: str) -> bytes:
    # One open/fstat/read/close: the fewest syscalls for a small file.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return data if len(data) == size else _read_rest(fd, data)
        return data + _read_rest(fd, b"")  # grew while we read: take all of it
    finally:
        os.close(fd)


def _read_rest(fd: int, head: bytes) -> bytes:
    parts = [head]
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def _root_spellings(root: str) -> list[bytes]:
    """Byte spellings of a cache directory Triton may have written into its
    ``.json`` files: as given, absolute and with symlinks resolved; each raw
    and JSON-escaped; longest first (so no spelling is replaced in part)."""
    paths = {root, os.path.abspath(root), os.path.realpath(root)}
    spelled = {os.fsencode(p) for p in paths} | {_json_str(p) for p in paths}
    return sorted(spelled, key=len, reverse=True)


def _json_str(s: str) -> bytes:
    # how json.dumps (Triton's writer) spells a string, without the quotes
    return json.dumps(s)[1:-1].encode("ascii")


def _child_dir_spellings(data: bytes, kernel_hash: str) -> list[bytes]:
    """The directory of each child path a ``__grp__`` file lists, when it is
    this kernel's: however Triton was given its cache directory."""
    try:
        children = json.loads(data).get("child_paths")
    except (ValueError, AttributeError, RecursionError, UnicodeDecodeError):
        return []
    if not isinstance(children, dict):
        return []
    dirs = {os.path.dirname(p) for p in children.values() if isinstance(p, str)}
    dirs = {d for d in dirs if os.path.basename(d) == kernel_hash}
    spelled = {_json_str(d) for d in dirs} | {os.fsencode(d) for d in dirs}
    return sorted(spelled, key=len, reverse=True)


def _list_kernel_dir(path: str, complete_only: bool) -> list[os.DirEntry[str]] | None:
    try:
        with os.scandir(path) as it:
            entries = [e for e in it if e.is_file(follow_symlinks=False) and e.name not in _SKIP_FILES
                       and not is_litter(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not entries:
        return None
    if complete_only and not any(e.name.startswith("__grp__") and e.name.endswith(".json") for e in entries) \
            and host_dir_abi(e.name for e in entries) is None and not is_autotune_dir(e.name for e in entries):
        return None
    entries.sort(key=lambda e: e.name)
    return entries


def _read_json_artifact(fpath: str, name: str, kernel_hash: str, roots: list[bytes]) -> bytes:
    data = _read_file(fpath)
    if REPLACE_SENTINEL in data:
        raise BundleFormatError(
            f"{fpath} already contains the {REPLACE_SENTINEL.decode()} sentinel; "
            "refusing to bundle it (it could not be relocated on restore)"
        )
    hb = kernel_hash.encode()
    if hb in data:  # only then can the directory be in it
        for root in roots:
            spelled = root + b"/" + hb
            if spelled in data:
                data = data.replace(spelled, REPLACE_SENTINEL)
        if b"/" + hb in data:  # still a path to this kernel: spelled another way
            for spelled in _child_dir_spellings(data, kernel_hash):
                data = data.replace(spelled, REPLACE_SENTINEL)
    return data


def read_kernel_dir(
    cache_dir: str,
    kernel_hash: str,
    device: int = 0,
    *,
    complete_only: bool = False,
    _roots: list[bytes] | None = None,
) -> TritonKernelArtifacts | None:
    """Read one kernel directory into :class:`TritonKernelArtifacts`
    (``None`` when it does not exist or holds no files, or with
    ``complete_only`` when it lacks Triton's ``__grp__*.json``, which Triton
    writes last).

    Sub-directories (Triton's in-flight ``tmp.*``), symlinks, ``lock``
    files and litter (:func:`~pyruntime.bundle.rules.is_litter`: files a
    writer left, which ``cache clean`` removes) are left out. Raises :class:`BundleFormatError` when a ``.json``
    already contains the ``[REPLACE]`` sentinel or a file name is not plain."""
    prepared = _prepare_kernel(cache_dir, kernel_hash, device, complete_only, _roots)
    return None if prepared is None else prepared.kernel


def _metadata_names(names: list[str]) -> set[str]:
    return {os.path.splitext(n)[0] + ".json" for n in names if os.path.splitext(n)[1] in _BIN_EXTS}


# Test-only: called with the kernel hash between the first listing and the
# read of a kernel directory.
_between_passes_hook: Callable[[str], None] | None = None
_READ_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True, slots=True)
class _PreparedKernel:
    """A kernel directory read and packed: its artifacts (views into the
    blob), each artifact's offset in the blob, the packed blob, its record
    in the bundle's kernel table (JSON, the blob index left open: see
    :func:`pyruntime.bundle.format.table_record`), and the directory's
    (inode, mtime) when it was listed, by which a collect tells whether it
    changed since."""

    root: str
    kernel: TritonKernelArtifacts
    offsets: list[int]
    entry: PackedEntry
    record: bytes
    stamp: tuple[int, int]


def _dir_stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _prepare_kernel(
    root: str, h: str, device: int, complete_only: bool, roots: list[bytes] | None = None
) -> _PreparedKernel | None:
    """Read kernel directory ``root/h`` into one blob (the layout of the
    bundle file: :func:`pyruntime.bundle.format.kernel_layout`) and pack it.
    ``.json`` files are read in Python (the sentinel swap changes their
    size), the others by the backend straight into their slots. A file that
    changes size meanwhile makes the directory be listed and read again."""
    check_kernel_hash(h)
    path = f"{root}/{h}"
    if roots is None:
        roots = _root_spellings(root)
    backend = core.backend
    for attempt in range(_READ_ATTEMPTS):
        stamp = _dir_stamp(path)
        entries = _list_kernel_dir(path, complete_only)
        if entries is None or stamp is None:
            return None
        meta_names = _metadata_names([e.name for e in entries])
        target = version = None
        names: list[str] = []
        sizes: list[int] = []
        jsons: list[bytes | None] = []
        for e in entries:
            name = check_file_name(e.name, h)
            if name.endswith(".json"):
                data: bytes | None = _read_json_artifact(f"{path}/{name}", name, h, roots)
                if target is None and name in meta_names:
                    target, version = parse_kernel_metadata(data)
                size = len(data)
            else:
                data = None
                size = e.stat(follow_symlinks=False).st_size
            if size > MAX_ARTIFACT_BYTES:
                raise BundleFormatError(f"{path}/{name}: {size} bytes is over the {MAX_ARTIFACT_BYTES}-byte limit")
            names.append(name)
            sizes.append(size)
            jsons.append(data)
        if attempt == 0 and _between_passes_hook is not None:
            _between_passes_hook(h)
        offsets, total = kernel_layout(list(zip(names, sizes)))
        blob = bytearray(total)
        for data, off in zip(jsons, offsets):
            if data is not None:
                blob[off:off + len(data)] = data
        try:
            backend.read_files(path, [None if d is not None else n for n, d in zip(names, jsons)],
                               offsets, sizes, blob)
        except FileChanged as e:
            log.debug("%s; reading %s again", e, path)
            continue
        except FileNotFoundError:
            if not os.path.isdir(path):
                return None  # the directory went away meanwhile
            continue  # a file was replaced meanwhile
        ro = memoryview(blob).toreadonly()
        arts = [TritonKernelArtifact(n, ro[off:off + size]) for n, off, size in zip(names, offsets, sizes)]
        host_abi = host_dir_abi(names)
        if is_autotune_dir(names):
            kernel = TritonKernelArtifacts(h, device, arts, target, version, AUTOTUNE)
        elif host_abi is None:
            kernel = TritonKernelArtifacts(h, device, arts, target, version)
        else:
            marker = jsons[names.index(HOST_MARKER)] if HOST_MARKER in names else None
            host = _host_fields(host_abi, marker)
            kernel = TritonKernelArtifacts(h, device, arts, target, host.pop("triton_version"), **host)
        return _PreparedKernel(root, kernel, offsets, backend.pack_entry(blob, _env.bundle_level()),
                               table_record(kernel, offsets), stamp)
    raise BundleFormatError(f"{path}: files keep changing while they are read ({_READ_ATTEMPTS} attempts)")


def _prepare_many(items: list[tuple[str, str, int, bool]]) -> list[_PreparedKernel]:
    """:func:`_prepare_kernel` for ``(root, hash, device, complete_only)``
    items, on the bundle threads when there are several; missing kernels
    are left out, order is kept."""
    spellings: dict[str, list[bytes]] = {}
    for root, *_ in items:
        if root not in spellings:
            spellings[root] = _root_spellings(root)
    if len(items) > 1 and _env.io_threads() > 1:
        results = list(_executor().map(lambda it: _prepare_kernel(*it, spellings[it[0]]), items))
    else:
        results = [_prepare_kernel(*it, spellings[it[0]]) for it in items]
    return [p for p in results if p is not None]


#: ``collect_dir(triton_abi=...)``: this interpreter's tag, or only when the
#: kernels were built by the installed Triton (else unknown).
LOCAL = "local"
AUTO = "auto"


def _bundle_of(prepared: list[_PreparedKernel], triton_abi: str | None = LOCAL) -> TritonBundle:
    """The bundle of prepared kernels, carrying their packed blobs for
    :func:`pyruntime.bundle.format.encode`.

    Its Triton version is the one the kernels' own metadata names when
    they all name the same one (a cache built elsewhere says so), else the
    installed one. ``triton_abi``: a tag, ``None`` (unknown), :data:`LOCAL`
    (this interpreter's: a live compile) or :data:`AUTO` (this
    interpreter's when every kernel was built by the installed Triton,
    else unknown: a bundle must not claim the packing machine's Python for
    a cache built elsewhere)."""
    kernels = [p.kernel for p in prepared]
    installed = installed_triton_version()
    built = {k.triton_version for k in kernels if k.kind == "kernel"}
    version = built.pop() if len(built) == 1 and None not in built else installed
    if triton_abi == AUTO:
        foreign = any(v is not None and installed is not None and _base(v) != _base(installed) for v in
                      (k.triton_version for k in kernels))
        triton_abi = None if foreign or installed is None else LOCAL
    abi = installed_triton_abi() if triton_abi == LOCAL else check_abi(triton_abi)
    bundle = TritonBundle(kernels, triton_version=version, triton_abi=abi)
    mark_checked(bundle)
    object.__setattr__(bundle, "_packed", ([p.offsets for p in prepared], [p.entry for p in prepared],
                                           [p.record for p in prepared]))
    return bundle


_EXECUTOR: Any = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> Any:
    """The bundle threads (``PYRUNTIME_IO_THREADS``), started on first use.
    They read and pack kernel directories; most of that runs in C without
    the GIL."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=_env.io_threads(), thread_name_prefix="pyruntime-bundle")
        return _EXECUTOR


def _forget_executor_in_child() -> None:
    # A forked child has none of the parent's threads: it starts its own.
    global _EXECUTOR, _EXECUTOR_LOCK
    _EXECUTOR = None
    _EXECUTOR_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_executor_in_child)


def _base(version: str) -> str:
    return version.split("+", 1)[0]


def collect_dir(
    cache_dir: str | os.PathLike[str],
    kernel_hashes: Iterable[str] | None = None,
    *,
    device: int = 0,
    triton_abi: str | None = AUTO,
) -> TritonBundle:
    """Bundle kernels already in ``cache_dir`` without a live compile.

    With ``kernel_hashes``, exactly those kernel directories (missing ones are
    skipped); otherwise every complete kernel directory (one holding Triton's
    ``__grp__*.json``, written last) and every host-code directory (Triton's
    compiled host modules, :func:`host_dir_abi`: entries of kind ``"host"``),
    in sorted order so equal caches give equal bundles.
    Raises :class:`NotADirectoryError`/:class:`FileNotFoundError` when
    ``cache_dir`` is not a directory.

    ``triton_abi`` is the Python ABI tag the kernels were built under
    (Triton's keys depend on it): by default (``"auto"``) this
    interpreter's when every kernel was built by the installed Triton,
    unknown (``None``) otherwise; ``"local"`` claims this interpreter's, a
    tag states it (a cache built on another machine)."""
    if triton_abi not in (AUTO, LOCAL):
        check_abi(triton_abi)
    root = os.fspath(cache_dir)
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise NotADirectoryError(f"{root} is not a directory")
        raise FileNotFoundError(f"cache directory {root} does not exist")
    if kernel_hashes is None:
        with os.scandir(root) as it:
            hashes = sorted(
                e.name for e in it if e.is_dir(follow_symlinks=False) and is_kernel_hash(e.name)
            )
    else:
        hashes = [check_kernel_hash(h) for h in dict.fromkeys(kernel_hashes)]
    _env.bundle_level()  # a bad PYRUNTIME_BUNDLE_LEVEL fails here, not on a bundle thread
    return _bundle_of(_prepare_many([(root, h, device, kernel_hashes is None) for h in hashes]), triton_abi)


# --------------------------------------------------------------------------
# the life cycle


@dataclasses.dataclass
class BundlerConfig:
    """Settings of :class:`TritonBundler` (``TritonBundler.config``).

    ``enabled``: record kernels (``None``: off unless ``PYRUNTIME_BUNDLE=1``);
    the ``PYRUNTIME_BUNDLE`` environment variable, when set, wins.
    ``force_disable``: off whatever the rest says.
    ``on_mismatch``: what a restore does with kernels built for another
    Triton version, Python ABI or target (``None``: ``PYRUNTIME_BUNDLE_ON_MISMATCH``,
    default ``"warn"``); see :func:`pyruntime.bundle.restore.restore`.
    ``target``: the target restores expect (``"cuda:90"``); ``None`` checks
    no target. ``fsync``: fsync restored files (``None``: ``PYRUNTIME_FSYNC``).
    ``pack_on_put``: read and pack each kernel on a background thread as it
    is put (see :class:`TritonBundler`)."""

    enabled: bool | None = None
    force_disable: bool = False
    on_mismatch: MismatchPolicy | None = None
    target: str | None = None
    fsync: bool | None = None
    pack_on_put: bool = True


def _take_prepared(fut: Any, entry: TritonBundleEntry) -> _PreparedKernel | None:
    """What ``put`` packed for ``entry``, if it is still what the directory
    holds; ``None`` sends ``collect`` to read the directory itself: when the
    packing had not started (it is cancelled), when it failed (the read then
    raises the error again) or when the directory changed since."""
    if fut is None or fut.cancel():
        return None  # not started yet: the caller reads it now instead of waiting for a thread
    try:
        p = fut.result()
    except Exception as e:  # noqa: BLE001 - collect reads again and raises it there
        log.debug("packing %s on put failed (%s); reading it again", entry.kernel_hash, e)
        return None
    if p is None or p.root != entry.directory or p.kernel.device != entry.device:
        return None
    if _dir_stamp(f"{entry.directory}/{entry.kernel_hash}") != p.stamp:
        return None  # changed since it was packed
    return p


class TritonBundler:
    """Notes each Triton kernel compiled between :meth:`begin_compile` and
    :meth:`collect`, and turns them into a :class:`TritonBundle`.

    State is per process (class attributes), like Inductor's bundler; ``put``
    may be called from any thread.

    Unlike Inductor's, ``put`` does not leave all the reading to ``collect``:
    when the kernel directory is complete (it holds Triton's ``__grp__``
    file, written last) it is read and LZ4-packed on a background thread
    (``PYRUNTIME_IO_THREADS``), while the compile goes on. ``collect`` then
    only checks that each directory is unchanged (inode and mtime) and
    assembles; a kernel not yet packed, or changed since, is read then.
    ``config.pack_on_put = False`` leaves everything to ``collect``."""

    config: ClassVar[BundlerConfig] = BundlerConfig()
    _entries: ClassVar[list[TritonBundleEntry] | None] = None
    # kernel hash -> future of its _PreparedKernel, and the pid they belong to
    _pending: ClassVar[dict[str, Any]] = {}
    _pending_pid: ClassVar[int] = 0
    _REPLACE_BYTES: ClassVar[bytes] = REPLACE_SENTINEL

    @classmethod
    def is_enabled(cls) -> bool:
        """``config.force_disable`` -> off; else ``PYRUNTIME_BUNDLE`` when
        set; else ``config.enabled``; else off."""
        if cls.config.force_disable:
            return False
        env = _env.bundle_enabled()
        if env is not None:
            return env
        return bool(cls.config.enabled)

    @classmethod
    def begin_compile(cls) -> None:
        """Start recording (a no-op when disabled)."""
        if not cls.is_enabled():
            return
        if cls._entries is not None:
            raise RuntimeError("TritonBundler.begin_compile called again before collect/end_compile")
        _env.bundle_level()  # a bad PYRUNTIME_BUNDLE_LEVEL fails here, not on a bundle thread
        log.debug("TritonBundler.begin_compile")
        cls._entries = []
        cls._pending = {}
        cls._pending_pid = os.getpid()

    @classmethod
    def end_compile(cls) -> None:
        """Stop recording; an uncollected recording is dropped."""
        log.debug("TritonBundler.end_compile")
        cls._entries = None
        pending, cls._pending = cls._pending, {}
        for fut in pending.values():
            fut.cancel()

    @classmethod
    def put(cls, kernel_hash: str, device: int = 0, *, cache_dir: str | os.PathLike[str] | None = None) -> None:
        """Note a compiled kernel: ``kernel_hash`` is its directory name in
        the cache (``cache_dir``, default :func:`triton_cache_dir`)."""
        entries = cls._entries
        if entries is None:
            return
        check_kernel_hash(kernel_hash)
        directory = os.fspath(cache_dir) if cache_dir is not None else triton_cache_dir(device)
        entries.append(TritonBundleEntry(kernel_hash, device, directory))
        if cls.config.pack_on_put and kernel_hash not in cls._pending:
            # complete_only: a directory without its __grp__ file yet is left to collect
            cls._pending[kernel_hash] = _executor().submit(_prepare_kernel, directory, kernel_hash, device, True)

    @classmethod
    def collect(cls) -> tuple[TritonBundle, TritonBundlerMetadata | None]:
        """Read every noted kernel and end the recording. Kernels whose
        directory has gone are skipped; a kernel noted twice is read once.
        Returns an empty bundle and ``None`` when disabled or not recording."""
        if not cls.is_enabled():
            cls.end_compile()
            return TritonBundle([]), None
        entries = cls._entries
        if entries is None:
            return TritonBundle([]), None
        try:
            pending = cls._pending if cls._pending_pid == os.getpid() else {}  # none survive a fork
            seen: set[str] = set()
            prepared: list[_PreparedKernel] = []
            for entry in entries:
                if entry.kernel_hash in seen:
                    continue
                seen.add(entry.kernel_hash)
                p = _take_prepared(pending.get(entry.kernel_hash), entry)
                if p is None:
                    p = _prepare_kernel(entry.directory, entry.kernel_hash, entry.device, False)
                if p is not None:
                    prepared.append(p)
            bundle = _bundle_of(prepared)
            cls._pending = {}  # all taken: end_compile need not cancel them
        finally:
            cls.end_compile()
        return bundle, TritonBundlerMetadata(bundle.kernel_names(), [])

    @classmethod
    def read_and_emit(cls, bundle: TritonBundle) -> TritonBundlerMetadata | None:
        """Restore ``bundle`` into the Triton cache (``None`` when disabled).

        Unlike Inductor's version this needs no exclusive access: each kernel
        is written into a ``tmp.*`` directory and renamed into place, and a
        kernel directory that already holds files is left as it is. The
        names returned are those of the kernels written."""
        if not cls.is_enabled():
            return None
        cfg = cls.config
        result = restore(bundle, None, on_mismatch=cfg.on_mismatch, target=cfg.target, fsync=cfg.fsync)
        return TritonBundlerMetadata(result.kernel_names, [])

