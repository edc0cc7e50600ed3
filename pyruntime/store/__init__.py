"""Push and pull kernel bundles through storage a fleet already runs.

::

    from pyruntime.store import open_store

    with open_store("s3://kernels/prod") as store:       # or redis://host:6379/0, file:///srv/kernels
        digest = store.push("build/kernels.prtb", name="llama-70b:v3")
    with open_store("s3://kernels/prod") as store:
        store.pull("llama-70b:v3", cache_dir)            # download, verify all, restore atomically

A store is an existing server, not one of ours: a directory (``file://``),
S3 or any S3-compatible service (``s3://``, boto3, extra
``pyruntime[s3]``), or Redis (``redis://``, redis-py, extra
``pyruntime[redis]``). Bundles are content-addressed: each is stored once
under its content digest, and ``name:tag`` references point at digests,
as in an image registry. boto3 and redis-py are imported only when a store
of theirs is opened, never by ``import pyruntime``.

What is verified: a push verifies the bundle before uploading it; a pull
verifies every byte (container and entry checksums, kernel table, content
digest) and that the bundle carries the digest it was stored under, before
the first kernel is written; each kernel lands in a ``tmp.*`` directory and
is renamed into place. XXH3 detects damage, not forgery: anyone who can
write to the store can publish kernels, so give write access accordingly.

Failures are :class:`StoreError` subclasses with one-line messages: the
store unreachable or cut off mid-transfer (:class:`StoreUnavailableError`),
a missing reference or bundle (:class:`StoreNotFoundError`), a damaged or
foreign object (:class:`StoreObjectError`). ``PYRUNTIME_STORE_ON_ERROR``
(``warn``/``error``) decides whether the Triton cache manager
(:mod:`pyruntime.triton_cache`) falls back to local compiles with a
warning or raises. Layout, knobs and the CLI: docs/STORE.md.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from .._atomic import write_atomic
from ._base import (
    DEFAULT_TAG,
    BundleStore,
    PullResult,
    Ref,
    StoreError,
    StoreListing,
    StoreNotFoundError,
    StoreObjectError,
    StoreUnavailableError,
    is_digest,
    max_bundle_bytes,
    on_error_policy,
    parse_name,
    parse_ref,
    shown,
    shown_path,
    timeout_s,
)
from ._file import FileStore
from ._redis import RedisStore
from ._s3 import S3Store

__all__ = [
    "DEFAULT_TAG",
    "BundleStore",
    "FileStore",
    "PullResult",
    "RedisStore",
    "Ref",
    "S3Store",
    "StoreError",
    "StoreListing",
    "StoreNotFoundError",
    "StoreObjectError",
    "StoreUnavailableError",
    "is_digest",
    "is_store_url",
    "max_bundle_bytes",
    "on_error_policy",
    "open_store",
    "parse_name",
    "parse_ref",
    "pull_to_file",
    "split_ref",
    "timeout_s",
]

SCHEMES = ("file", "s3", "redis", "rediss")


def is_store_url(text: str) -> bool:
    """Whether ``text`` is a store URL (``file://``, ``s3://``,
    ``redis://``, ``rediss://``) rather than a path."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def open_store(url: str, *, endpoint: str | None = None) -> BundleStore:
    """The store at ``url``:

    * ``file:///path``: a directory;
    * ``s3://bucket[/prefix]``: S3 or an S3-compatible service at
      ``endpoint`` (else ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, else
      AWS);
    * ``redis://[:password@]host[:port][/db][?prefix=P]`` (``rediss://``
      for TLS).

    Opening connects to nothing; the first operation does."""
    if not isinstance(url, str):
        raise TypeError(f"store URL must be a string, not {type(url).__name__}")
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file store URL {shown(url)} names a host; use file:///absolute/path")
        return FileStore(parts.path)
    if scheme == "s3":
        return S3Store(url, endpoint)
    if scheme in ("redis", "rediss"):
        if endpoint:
            raise ValueError("--endpoint is for s3:// stores; a redis:// URL names its server")
        return RedisStore(url)
    raise ValueError(f"{shown(url)} is not a store URL (file:///path, s3://bucket/prefix, redis://host:port/db)")


def split_ref(text: str) -> tuple[str, str]:
    """``URL#REF`` -> (URL, REF): how ``PYRUNTIME_BUNDLES`` names a bundle
    in a store (``s3://kernels/prod#llama-70b:v3``, ``redis://host/0#<digest>``)."""
    url, sep, ref = text.partition("#")
    if not sep or not ref:
        raise ValueError(f"{shown(text)} names a store but no bundle: add #NAME[:TAG] or #DIGEST")
    parse_ref(ref)
    return url, ref


def _local_name(digest: str) -> str:
    return f"{digest}.prtb"


def pull_to_file(url: str, ref: str, directory: str | os.PathLike[str], *,
                 endpoint: str | None = None) -> str:
    """The bundle ``ref`` of the store at ``url`` as a verified local file
    ``<directory>/<digest>.prtb`` (content-addressed: downloaded only when
    not there yet; written through a temporary file and a rename). A
    digest ``ref`` whose file is present needs no store at all."""
    directory = os.fspath(directory)
    r = parse_ref(ref)
    if r.digest is not None:
        local = os.path.join(directory, _local_name(r.digest))
        if os.path.isfile(local):
            return local
    with open_store(url, endpoint=endpoint) as store:
        digest = store.resolve(r)
        local = os.path.join(directory, _local_name(digest))
        if os.path.isfile(local):
            return local
        _, data, _ = store.fetch(digest)
    os.makedirs(directory, exist_ok=True)
    write_atomic(local, data)
    return local
