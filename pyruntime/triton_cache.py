"""Triton's cache hooks served from kernel bundles, one kernel at a time.

::

    export TRITON_CACHE_MANAGER=pyruntime.triton_cache:BundleCacheManager
    export PYRUNTIME_BUNDLES=/opt/kernels/model.prtb,s3://kernels/prod#llama-70b:v3

Triton builds a cache manager for every kernel it looks up (``get_cache_manager(key)``).
:class:`BundleCacheManager` answers a lookup for a key that a bundle in
``PYRUNTIME_BUNDLES`` holds by writing that one kernel directory into the
local Triton cache (atomically, once: see
:meth:`pyruntime.bundle.lazy.LazyBundle.materialize`) and then handing the
lookup to Triton's own ``FileCacheManager``; any other key goes to
``FileCacheManager`` unchanged (or to the class named by
``PYRUNTIME_CACHE_FALLBACK``, e.g. a frozen-JIT guard). So starting a
process costs opening the bundles' indexes, whatever their size, and only
the kernels Triton really asks for are ever written.

``PYRUNTIME_BUNDLES`` lists bundles separated by commas; an entry without
``://`` may itself list paths separated by ``os.pathsep``. An entry is a
bundle file, or ``STORE_URL#REF`` (REF a ``NAME[:TAG]`` or a digest) for a
bundle in a store (:mod:`pyruntime.store`): it is downloaded and fully
verified once into ``<cache>/.pyruntime/bundles/<digest>.prtb``, then
opened like a file (a ``#DIGEST`` whose file is there needs no store at
all; ``#NAME:TAG`` asks the store which digest the tag points to). The
bundles are opened once per process, on the first lookup, and the first
bundle holding a key serves it.

When a bundle or store fails (store down, bundle damaged), the
``PYRUNTIME_STORE_ON_ERROR`` policy applies: ``warn`` (default) warns once
and carries on without it, so Triton compiles locally; ``error`` raises.

:class:`StoreRemoteBackend` has the shape of Triton's ``RemoteCacheBackend``
(``get(filenames)``, ``put(filename, data)``), so Triton's own remote-cache
path can use a store too::

    export TRITON_CACHE_MANAGER=triton.runtime.cache:RemoteCacheManager
    export TRITON_REMOTE_CACHE_BACKEND=pyruntime.triton_cache:StoreRemoteBackend
    export PYRUNTIME_TRITON_STORE=redis://cache-host:6379/0

It serves the files of bundled kernels (``PYRUNTIME_BUNDLES``) and keeps
every other file Triton puts in the store, framed with its XXH3-64 (a
damaged file is a miss, never a cache entry).

This module imports Triton (its base classes); ``import pyruntime`` never
imports this module.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import warnings
from typing import Any

from triton import knobs
from triton.runtime.cache import CacheManager, FileCacheManager, RemoteCacheBackend

from .bundle.lazy import LazyBundle
from .bundle.restore import sentinel_swap, check_sentinel_growth
from .bundle.rules import REPLACE_SENTINEL
from .errors import PyRuntimeError
from .store import (
    BundleStore,
    StoreError,
    is_store_url,
    on_error_policy,
    open_store,
    pull_to_file,
    shown,
    shown_path,
    split_ref,
)

log = logging.getLogger(__name__)

BUNDLES_ENV = "PYRUNTIME_BUNDLES"
FALLBACK_ENV = "PYRUNTIME_CACHE_FALLBACK"
TRITON_STORE_ENV = "PYRUNTIME_TRITON_STORE"
#: under the Triton cache directory: pulled bundles and lookup indexes (a
#: name starting with "." is never a kernel directory)
STATE_DIR = ".pyruntime"


def state_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir, STATE_DIR)


def split_bundles(spec: str) -> list[str]:
    """The entries of a ``PYRUNTIME_BUNDLES`` value, in order."""
    out: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "://" in part:
            out.append(part)
        else:
            out += [p for p in part.split(os.pathsep) if p.strip()]
    return out


class BundleSet:
    """The bundles of one ``PYRUNTIME_BUNDLES`` value, opened (index only)."""

    def __init__(self, spec: str, cache_dir: str, policy: str | None = None) -> None:
        self.spec = spec
        self.cache_dir = cache_dir
        self.bundles: list[LazyBundle] = []
        self.errors: list[str] = []
        self.where: dict[str, LazyBundle] = {}
        self._lock = threading.Lock()
        self._done: set[str] = set()
        self._failed: set[str] = set()
        self._policy = on_error_policy(policy)
        index_dir = os.path.join(state_dir(cache_dir), "index")
        for entry in split_bundles(spec):
            try:
                path = self._local_path(entry)
                self.bundles.append(LazyBundle.open(path, index_dir=index_dir))
            except (PyRuntimeError, OSError, ValueError) as e:
                where = shown(entry) if is_store_url(entry) else shown_path(entry)
                self._fail(f"bundle {where} is not used: {e}", e)
        for b in reversed(self.bundles):  # the first bundle holding a key wins
            self.where.update(dict.fromkeys(b.kernel_hashes, b))

    def _local_path(self, entry: str) -> str:
        if not is_store_url(entry):
            return entry
        url, ref = split_ref(entry)
        return pull_to_file(url, ref, os.path.join(state_dir(self.cache_dir), "bundles"))

    def _fail(self, message: str, cause: Exception) -> None:
        if self._policy == "error":
            # the cause's class (StoreUnavailableError, BundleFormatError, ...), with the context
            cls = type(cause) if isinstance(cause, PyRuntimeError) else PyRuntimeError
            raise cls(message) from None
        self.errors.append(message)
        warnings.warn(f"pyruntime: {message}; Triton compiles what it would have held", RuntimeWarning,
                      stacklevel=3)

    def __contains__(self, key: object) -> bool:
        return key in self.where

    def materialize(self, key: str, cache_dir: str | None = None) -> bool:
        """Make sure kernel ``key`` is in ``cache_dir`` (default: this set's
        cache directory); returns whether a bundle holds it and it is there.
        A failure follows the policy: a warning (Triton then compiles it)
        or an exception."""
        bundle = self.where.get(key)
        if bundle is None:
            return False
        root = cache_dir or self.cache_dir
        if (root, key) in self._done:
            return True
        with self._lock:
            if (root, key) in self._done:
                return True
            if (root, key) in self._failed:
                return False
            try:
                bundle.materialize(key, root)
            except (PyRuntimeError, OSError, ValueError) as e:
                self._failed.add((root, key))  # type: ignore[arg-type]
                self._fail(f"kernel {key} from {bundle.path} was not written: {e}", e)
                return False
            self._done.add((root, key))  # type: ignore[arg-type]
        return True

    def close(self) -> None:
        for b in self.bundles:
            b.close()


_SETS: dict[tuple[str, str], BundleSet] = {}
_SETS_LOCK = threading.Lock()


def bundle_set(spec: str | None = None, cache_dir: str | None = None) -> BundleSet:
    """The process's :class:`BundleSet` for ``spec`` (default
    ``$PYRUNTIME_BUNDLES``) and ``cache_dir`` (default Triton's cache
    directory), opened on first use and kept."""
    spec = os.environ.get(BUNDLES_ENV, "") if spec is None else spec
    root = cache_dir or knobs.cache.dir
    if not root:
        raise RuntimeError("Triton has no cache directory (TRITON_CACHE_DIR / TRITON_HOME)")
    found = _SETS.get((spec, root))
    if found is not None:
        return found
    with _SETS_LOCK:
        found = _SETS.get((spec, root))
        if found is None:
            found = _SETS[(spec, root)] = BundleSet(spec, root)
        return found


def reset() -> None:
    """Forget the opened bundles (tests; a launcher that changed
    ``PYRUNTIME_BUNDLES`` gets a new set anyway)."""
    with _SETS_LOCK:
        for s in _SETS.values():
            s.close()
        _SETS.clear()


def _fallback_class() -> type[CacheManager]:
    raw = os.environ.get(FALLBACK_ENV, "").strip()
    if not raw:
        return FileCacheManager
    module, sep, name = raw.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{FALLBACK_ENV}={shown(raw)} is not MODULE:CLASS")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, CacheManager)) or cls is BundleCacheManager:
        raise ValueError(f"{FALLBACK_ENV}={shown(raw)} is not a Triton CacheManager class")
    return cls


class BundleCacheManager(CacheManager):
    """Triton's cache manager for ``TRITON_CACHE_MANAGER``: kernels held by
    the bundles in ``PYRUNTIME_BUNDLES`` are written into the local cache
    when Triton first looks them up; everything else, and every write,
    goes to ``FileCacheManager`` (or ``PYRUNTIME_CACHE_FALLBACK``)."""

    def __init__(self, key: str, override: bool = False, dump: bool = False) -> None:
        self.key = key
        self._inner = _fallback_class()(key, override=override, dump=dump)
        # dump and override directories are Triton's debugging aids: never served
        self._bundles = None if (override or dump) else bundle_set()
        self._ready = self._bundles is None or key not in self._bundles

    @property
    def cache_dir(self) -> Any:
        return getattr(self._inner, "cache_dir", None)

    def _serve(self) -> None:
        if not self._ready:
            assert self._bundles is not None
            root = os.path.dirname(os.path.normpath(self.cache_dir)) if self.cache_dir else None
            self._bundles.materialize(self.key, root)
            self._ready = True

    def get_file(self, filename: str) -> str | None:
        self._serve()
        return self._inner.get_file(filename)

    def get_group(self, filename: str) -> dict[str, str] | None:
        self._serve()
        return self._inner.get_group(filename)

    def put(self, data: Any, filename: str, binary: bool = True) -> str:
        return self._inner.put(data, filename, binary=binary)

    def put_group(self, filename: str, group: dict[str, str]) -> Any:
        return self._inner.put_group(filename, group)

    def has_file(self, filename: str) -> bool:
        self._serve()
        has = getattr(self._inner, "has_file", None)
        return bool(has(filename)) if has is not None else self._inner.get_file(filename) is not None


# --------------------------------------------------------------------------
# Triton's remote-cache path


_STORES: dict[str, BundleStore] = {}


def _triton_store() -> BundleStore | None:
    url = os.environ.get(TRITON_STORE_ENV, "").strip()
    if not url:
        return None
    store = _STORES.get(url)
    if store is None:
        with _SETS_LOCK:
            store = _STORES.get(url)
            if store is None:
                store = _STORES[url] = open_store(url)
    return store


class StoreRemoteBackend(RemoteCacheBackend):
    """Triton's ``RemoteCacheBackend`` over a store
    (``TRITON_REMOTE_CACHE_BACKEND=pyruntime.triton_cache:StoreRemoteBackend``,
    with ``TRITON_CACHE_MANAGER=triton.runtime.cache:RemoteCacheManager``).

    ``get`` answers from the bundles of ``PYRUNTIME_BUNDLES`` first (each
    kernel's blob checked; ``[REPLACE]`` in ``.json`` files becomes the
    kernel's directory in the local cache, where Triton's
    ``RemoteCacheManager`` writes what it gets), then from the store named
    by ``PYRUNTIME_TRITON_STORE``; ``put`` writes to that store. A store
    that fails follows ``PYRUNTIME_STORE_ON_ERROR``: ``warn`` makes it a
    miss (Triton compiles) or a skipped upload."""

    def __init__(self, key: str) -> None:
        self._key = key
        self._store = _triton_store()
        self._policy = on_error_policy()

    def _failed(self, e: Exception) -> None:
        if self._policy == "error":
            raise e
        warnings.warn(f"pyruntime: {e}; Triton compiles locally", RuntimeWarning, stacklevel=3)

    def _from_bundles(self, filenames: list[str]) -> dict[str, bytes]:
        try:
            bundles = bundle_set()
        except (PyRuntimeError, OSError, ValueError) as e:
            self._failed(e)
            return {}
        bundle = bundles.where.get(self._key)
        if bundle is None:
            return {}
        try:
            table = bundle.kernel_table(self._key)
        except (PyRuntimeError, OSError, ValueError) as e:
            self._failed(e)
            return {}
        sentinel, prefix = sentinel_swap(bundles.cache_dir)
        try:
            check_sentinel_growth(table, [("", self._key, 0, len(table.names))], {"": len(prefix)})
        except PyRuntimeError as e:
            self._failed(e)
            return {}
        place = prefix + self._key.encode("ascii")
        wanted = set(filenames)
        out = {}
        for name, b, off, size in zip(table.names, table.blob_of, table.offs, table.sizes):
            if name in wanted:
                data = bytes(memoryview(table.blobs[b])[off:off + size])
                if name.endswith(".json") and REPLACE_SENTINEL in data:
                    data = data.replace(sentinel, place)
                out[name] = data
        return out

    def get(self, filenames: Any) -> dict[str, bytes]:
        names = list(filenames)
        out = self._from_bundles(names)
        rest = [n for n in names if n not in out]
        if rest and self._store is not None:
            try:
                out.update(self._store.get_triton_files(self._key, rest))
            except (StoreError, ValueError) as e:
                self._failed(e)
        return out

    def put(self, filename: str, data: bytes) -> None:
        if self._store is None:
            return
        try:
            self._store.put_triton_file(self._key, filename, data)
        except (StoreError, ValueError) as e:
            self._failed(e)
