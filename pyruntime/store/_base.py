"""What every bundle store shares: references, errors, the layout of
objects, and push / fetch / pull / ls written once over four primitives
that each backend (file, S3, Redis) supplies.

Layout (keys under the store's prefix)::

    blobs/<digest>.prtb        a bundle file, under its content digest
    refs/<name>/<tag>          32 hex digits + newline: the digest a name:tag points to
    triton/<key>/<file>        one file of Triton's remote cache (framed, see wrap_file)

Content addressing: a bundle's ``content_digest`` (XXH3-128 of its kernel
table and every blob, docs/FORMAT.md "Content digest") names its object;
a push of a bundle already present uploads nothing; a pull verifies the
whole bundle and that it really carries the digest it was fetched under.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Literal

import xxhash

from .. import TritonBundle
from ..errors import BundleFormatError, PyRuntimeError

if TYPE_CHECKING:
    from ..bundle import RestoreResult

OnError = Literal["warn", "error"]

DEFAULT_TAG = "latest"
SHOWN = 64  # characters of a hostile value quoted in a message

_DIGEST_RE = re.compile(r"[0-9a-f]{32}")
_NAME_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME_RE = re.compile(rf"{_NAME_PART}(?:/{_NAME_PART}){{0,7}}")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_TRITON_KEY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_TRITON_FILE_RE = re.compile(r"[A-Za-z0-9_.-][A-Za-z0-9_.+-]{0,254}")


def shown(value: object) -> str:
    """``value`` as text for a one-line message: cut to 64 characters, no
    line breaks."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path for a one-line message: its last 64 characters (the file
    name is what tells paths apart)."""
    text = os.fsdecode(path).replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= SHOWN else "..." + text[-SHOWN:]


# --------------------------------------------------------------------------
# errors


class StoreError(PyRuntimeError):
    """A bundle store could not do what was asked; the message names the
    store (without credentials) and the problem, on one line."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The store could not be reached, or the connection broke or timed out
    mid-transfer."""


class StoreNotFoundError(StoreError, LookupError):
    """The reference, bundle or bucket asked for is not in the store."""


class StoreObjectError(StoreError, BundleFormatError):
    """An object read from the store is not what it must be: a truncated,
    changed or foreign bundle, or a malformed reference. Nothing from it
    was written anywhere."""


def on_error_policy(value: str | None = None) -> OnError:
    """``value``, else ``PYRUNTIME_STORE_ON_ERROR``: what a failing store
    does where a fallback exists (the Triton cache manager, ``store pull
    --on-error``): ``warn`` (a warning, then Triton compiles locally) or
    ``error`` (raise)."""
    raw = value if value is not None else os.environ.get("PYRUNTIME_STORE_ON_ERROR", "")
    raw = (raw or "warn").strip().lower()
    if raw not in ("warn", "error"):
        raise ValueError(f"PYRUNTIME_STORE_ON_ERROR={shown(raw)} is not one of warn, error")
    return raw  # type: ignore[return-value]


def timeout_s() -> float:
    """``PYRUNTIME_STORE_TIMEOUT``: seconds to connect, and to wait for
    each read, before the store counts as down (default 10)."""
    raw = os.environ.get("PYRUNTIME_STORE_TIMEOUT", "").strip()
    if not raw:
        return 10.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"PYRUNTIME_STORE_TIMEOUT={shown(raw)} is not a number") from None
    if not 0 < value <= 3600:
        raise ValueError(f"PYRUNTIME_STORE_TIMEOUT={shown(raw)} is not between 0 and 3600 seconds")
    return value


def max_bundle_bytes() -> int:
    """``PYRUNTIME_STORE_MAX_BYTES``: the largest bundle object a pull
    accepts (default 4 GiB, the container's own limit)."""
    raw = os.environ.get("PYRUNTIME_STORE_MAX_BYTES", "").strip()
    if not raw:
        return 4 << 30
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"PYRUNTIME_STORE_MAX_BYTES={shown(raw)} is not an integer") from None
    if value < 32:
        raise ValueError(f"PYRUNTIME_STORE_MAX_BYTES={value} is too small for any bundle")
    return value


# --------------------------------------------------------------------------
# references


@dataclasses.dataclass(frozen=True)
class Ref:
    """A parsed reference: a digest, or a name and tag."""

    digest: str | None = None
    name: str | None = None
    tag: str | None = None

    def __str__(self) -> str:
        return self.digest if self.digest is not None else f"{self.name}:{self.tag}"


def is_digest(text: str) -> bool:
    return bool(_DIGEST_RE.fullmatch(text))


def parse_name(text: str) -> tuple[str, str]:
    """``NAME[:TAG]`` -> (name, tag); the tag defaults to ``latest``.
    Names are 1-8 ``/``-separated parts of ``A-Z a-z 0-9 . _ -`` (each
    starting with a letter or digit), tags 1-128 of the same; a name that
    is 32 hex digits would read as a digest and is refused."""
    if not isinstance(text, str):
        raise ValueError(f"reference must be a string, not {type(text).__name__}")
    name, sep, tag = text.rpartition(":")
    if not sep:
        name, tag = text, DEFAULT_TAG
    if not _NAME_RE.fullmatch(name) or len(name) > 256:
        raise ValueError(f"bundle name {shown(name)!s} is not 1-8 '/'-separated parts of A-Z a-z 0-9 . _ - "
                         "(each starting with a letter or digit)")
    if is_digest(name):
        raise ValueError(f"bundle name {name} would read as a digest; pick another name")
    if not _TAG_RE.fullmatch(tag):
        raise ValueError(f"tag {shown(tag)!s} is not 1-128 of A-Z a-z 0-9 . _ - (not starting with . or -)")
    return name, tag


def parse_ref(text: str) -> Ref:
    """A 32-hex-digit content digest, or ``NAME[:TAG]``."""
    if isinstance(text, str) and is_digest(text):
        return Ref(digest=text)
    name, tag = parse_name(text)
    return Ref(name=name, tag=tag)


def blob_key(digest: str) -> str:
    return f"blobs/{digest}.prtb"


def ref_key(name: str, tag: str) -> str:
    return f"refs/{name}/{tag}"


def triton_key(key: str, filename: str) -> str:
    """Where Triton's remote cache keeps ``filename`` of cache entry ``key``."""
    if not _TRITON_KEY_RE.fullmatch(key) or key.startswith("tmp."):
        raise ValueError(f"Triton cache key {shown(key)} is not a plain name")
    if not _TRITON_FILE_RE.fullmatch(filename) or filename in (".", ".."):
        raise ValueError(f"Triton cache file name {shown(filename)} is not a plain file name")
    return f"triton/{key}/{filename}"


# Triton's remote-cache files are framed so a changed or cut object is a
# miss, never a file in the cache: magic, version, XXH3-64 of the data,
# data length, data.
_FILE_HEAD = struct.Struct("<4sBxxxQQ")
_FILE_MAGIC = b"PRTO"


def wrap_file(data: bytes) -> bytes:
    return _FILE_HEAD.pack(_FILE_MAGIC, 1, xxhash.xxh3_64_intdigest(data), len(data)) + data


def unwrap_file(value: bytes) -> bytes | None:
    """The data of a framed file, or ``None`` when the frame is wrong."""
    if len(value) < _FILE_HEAD.size:
        return None
    magic, version, checksum, length = _FILE_HEAD.unpack_from(value)
    data = value[_FILE_HEAD.size:]
    if magic != _FILE_MAGIC or version != 1 or length != len(data) or xxhash.xxh3_64_intdigest(data) != checksum:
        return None
    return data


# --------------------------------------------------------------------------
# results


@dataclasses.dataclass
class PullResult:
    """What :meth:`BundleStore.pull` did."""

    digest: str
    size: int
    kernels: int
    restore: "RestoreResult | None"
    cache_dir: str | None

    @property
    def restored(self) -> list[str]:
        return self.restore.restored if self.restore is not None else []

    @property
    def existing(self) -> list[str]:
        return self.restore.existing if self.restore is not None else []


@dataclasses.dataclass(frozen=True)
class StoreListing:
    """What :meth:`BundleStore.ls` found: each ``name:tag`` with its
    digest, and each bundle object's digest with its size in bytes."""

    refs: dict[str, str]
    blobs: dict[str, int]


# --------------------------------------------------------------------------
# the store


class BundleStore:
    """A content-addressed store of bundle files over an existing server.

    Subclasses supply :meth:`_get`, :meth:`_put`, :meth:`_exists` and
    :meth:`_list`, each raising :class:`StoreError` (or a subclass) with a
    one-line message; everything else is here."""

    #: the store's URL as shown in messages (no credentials)
    url: str = ""

    # -- primitives --------------------------------------------------------
    def _get(self, key: str, max_bytes: int | None = None) -> bytes | None:
        """The object's bytes, ``None`` when there is none."""
        raise NotImplementedError

    def _get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self._get(k) for k in keys]

    def _put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        raise NotImplementedError

    def _exists(self, key: str) -> bool:
        raise NotImplementedError

    def _list(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` (relative to the store), with its size."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the store can be used again afterwards)."""

    def __enter__(self) -> "BundleStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # -- messages ----------------------------------------------------------
    def _error(self, cls: type[StoreError], what: str) -> StoreError:
        return cls(f"store {self.url}: {what}")

    # -- bundles -----------------------------------------------------------
    def push(self, bundle: str | os.PathLike[str] | bytes | TritonBundle, name: str | None = None) -> str:
        """Store a bundle (a file, its bytes or a :class:`TritonBundle`),
        verified first, under its content digest; point ``name[:tag]`` at
        it when given. Returns the digest. A bundle already stored under
        that digest is not uploaded again."""
        tag_ref = parse_name(name) if name is not None else None
        if isinstance(bundle, TritonBundle):
            data = bundle.to_bytes()
        elif isinstance(bundle, (bytes, bytearray, memoryview)):
            data = bytes(bundle)
        else:
            with open(bundle, "rb") as f:
                data = f.read()
        loaded = TritonBundle.from_bytes(data)  # never upload what a pull would refuse
        digest = loaded.content_digest
        assert digest is not None
        if not self._exists(blob_key(digest)):
            self._put(blob_key(digest), data, if_absent=True)
        if tag_ref is not None:
            self._put(ref_key(*tag_ref), f"{digest}\n".encode("ascii"))
        return digest

    def resolve(self, ref: str | Ref) -> str:
        """The digest ``ref`` (a digest, or ``NAME[:TAG]``) stands for."""
        r = ref if isinstance(ref, Ref) else parse_ref(ref)
        if r.digest is not None:
            return r.digest
        assert r.name is not None and r.tag is not None
        raw = self._get(ref_key(r.name, r.tag), max_bytes=64)
        if raw is None:
            raise self._error(StoreNotFoundError, f"no bundle named {r.name}:{r.tag}")
        text = raw.decode("ascii", "replace").strip()
        if not is_digest(text):
            raise self._error(StoreObjectError, f"reference {r.name}:{r.tag} holds {shown(text)}, not a digest")
        return text

    def fetch(self, ref: str | Ref) -> tuple[str, bytes, TritonBundle]:
        """Download the bundle ``ref`` names and verify all of it: every
        checksum, the kernel table, and that its content digest is the one
        it was stored under. Returns (digest, file bytes, bundle)."""
        digest = self.resolve(ref)
        data = self._get(blob_key(digest), max_bytes=max_bundle_bytes())
        if data is None:
            raise self._error(StoreNotFoundError, f"no bundle {digest}")
        try:
            bundle = TritonBundle.from_bytes(data)
        except BundleFormatError as e:
            raise self._error(StoreObjectError, f"{blob_key(digest)} ({len(data)} bytes): {e}") from None
        if bundle.content_digest != digest:
            raise self._error(StoreObjectError,
                              f"{blob_key(digest)} holds bundle {bundle.content_digest}, not {digest}")
        return digest, data, bundle

    def pull(
        self,
        ref: str | Ref,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        on_mismatch: Literal["warn", "error", "force"] | None = None,
        target: str | None = None,
        fsync: bool | None = None,
    ) -> PullResult:
        """Download, verify the whole bundle, then restore it into
        ``cache_dir`` (default: Triton's cache directory); each kernel lands
        atomically (see :func:`pyruntime.bundle.restore`), so concurrent
        pulls into one cache are safe and a failed pull writes nothing."""
        digest, data, bundle = self.fetch(ref)
        result = bundle.restore(cache_dir, on_mismatch=on_mismatch, target=target, fsync=fsync)
        return PullResult(digest, len(data), len(result.restored) + len(result.existing)
                          + len(result.incompatible), result,
                          os.fspath(cache_dir) if cache_dir is not None else None)

    def ls(self) -> StoreListing:
        """Every ``name:tag`` (with the digest it points to) and every
        stored bundle (with its size)."""
        refs: dict[str, str] = {}
        ref_keys = sorted(self._list("refs/"))
        for key, raw in zip(ref_keys, self._get_many(ref_keys)):
            if raw is None:
                continue  # removed since the listing
            name, _, tag = key[len("refs/"):].rpartition("/")
            text = raw.decode("ascii", "replace").strip()
            refs[f"{name}:{tag}"] = text if is_digest(text) else f"(bad reference: {shown(text)})"
        blobs = {}
        for key, size in sorted(self._list("blobs/").items()):
            stem = key[len("blobs/"):]
            if stem.endswith(".prtb") and is_digest(stem[:-5]):
                blobs[stem[:-5]] = size
        return StoreListing(refs, blobs)

    # -- Triton's remote cache (pyruntime.triton_cache.StoreRemoteBackend) --
    def get_triton_files(self, key: str, filenames: Iterable[str]) -> dict[str, bytes]:
        """The files of Triton cache entry ``key`` that the store holds and
        whose frame checks out (a damaged one is left out, with a warning)."""
        names = list(filenames)
        values = self._get_many([triton_key(key, n) for n in names])
        out = {}
        for name, value in zip(names, values):
            if value is None:
                continue
            data = unwrap_file(value)
            if data is None:
                warnings.warn(f"store {self.url}: {triton_key(key, name)} is damaged; ignored (Triton compiles)",
                              RuntimeWarning, stacklevel=2)
                continue
            out[name] = data
        return out

    def put_triton_file(self, key: str, filename: str, data: bytes) -> None:
        self._put(triton_key(key, filename), wrap_file(bytes(data)))
