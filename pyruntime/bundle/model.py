"""The bundle data model: kernels, their files, and the bundle that holds
them, as frozen data classes.

A bundle decoded from a file keeps its kernels as :class:`KernelRow` rows
and one flat :class:`~pyruntime.core.twin.FileTable` over the unpacked
blobs; the kernel and artifact objects are built from them on first use of
:attr:`TritonBundle.kernel_artifacts` (a load+restore needs none of them).
A bundle remembers which objects were checked when a collect or decode
made them (:func:`is_checked`), so saving or restoring them does not check
them again.

The model does no I/O itself: ``to_bytes``/``from_bytes``/``save``/``load``
and ``restore`` call the file format (:mod:`pyruntime.bundle.format`) and
the restorer (:mod:`pyruntime.bundle.restore`), layers above this one that
plug their functions in with :func:`bind_io` when :mod:`pyruntime.bundle`
is imported; this module imports nothing above it.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import threading
from typing import Any, Callable, Literal, NamedTuple, Union

from .._version import __version__
from ..core.twin import FileTable, PackedEntry
from ..errors import BundleFormatError
from .rules import (
    MAX_DEVICE,
    check_abi,
    check_file_name,
    check_kernel_hash,
    check_target,
    check_kind,
    check_platform,
    check_version,
    kernel_names_in,
    shown,
)

Buffer = Union[bytes, bytearray, memoryview]

#: The kinds of cache directory a bundle carries (TritonKernelArtifacts.kind).
KERNEL = "kernel"
HOST = "host"
AUTOTUNE = "autotune"
KINDS = (KERNEL, HOST, AUTOTUNE)
MismatchPolicy = Literal["warn", "error", "force"]
ConflictPolicy = Literal["replace", "error", "skip"]

#: name -> function, filled by :func:`bind_io`: encode, decode, save, load, restore
_IO: dict[str, Callable[..., Any]] = {}


def bind_io(**functions: Callable[..., Any]) -> None:
    """Plug in the file format and the restorer (called once, by
    :mod:`pyruntime.bundle`)."""
    _IO.update(functions)


@dataclasses.dataclass(frozen=True, slots=True)
class TritonBundleEntry:
    """A kernel noted by :meth:`TritonBundler.put`: its Triton cache key (the
    kernel directory's name), its device and the cache directory holding it."""

    kernel_hash: str
    device: int
    directory: str


@dataclasses.dataclass(frozen=True, slots=True)
class TritonKernelArtifact:
    """One file of a kernel directory (``.cubin``, ``.json``, ``.ttir``, ...).

    ``payload`` is a bytes-like object. Collect and load give read-only
    ``memoryview`` slices of one buffer (the files read straight into place,
    or the unpacked bundle), which saves a copy per file;
    ``bytes(artifact.payload)`` gives bytes. ``.json`` payloads carry the
    ``[REPLACE]`` sentinel where the kernel directory was."""

    filename: str
    payload: Buffer = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class TritonKernelArtifacts:
    """Every file of one cache directory. ``target`` (``"cuda:90"``,
    ``"hip:gfx942"``, ...) and ``triton_version`` come from the kernel's
    metadata ``.json`` when it has them.

    ``kind`` is ``"kernel"`` (GPU code, looked up by Triton's JIT),
    ``"host"`` (host code: a launcher stub or ``cuda_utils`` module Triton
    would otherwise build with a C compiler on first launch; machine code
    for one platform and Python ABI) or ``"autotune"`` (the autotuner's
    saved timings of every config for one tuning key). ``triton_abi`` and ``platform`` say
    which Python ABI tag and platform (``"linux-x86_64"``) an entry was
    built for when known; a kernel without its own ``triton_abi`` has the
    bundle's."""

    kernel_hash: str
    device: int
    artifacts: list[TritonKernelArtifact]
    target: str | None = None
    triton_version: str | None = None
    kind: str = KERNEL
    triton_abi: str | None = None
    platform: str | None = None

    def kernel_names(self) -> list[str]:
        """Names of the kernels in this directory (stems of binary artifacts)."""
        return kernel_names_in([a.filename for a in self.artifacts])

    @property
    def size(self) -> int:
        """Bytes of all artifacts."""
        return sum(len(a.payload) for a in self.artifacts)


@dataclasses.dataclass(frozen=True, slots=True)
class TritonBundlerMetadata:
    """Kernel names for instrumentation. ``statically_launched_kernel_names``
    stays empty: Inductor's pickled static launchers are not carried, since a
    bundle holds data only."""

    cached_kernel_names: list[str]
    statically_launched_kernel_names: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class TritonBundle:
    """Compiled kernels ready to be written to a file or restored into a cache.

    ``triton_version`` is the Triton that built the kernels (the installed one
    at collect time); ``pyruntime_version`` the pyruntime that wrote the
    bundle. ``content_digest`` is set on bundles read from bytes (the digest
    the file carried, checked on load). ``triton_abi`` is the ABI tag of the
    Python that collected the kernels (:func:`installed_triton_abi`; Triton's
    cache keys differ per CPython wheel); ``None`` when unknown, as in
    bundles written before it was recorded, and then not checked."""

    kernel_artifacts: list[TritonKernelArtifacts]
    triton_version: str | None = None
    pyruntime_version: str = __version__
    content_digest: str | None = dataclasses.field(default=None, compare=False)
    triton_abi: str | None = None
    # (kernel objects, artifact objects) that were checked as they were read
    # (by a collect or a decode), so saving or restoring them need not check
    # them again while the bundle holds those very objects; see
    # is_checked
    _checked: tuple[list[Any], list[Any]] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False)
    # (file offsets, packed blob, kernel-table record) per kernel when a
    # collect packed each kernel as it read it; valid while _checked is
    _packed: tuple[list[list[int]], list[PackedEntry], list[bytes]] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False)
    # every file, flat, pointing into the unpacked blobs, when a decode built
    # the bundle (what restore hands the C writer); valid while _checked is,
    # or while the kernel objects were never built
    _table: FileTable | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    # a decode's kernels as rows; the kernel and artifact objects are built
    # from them and _table on first use of kernel_artifacts (a load+restore
    # needs none of them)
    _rows: list[KernelRow] | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    # -- information ---------------------------------------------------
    @property
    def targets(self) -> list[str]:
        """Sorted distinct targets of the kernels."""
        return sorted({k.target for k in self.kernel_artifacts if k.target})

    def kernel_names(self) -> list[str]:
        return kernel_names_in([a.filename for k in self.kernel_artifacts for a in k.artifacts])

    @property
    def size(self) -> int:
        """Bytes of all artifacts (uncompressed)."""
        return sum(k.size for k in self.kernel_artifacts)

    def __len__(self) -> int:
        return len(self.kernel_artifacts)

    # -- bytes and files (pyruntime.bundle.format) --------------------------
    def to_bytes(self) -> bytes:
        """The data-only bundle file's bytes (docs/FORMAT.md, "Bundle file")."""
        return _IO["encode"](self)

    @classmethod
    def from_bytes(cls, data: Buffer) -> "TritonBundle":
        """Verify and decode bundle bytes; raises :class:`BundleFormatError`
        naming the first problem."""
        return _IO["decode"](data)

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the bundle file atomically; returns its size in bytes."""
        return _IO["save"](self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TritonBundle":
        """Read and verify a bundle file."""
        return _IO["load"](path)

    # -- restore (pyruntime.bundle.restore) ------------------------------------------
    def restore(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        on_mismatch: MismatchPolicy | None = None,
        target: str | None = None,
        fsync: bool | None = None,
        on_conflict: ConflictPolicy | None = None,
        host_code: bool | None = None,
    ) -> "RestoreResult":
        """Write the kernels into ``cache_dir`` (default: the Triton cache
        directory of each kernel's device); see :func:`pyruntime.bundle.restore.restore`."""
        return _IO["restore"](self, cache_dir, on_mismatch=on_mismatch, target=target, fsync=fsync,
                              on_conflict=on_conflict, host_code=host_code)


class KernelRow(NamedTuple):
    """A kernel of a decoded bundle without its artifact objects: what
    restore needs of it (the fields of :class:`TritonKernelArtifacts`, and
    the number of its files, which come in table order)."""

    kernel_hash: str
    device: int
    target: str | None
    triton_version: str | None
    nfiles: int
    kind: str = KERNEL
    triton_abi: str | None = None
    platform: str | None = None


_BUILD_LOCK = threading.Lock()


def _kernel_artifacts(bundle: TritonBundle) -> list[TritonKernelArtifacts]:
    kernels = bundle.__dict__["_kernels"]
    if kernels is None and bundle.__dict__.get("_rows") is not None:
        kernels = _build_kernels(bundle)
    return kernels


def _set_kernel_artifacts(bundle: TritonBundle, kernels: list[TritonKernelArtifacts]) -> None:
    # reached only through object.__setattr__ (the dataclass __init__): the
    # frozen class refuses an assignment before it gets here
    bundle.__dict__["_kernels"] = kernels


def _build_kernels(bundle: TritonBundle) -> list[TritonKernelArtifacts]:
    """The kernel and artifact objects of a decoded bundle, from its rows
    and file table (payloads are views into the unpacked blobs), once."""
    with _BUILD_LOCK:
        kernels = bundle.__dict__["_kernels"]
        if kernels is not None:
            return kernels
        t = bundle._table
        assert t is not None and bundle._rows is not None
        payloads = [t.blobs[b][o:o + n] for b, o, n in zip(t.blob_of, t.offs, t.sizes)]
        arts = list(map(TritonKernelArtifact, t.names, payloads))
        kernels = []
        first = 0
        for r in bundle._rows:
            kernels.append(TritonKernelArtifacts(r.kernel_hash, r.device, arts[first:first + r.nfiles], r.target,
                                                 r.triton_version, r.kind, r.triton_abi, r.platform))
            first += r.nfiles
        bundle.__dict__["_kernels"] = kernels
        mark_checked(bundle)
        return kernels


# The field is a property, set after the dataclass is made (else the dataclass
# would take the property for the field's default).
TritonBundle.kernel_artifacts = property(  # type: ignore[method-assign,assignment]
    _kernel_artifacts, _set_kernel_artifacts,
    doc="The kernels: a decoded bundle builds these objects on first use.")



@dataclasses.dataclass
class RestoreResult:
    """What :func:`restore` did, per kernel hash."""

    restored: list[str] = dataclasses.field(default_factory=list)
    existing: list[str] = dataclasses.field(default_factory=list)
    incompatible: dict[str, str] = dataclasses.field(default_factory=dict)  # hash -> reason
    kernel_names: list[str] = dataclasses.field(default_factory=list)  # of restored kernels
    files_written: int = 0
    bytes_written: int = 0
    stale_removed: list[str] = dataclasses.field(default_factory=list)
    #: the warning issued (policy "warn") about skipped kernels, else None
    message: str | None = None
    #: kernels not restored because their path is held by something that is
    #: not a directory (a file, FIFO, socket, device or symlink), left in
    #: place by ``on_conflict`` or because it could not be removed: hash ->
    #: what holds it (and why it stayed)
    blocked: dict[str, str] = dataclasses.field(default_factory=dict)
    #: restored kernels whose path such a thing held, replaced (also in
    #: ``restored``): hash -> what was there
    replaced: dict[str, str] = dataclasses.field(default_factory=dict)
    #: entries not for this machine, left out without a warning: host code
    #: for another Python ABI, platform or Triton (or host code turned off),
    #: and the kernels for other targets or ABIs of a bundle that also holds
    #: those for this one: hash -> why
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)


def merge(bundles: list[TritonBundle]) -> TritonBundle:
    """One bundle of the entries of several (kernels built for several
    targets, Python ABIs or Triton versions; their host code): each entry
    keeps the Triton version and Python ABI of the bundle it came from, so
    a restore picks what fits the machine. An entry in two bundles must be
    the same bytes in both (then it is kept once)."""
    out: dict[str, TritonKernelArtifacts] = {}
    for b in bundles:
        for k in b.kernel_artifacts:
            k = dataclasses.replace(k, triton_version=k.triton_version or b.triton_version,
                                    triton_abi=k.triton_abi or b.triton_abi)
            seen = out.get(k.kernel_hash)
            if seen is None:
                out[k.kernel_hash] = k
            elif [(a.filename, bytes(a.payload)) for a in seen.artifacts] != \
                    [(a.filename, bytes(a.payload)) for a in k.artifacts]:
                raise BundleFormatError(f"kernel {k.kernel_hash} differs between the bundles being merged")
    kernels = list(out.values())
    versions = {k.triton_version for k in kernels if k.kind == KERNEL}
    abis = {k.triton_abi for k in kernels if k.kind == KERNEL}
    return TritonBundle(kernels, triton_version=versions.pop() if len(versions) == 1 else None,
                        triton_abi=abis.pop() if len(abis) == 1 else None)


# --------------------------------------------------------------------------
# checked state


def mark_checked(bundle: TritonBundle) -> None:
    """Note that ``bundle``'s kernels and artifacts, as they are now, passed
    the checks of :func:`check_bundle`."""
    kernels = list(bundle.kernel_artifacts)
    object.__setattr__(bundle, "_checked", (kernels, [a for k in kernels for a in k.artifacts]))


def is_checked(bundle: TritonBundle) -> bool:
    """Whether ``bundle`` still holds the very kernel and artifact objects a
    collect or a decode checked (both are frozen, only the lists could have
    changed), or a decode's kernels whose objects were never built; then
    :func:`check_bundle` would find nothing new."""
    if bundle.__dict__["_kernels"] is None and bundle._rows is not None:
        return True
    pre = bundle._checked
    if pre is None:
        return False
    kernels = bundle.kernel_artifacts
    if len(kernels) != len(pre[0]) or not all(map(operator.is_, kernels, pre[0])):
        return False
    flat = [a for k in kernels for a in k.artifacts]
    return len(flat) == len(pre[1]) and all(map(operator.is_, flat, pre[1]))


def decoded_table(bundle: TritonBundle, checked: bool | None = None) -> FileTable | None:
    """The flat file table :func:`decode` built, pointing into the unpacked
    blobs, while the bundle is unchanged (``checked``: what
    :func:`is_checked` gave, when the caller knows); else ``None``."""
    if bundle._table is None or not (is_checked(bundle) if checked is None else checked):
        return None
    return bundle._table


def kernel_rows(bundle: TritonBundle) -> list[KernelRow]:
    """The bundle's kernels as rows, in order: a decode's own while their
    objects were never built, else made from the objects."""
    if bundle.__dict__["_kernels"] is None and bundle._rows is not None:
        return bundle._rows
    return [KernelRow(k.kernel_hash, k.device, k.target, k.triton_version, len(k.artifacts), k.kind, k.triton_abi,
                      k.platform)
            for k in bundle.kernel_artifacts]


def check_bundle(bundle: TritonBundle) -> None:
    """Validate names and fields of an in-memory bundle (what :func:`decode`
    checks on a file): raises :class:`BundleFormatError`."""
    seen: set[str] = set()
    for k in bundle.kernel_artifacts:
        check_kernel_hash(k.kernel_hash)
        if k.kernel_hash in seen:
            raise BundleFormatError(f"kernel {k.kernel_hash} appears twice")
        seen.add(k.kernel_hash)
        if not isinstance(k.device, int) or isinstance(k.device, bool) or not 0 <= k.device <= MAX_DEVICE:
            raise BundleFormatError(f"kernel {k.kernel_hash}: device {shown(k.device)} is not an integer "
                                    f"from 0 to {MAX_DEVICE}")
        check_target(k.target)
        check_version(k.triton_version, f"kernel {k.kernel_hash}: triton_version")
        check_kind(k.kind, k.kernel_hash)
        check_abi(k.triton_abi)
        check_platform(k.platform)
        names: set[str] = set()
        for a in k.artifacts:
            check_file_name(a.filename, k.kernel_hash)
            names.add(a.filename)
        if len(names) != len(k.artifacts):
            raise BundleFormatError(f"kernel {k.kernel_hash}: a file name appears twice")
    check_version(bundle.triton_version, "triton_version")
    check_abi(bundle.triton_abi)
