"""Per-kernel reads of a bundle file: open it without unpacking it, and
write one kernel into a cache only when it is asked for.

:meth:`LazyBundle.open` reads the pack container's 32-byte header and its
index with ``pread`` and checks them: magic, version, flags, that the
declared sizes are the file's, and the index checksum (XXH3-64 of the
index bytes). What it needs of the kernel table (each kernel's hash and
files, each blob's place, sizes and checksum) comes from a *lookup index*
(``<index_dir>/<id>.prti``, see below); without a valid one it is built
from the bundle: every index record is checked as ``unpack`` checks it
(docs/FORMAT.md "Reading", steps 1-12), ``header.json`` and
``kernels.json`` are decompressed and checksummed, and parsed and checked
by :func:`pyruntime.bundle.format.parse_header` and
:func:`~pyruntime.bundle.format.parse_kernels` (schema, plain names, no
duplicates, files tiling the blobs), the entry names and blob sizes are
matched against the header.

:meth:`LazyBundle.materialize` then reads only the blob(s) of the kernel
asked for, decompresses them, checks each one's XXH3-64 (from the checked
index) and writes the kernel directory into ``<cache>/tmp.pid_*`` and
renames it onto ``<cache>/<hash>`` (the kernel-directory writer
:func:`pyruntime.bundle.restore.restore` uses, ``[REPLACE]`` in ``.json``
files becoming the kernel directory). A kernel directory that exists with
files in it is left alone; concurrent writers are safe (the first rename
wins).

What the lazy path does NOT verify, against a full ``bundle verify`` /
:meth:`TritonBundle.load`: the content digest (XXH3-128 of the kernel
table and of every blob) needs every blob decompressed, so it is not
computed; the header's ``content_digest`` is only read. Every byte that
is written was still checked (the blob's XXH3-64, which the checked index
carries), and so was the table that says where it goes. Nor does it apply
the restore's Triton-version/ABI/target policy: Triton looks kernels up by
a key that already covers its version, target and wheel, so a kernel of
another build is never asked for. Bundles fetched from a store were fully
verified, content digest included, when they were fetched
(:func:`pyruntime.store.pull_to_file`).

The lookup index makes opening cost the same whatever the bundle's size:
parsing and checking a 500-kernel ``kernels.json`` takes ~10 ms of Python,
reading the index ~0.1 ms. It is derived data, written once (through a
temporary file and a rename) by the first process that opens the bundle
and checked by the others: its own XXH3-64, and the bundle's 32-byte pack
header (which carries the bundle index's checksum, and so every entry's
sizes and checksum) must be the one it was built from. A stale, damaged
or foreign index is rebuilt. Layout (all integers little-endian)::

    "PRTI" u16 version=1 u16 0  u32 kernels u32 files u32 blobs u32 meta
    u64 body length  u64 XXH3-64(body)  32 bytes: the bundle's pack header
    body: meta (JSON: digest, versions, ABI, targets)
          per blob   u64 data offset, stored size, raw size, checksum, method
          per kernel u64 first file, file count
          per file   u64 blob, offset, size, end of its name
          kernel hashes joined by "\\n", then the file names back to back
"""

from __future__ import annotations

import json
import os
import struct
import sys
import threading
from typing import Any, Sequence

import xxhash

from .. import config as _env
from .. import core, packing
from .._atomic import write_atomic
from ..core import twin
from ..core.twin import PACK_HEADER, FileTable, IndexEntry, parse_index, parse_pack_header, unpack_entry
from ..errors import BundleFormatError
from .format import BLOB_PREFIX, HEADER_NAME, KERNELS_NAME, parse_header, parse_kernels
from .restore import check_sentinel_growth, conflict_policy, kernel_present, sentinel_swap
from .rules import check_kernel_hash, restore_tmp_name

_xxh3_64 = xxhash.xxh3_64_intdigest

INDEX_SUFFIX = ".prti"
_PRTI_MAGIC = b"PRTI"
_PRTI_VERSION = 1
_PRTI_HEAD = struct.Struct("<4sHHIIIIQQ32s")
_BLOB_COLS = 5  # data offset, stored size, raw size, checksum, method
_LITTLE = sys.byteorder == "little"
#: write_kernels outcomes of a kernel this call put in place (renamed; or
#: renamed after a non-directory was unlinked)
_LANDED = (1, 2)


def _shown(name: bytes | str) -> str:
    if isinstance(name, str):
        name = name.encode("utf-8", "replace")
    return name[:64].decode("utf-8", "replace") + ("..." if len(name) > 64 else "")


def _pread_exact(fd: int, size: int, offset: int, path: str) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:  # pread may return less (signals, network file systems)
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise BundleFormatError(f"{path}: file ends at {offset + len(data)}, {size - len(data)} bytes early")
        data += more
    return data


class _Container:
    """The checked header and index of a pack container read from ``fd``."""

    def __init__(self, fd: int, path: str) -> None:
        size = os.fstat(fd).st_size
        self.file_size = size
        self.head = _pread_exact(fd, PACK_HEADER.size, 0, path) if size >= PACK_HEADER.size else b""
        self.count, index_len, index_sum = parse_pack_header(self.head, size)
        self.index = _pread_exact(fd, index_len, PACK_HEADER.size, path)
        if _xxh3_64(self.index) != index_sum:
            raise BundleFormatError("index checksum mismatch")
        self.data_start = PACK_HEADER.size + index_len

    def entries(self) -> list[IndexEntry]:
        """Every record, checked in unpack's order: (name, method, raw size,
        stored size, checksum, data offset)."""
        return parse_index(self.index, self.count, self.file_size, packing.DEFAULT_MAX_ENTRY,
                           packing.DEFAULT_MAX_TOTAL)


def _read_entry(fd: int, path: str, name: str, method: int, raw: int, stored: int, checksum: int,
                offset: int) -> bytes:
    """One entry's contents, decompressed and checked against its XXH3-64."""
    return unpack_entry(_pread_exact(fd, stored, offset, path), name, method, raw, checksum)


class _Index:
    """The lookup index: columns over one buffer (see the module docstring)."""

    def __init__(self, meta: dict[str, Any], blobs: Sequence[int], kernels: Sequence[int], files: Sequence[int],
                 hashes: bytes, names: bytes) -> None:
        self.meta = meta
        self.blobs, self.kernels, self.files = blobs, kernels, files
        self.hashes, self.names = hashes, names
        hash_list = hashes.decode("ascii").split("\n") if hashes else []
        self.where = dict(zip(hash_list, range(len(hash_list))))
        self.order = hash_list

    # -- building ------------------------------------------------------------
    @classmethod
    def build(cls, fd: int, path: str, box: _Container) -> "_Index":
        entries = box.entries()
        names = []
        for i, e in enumerate(entries):
            try:
                names.append(e[0].decode("utf-8"))
            except UnicodeDecodeError:
                raise BundleFormatError(f"entry {i}: name is not valid UTF-8") from None
        if len(names) < 2 or names[0] != HEADER_NAME or names[1] != KERNELS_NAME:
            raise BundleFormatError(
                f"not a kernel bundle: the container does not start with {HEADER_NAME} and {KERNELS_NAME}")
        header_raw = _read_entry(fd, path, names[0], *entries[0][1:])
        kernels_raw = _read_entry(fd, path, names[1], *entries[1][1:])
        header = parse_header(header_raw)
        sizes = header["blobs"]
        if names[2:] != [f"{BLOB_PREFIX}{i}" for i in range(len(sizes))]:
            raise BundleFormatError(
                f"bad bundle: entries {names[2:10]} do not match the {len(sizes)} blobs the header lists")
        for i, (want, e) in enumerate(zip(sizes, entries[2:])):
            if e[2] != want:
                raise BundleFormatError(f"bad bundle: blob {i} holds {e[2]} bytes, the header says {want}")
        kernels, (fnames, blob_of, offs, fsizes) = parse_kernels(kernels_raw, sizes)
        targets = sorted({k["target"] for k in kernels if k["target"]})
        if header["targets"] != targets:
            raise BundleFormatError(
                f"bad bundle: header targets {header['targets']} differ from the kernels' targets {targets}")
        meta = {k: header.get(k) for k in ("content_digest", "triton_version", "triton_abi",
                                            "pyruntime_version", "targets")}
        blobs: list[int] = []
        for _name, method, raw, stored, checksum, offset in entries[2:]:
            blobs += (offset, stored, raw, checksum, method)
        kcols: list[int] = []
        first = 0
        for k in kernels:
            kcols += (first, len(k["files"]))
            first += len(k["files"])
        encoded = [n.encode("utf-8") for n in fnames]
        fcols: list[int] = []
        end = 0
        for b, o, s, n in zip(blob_of, offs, fsizes, encoded):
            end += len(n)
            fcols += (b, o, s, end)
        return cls(meta, blobs, kcols, fcols, "\n".join(k["hash"] for k in kernels).encode("ascii"),
                   b"".join(encoded))

    # -- the index file ------------------------------------------------------
    def to_bytes(self, pack_head: bytes) -> bytes:
        meta = json.dumps(self.meta, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        cols = struct.pack(f"<{len(self.blobs) + len(self.kernels) + len(self.files)}Q",
                           *self.blobs, *self.kernels, *self.files)
        body = b"".join((meta, cols, self.hashes, self.names))
        head = _PRTI_HEAD.pack(_PRTI_MAGIC, _PRTI_VERSION, 0, len(self.kernels) // 2, len(self.files) // 4,
                               len(self.blobs) // _BLOB_COLS, len(meta), len(body), _xxh3_64(body), pack_head)
        return head + body

    @classmethod
    def from_bytes(cls, data: bytes, pack_head: bytes) -> "_Index | None":
        """The index in ``data`` when it is whole and was built from the
        bundle whose pack header is ``pack_head``; else ``None``."""
        if len(data) < _PRTI_HEAD.size or not _LITTLE:
            return None
        magic, version, flags, nk, nf, nb, meta_len, body_len, body_sum, head = _PRTI_HEAD.unpack_from(data)
        body = memoryview(data)[_PRTI_HEAD.size:]
        if (magic, version, flags, head) != (_PRTI_MAGIC, _PRTI_VERSION, 0, pack_head) \
                or len(body) != body_len or _xxh3_64(body) != body_sum:
            return None
        try:
            cols_end = meta_len + 8 * (nb * _BLOB_COLS + 2 * nk + 4 * nf)
            meta = json.loads(bytes(body[:meta_len]))
            cols = body[meta_len:cols_end].cast("Q")
            blobs = cols[:nb * _BLOB_COLS]
            kernels = cols[nb * _BLOB_COLS:nb * _BLOB_COLS + 2 * nk]
            files = cols[nb * _BLOB_COLS + 2 * nk:]
            names_len = files[-1] if nf else 0
            hashes = bytes(body[cols_end:body_len - names_len])
            names = bytes(body[body_len - names_len:])
            index = cls(meta, blobs, kernels, files, hashes, names)
        except (ValueError, TypeError, IndexError, UnicodeDecodeError):
            return None
        return index if len(index.order) == nk and isinstance(meta, dict) else None


class LazyBundle:
    """A bundle file opened for per-kernel reads (see the module docstring).

    ``index_dir``: where lookup indexes are kept (created on demand); None
    keeps the index in memory only, so every open parses the kernel table.
    The open file is kept until :meth:`close`; it is safe to share across
    threads and forked processes (reads are ``pread``)."""

    def __init__(self, path: str, fd: int, index: _Index, index_built: bool) -> None:
        self.path = path
        self._fd = fd
        self._index = index
        #: whether this open had to build the lookup index (no valid one was kept)
        self.index_built = index_built
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, index_dir: str | os.PathLike[str] | None = None) -> "LazyBundle":
        """Open ``path``; raises :class:`BundleFormatError` naming the file
        and the problem, :class:`OSError` when it cannot be read."""
        path = os.fspath(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                box = _Container(fd, path)
                index, built = cls._index_for(fd, path, box, index_dir)
            except BundleFormatError as e:
                raise BundleFormatError(f"{path}: {e}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, index, built)

    @staticmethod
    def _index_for(fd: int, path: str, box: _Container,
                   index_dir: str | os.PathLike[str] | None) -> tuple[_Index, bool]:
        ipath = None
        if index_dir is not None:
            ipath = os.path.join(os.fspath(index_dir), core.backend.hash_bytes(box.head) + INDEX_SUFFIX)
            try:
                with open(ipath, "rb") as f:
                    found = _Index.from_bytes(f.read(), box.head)
            except OSError:
                found = None
            if found is not None:
                return found, False
        index = _Index.build(fd, path, box)
        if ipath is not None and _LITTLE:
            try:
                os.makedirs(os.path.dirname(ipath), exist_ok=True)
                write_atomic(ipath, index.to_bytes(box.head))
            except OSError:
                pass  # a read-only place: the next open builds it again
        return index, True

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "LazyBundle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass

    # -- information ---------------------------------------------------------
    @property
    def content_digest(self) -> str:
        """The digest the header declares (not recomputed: see the module docstring)."""
        return self._index.meta["content_digest"]

    @property
    def triton_version(self) -> str | None:
        return self._index.meta.get("triton_version")

    @property
    def triton_abi(self) -> str | None:
        return self._index.meta.get("triton_abi")

    @property
    def kernel_hashes(self) -> list[str]:
        return list(self._index.order)

    def __len__(self) -> int:
        return len(self._index.order)

    def __contains__(self, kernel_hash: object) -> bool:
        return kernel_hash in self._index.where

    def __repr__(self) -> str:
        return f"<LazyBundle {self.path} {len(self)} kernels>"

    # -- one kernel ----------------------------------------------------------
    def kernel_table(self, kernel_hash: str) -> FileTable:
        """The files of one kernel, its blob(s) read, decompressed and
        checked: a table of ``(blob, name, offset, size)`` over them."""
        ix = self._index
        k = ix.where.get(kernel_hash)
        if k is None:
            raise KeyError(kernel_hash)
        if self._fd < 0:
            raise ValueError(f"{self.path}: the bundle is closed")
        first, count = ix.kernels[2 * k], ix.kernels[2 * k + 1]
        rows = [ix.files[4 * i:4 * i + 4] for i in range(first, first + count)]
        name_start = ix.files[4 * first - 1] if first else 0
        names, local, blobs = [], {}, []
        for b, _off, _size, name_end in rows:
            names.append(ix.names[name_start:name_end].decode("utf-8"))
            name_start = name_end
            if b not in local:
                local[b] = len(blobs)
                offset, stored, raw, checksum, method = ix.blobs[_BLOB_COLS * b:_BLOB_COLS * b + _BLOB_COLS]
                try:
                    blobs.append(_read_entry(self._fd, self.path, f"{BLOB_PREFIX}{b}", method, raw, stored,
                                             checksum, offset))
                except BundleFormatError as e:
                    raise BundleFormatError(f"{self.path}: kernel {kernel_hash}: {e}") from None
        return FileTable(blobs, names, [local[r[0]] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    def materialize(self, kernel_hash: str, cache_dir: str | os.PathLike[str], *,
                    fsync: bool | None = None) -> bool:
        """Write kernel ``kernel_hash`` into ``cache_dir`` (atomically: a
        ``tmp.pid_*`` directory renamed onto ``<cache_dir>/<hash>``) unless
        a directory with files in it is there already. Returns whether this
        call wrote it. :class:`KeyError` when the bundle has no such kernel."""
        check_kernel_hash(kernel_hash)
        root = os.fspath(cache_dir)
        final = os.path.join(root, kernel_hash)
        if kernel_present(final):
            return False
        # a path held by a file, FIFO or symlink is replaced as restore does
        # (PYRUNTIME_RESTORE_ON_CONFLICT), never followed and never "present"
        replace = conflict_policy(None) == "replace"
        table = self.kernel_table(kernel_hash)
        os.makedirs(root, exist_ok=True)
        do_fsync = _env.fsync_enabled() if fsync is None else bool(fsync)
        # the restore's name pattern: its writer holds an flock on it, which
        # is what tells cleaners it is in use
        tmp = restore_tmp_name(os.getpid(), os.urandom(6).hex(), 0)
        job = (tmp, kernel_hash, 0, len(table.names))
        swap = sentinel_swap(root)
        check_sentinel_growth(table, [job], {root: len(swap[1])})  # restore's cap, before any write
        # One kernel on the caller's thread: the pure-Python writer (the C
        # core's twin, same bytes) costs what the C one does here and starts
        # no worker pool, whose threads a lookup has no use for.
        done = twin.write_kernels(root, table, [job], 1, do_fsync, swap, replace=replace)
        return done[0][0] in _LANDED
