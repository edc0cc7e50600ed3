"""Inductor's TritonBundle <-> pyruntime bundles, and Triton kernels of a
torch.compile run exported to a bundle file and restored before the next.

Both formats hold the same thing: per kernel, its Triton cache key (the
kernel directory's name), device and files, with the kernel directory's path
inside ``.json`` files replaced by the ``[REPLACE]`` sentinel. The
conversion copies the file lists and translates the sentinel if a torch
ever picks another one. Inductor's bundle may also carry pickled
"statically launched autotuners"; a pyruntime bundle is data only (a bundle
from elsewhere must never run code on load), so those are dropped on the
way in; Inductor rebuilds them from the kernels.

Export. :func:`record_triton_kernels` notes every kernel Inductor compiles
while it is active (it observes Inductor's ``TritonBundler.put``, which
Inductor calls for each compiled config whether or not its own bundling is
on) and turns them into a bundle; :func:`export_triton_cache` bundles a
whole Triton cache directory instead. :func:`restore_triton_bundle` writes a
bundle into the directory Inductor will read kernels from, before the next
run compiles: Triton then finds every kernel in its cache.
"""

from __future__ import annotations

import logging
import dataclasses
import os
import threading
from typing import Any, Iterable

from torch._inductor import triton_bundler as _tb

from ..bundle import RestoreResult, TritonBundle, TritonKernelArtifact, TritonKernelArtifacts, collect_dir
from ..bundle.collect import parse_kernel_metadata
from ..bundle.compat import installed_triton_abi, installed_triton_version
from ..bundle.rules import GPU_KERNEL_BIN_EXTS, REPLACE_SENTINEL

__all__ = [
    "from_inductor_bundle",
    "to_inductor_bundle",
    "inductor_triton_cache_dir",
    "KernelRecorder",
    "record_triton_kernels",
    "export_triton_cache",
    "restore_triton_bundle",
]

_BIN_EXTS = frozenset(GPU_KERNEL_BIN_EXTS.values())
log = logging.getLogger("pyruntime.torch")


def _torch_sentinel() -> bytes:
    return bytes(getattr(_tb.TritonBundler, "_REPLACE_BYTES", REPLACE_SENTINEL))


def inductor_triton_cache_dir(device: int = 0) -> str:
    """Where Inductor reads and writes Triton kernels of ``device``:
    ``TRITON_CACHE_DIR`` when set, else ``<inductor cache>/triton/<device>``."""
    try:
        from torch._inductor.runtime.cache_dir_utils import triton_cache_dir
    except ImportError:  # older layout
        from torch._inductor.runtime.runtime_utils import triton_cache_dir
    return triton_cache_dir(device)


def _meta_of(artifacts: list[TritonKernelArtifact]) -> tuple[str | None, str | None]:
    # the metadata .json is the one named like the binary (<name>.cubin -> <name>.json)
    stems = {os.path.splitext(a.filename)[0] for a in artifacts if os.path.splitext(a.filename)[1] in _BIN_EXTS}
    for a in artifacts:
        stem, ext = os.path.splitext(a.filename)
        if ext == ".json" and stem in stems:
            return parse_kernel_metadata(a.payload)
    return None, None


def _device_index(device: Any) -> int:
    # Inductor passes an int, or the kernel's DeviceProperties (index inside)
    if isinstance(device, int):
        return device
    index = getattr(device, "index", None)
    return int(index) if isinstance(index, int) else 0


def _swap_sentinel(artifacts: Iterable[Any], old: bytes, new: bytes, make: Any) -> list[Any]:
    """Copies of ``artifacts`` (built with ``make(filename, payload)``) whose
    ``.json`` payloads carry ``new`` in place of the ``old`` directory sentinel."""
    out = []
    for a in artifacts:
        payload = bytes(a.payload)
        if old != new and a.filename.endswith(".json"):
            payload = payload.replace(old, new)
        out.append(make(a.filename, payload))
    return out


def from_inductor_bundle(bundle: Any) -> TritonBundle:
    """A pyruntime :class:`~pyruntime.bundle.TritonBundle` from Inductor's
    ``TritonBundle`` (its static autotuners are dropped: pickles)."""
    kernels = []
    for k in bundle.kernel_artifacts:
        arts = _swap_sentinel(k.artifacts, _torch_sentinel(), REPLACE_SENTINEL, TritonKernelArtifact)
        target, version = _meta_of(arts)
        kernels.append(TritonKernelArtifacts(k.kernel_hash, _device_index(k.device), arts, target, version))
    return TritonBundle(kernels, triton_version=installed_triton_version(), triton_abi=installed_triton_abi())


def to_inductor_bundle(bundle: TritonBundle) -> Any:
    """Inductor's ``TritonBundle`` from a pyruntime bundle (no static
    autotuners), ready for Inductor's ``TritonBundler.read_and_emit``."""
    kernels = []
    for k in bundle.kernel_artifacts:
        arts = _swap_sentinel(k.artifacts, REPLACE_SENTINEL, _torch_sentinel(), _tb.TritonKernelArtifact)
        kernels.append(_tb.TritonKernelArtifacts(k.kernel_hash, k.device, arts))
    return _tb.TritonBundle(kernels, [])


class KernelRecorder:
    """Notes the Triton kernels Inductor compiles while active (a context
    manager, see :func:`record_triton_kernels`). ``entries`` holds
    ``(kernel_hash, device, cache_dir)`` in first-seen order."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, int, str]] = []
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._saved: Any = None

    def _note(self, kernel_hash: str, device: Any) -> None:
        dev = _device_index(device)
        directory = inductor_triton_cache_dir(dev)
        with self._lock:
            if (kernel_hash, directory) not in self._seen:
                self._seen.add((kernel_hash, directory))
                self.entries.append((kernel_hash, dev, directory))

    def start(self) -> "KernelRecorder":
        global _recorders
        with _rec_lock:
            if not _recorders:
                original = _tb.TritonBundler.__dict__["put"]
                put = original.__func__

                def recording_put(cls: Any, kernel_hash: str, device: Any = 0, *args: Any, **kwargs: Any) -> None:
                    for rec in list(_recorders):
                        try:
                            rec._note(kernel_hash, device)
                        except Exception:  # recording must never break a compile
                            log.debug("could not record kernel %s", kernel_hash, exc_info=True)
                    return put(cls, kernel_hash, device, *args, **kwargs)

                _tb.TritonBundler.put = classmethod(recording_put)
                _saved_put[0] = original
            _recorders = [*_recorders, self]
        return self

    def stop(self) -> None:
        global _recorders
        with _rec_lock:
            if self not in _recorders:
                return
            _recorders = [r for r in _recorders if r is not self]
            if not _recorders and _saved_put[0] is not None:
                _tb.TritonBundler.put = _saved_put[0]
                _saved_put[0] = None

    def bundle(self) -> TritonBundle:
        """The recorded kernels as a bundle, read from their cache
        directories now (kernels whose directory has gone are skipped)."""
        kernels = []
        by_dir: dict[str, list[str]] = {}
        devices: dict[tuple[str, str], int] = {}
        for h, dev, d in self.entries:
            by_dir.setdefault(d, []).append(h)
            devices[(d, h)] = dev
        for d, hashes in by_dir.items():
            if not os.path.isdir(d):
                continue
            for k in collect_dir(d, hashes).kernel_artifacts:
                dev = devices[(d, k.kernel_hash)]
                if dev != k.device:
                    k = TritonKernelArtifacts(k.kernel_hash, dev, k.artifacts, k.target, k.triton_version)
                kernels.append(k)
        return TritonBundle(kernels, triton_version=installed_triton_version(), triton_abi=installed_triton_abi())

    def save(self, path: str | os.PathLike[str]) -> TritonBundle:
        """Write the recorded kernels to a bundle file; returns the bundle."""
        b = self.bundle()
        b.save(path)
        return b

    def __enter__(self) -> "KernelRecorder":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


_rec_lock = threading.Lock()
_recorders: list[KernelRecorder] = []
_saved_put: list[Any] = [None]


def record_triton_kernels() -> KernelRecorder:
    """``with record_triton_kernels() as rec: model(x)`` then
    ``rec.save(path)``: the Triton kernels compiled by that run, every
    config Inductor compiled (a later run compiles the same set)."""
    return KernelRecorder()


def export_triton_cache(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
                        kernel_hashes: Iterable[str] | None = None) -> TritonBundle:
    """Bundle the kernels in a Triton cache directory (default: Inductor's
    for device 0) into a bundle file at ``path``; returns the bundle."""
    root = os.fspath(cache_dir) if cache_dir is not None else inductor_triton_cache_dir(0)
    b = collect_dir(root, kernel_hashes)
    b.save(path)
    return b


def restore_triton_bundle(bundle: TritonBundle | str | os.PathLike[str],
                          cache_dir: str | os.PathLike[str] | None = None, **restore_kwargs: Any) -> Any:
    """Write a bundle (or bundle file) into the Triton cache Inductor will
    use (default: :func:`inductor_triton_cache_dir` of each kernel's
    device), before the next torch.compile. ``restore_kwargs`` go to
    :func:`pyruntime.bundle.restore.restore` (``on_mismatch``, ``target``, ``fsync``).
    Returns its :class:`~pyruntime.bundle.RestoreResult`."""
    if not isinstance(bundle, TritonBundle):
        bundle = TritonBundle.load(bundle)
    if cache_dir is not None:
        return bundle.restore(cache_dir, **restore_kwargs)
    total: RestoreResult | None = None
    by_dir: dict[str, list[TritonKernelArtifacts]] = {}
    for k in bundle.kernel_artifacts:
        by_dir.setdefault(inductor_triton_cache_dir(k.device), []).append(k)
    for d, kernels in by_dir.items():
        part = TritonBundle(kernels, triton_version=bundle.triton_version,
                            pyruntime_version=bundle.pyruntime_version, triton_abi=bundle.triton_abi)
        r = part.restore(d, **restore_kwargs)
        if total is None:
            total = r
        else:
            _add(total, r)
    return total if total is not None else bundle.restore(inductor_triton_cache_dir(0), **restore_kwargs)


def _add(total: RestoreResult, part: RestoreResult) -> None:
    """Fold ``part`` into ``total``: lists extended, maps merged, counts
    summed, every field of :class:`RestoreResult` (the last message kept)."""
    for f in dataclasses.fields(RestoreResult):
        mine, theirs = getattr(total, f.name), getattr(part, f.name)
        if isinstance(mine, list):
            mine.extend(theirs)
        elif isinstance(mine, dict):
            mine.update(theirs)
        elif isinstance(mine, int):
            setattr(total, f.name, mine + theirs)
        elif theirs is not None:
            setattr(total, f.name, theirs)
