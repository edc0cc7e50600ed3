"""The bundle file: compiled Triton kernels as data only (never pickle).

A bundle file is one pack container (:mod:`pyruntime.packing`: LZ4 blocks,
XXH3 checksums, plain entry names) holding, in this order,

* ``header.json``: format name and version, the Triton version that built
  the kernels, the targets, the pyruntime version that wrote the file, the
  content digest, the blob sizes and, optionally, ``triton_abi``: the ABI
  tag of the Python that collected the kernels (``"cpython-312-x86_64-linux-gnu"``);
  Triton's cache keys depend on the exact Triton wheel, which differs per
  Python version, so :func:`pyruntime.bundle.restore.restore` checks it. It is
  written only when known and a header without it reads as "unknown", so
  files written before it existed still read (format version stays 1);
* ``kernels.json``: the kernel table; each kernel's hash, device, target and
  Triton version, and each of its files as ``[name, blob, offset, size]``;
* ``blob.0``, ``blob.1``, ...: one per kernel, in kernel-table order, its
  files back to back.

Why one blob per kernel instead of one pack entry per file: LZ4 compresses
each entry on its own, and a Triton kernel's files are small and resemble
each other (the ``.ttir``, ``.ttgir``, ``.llir`` and ``.ptx`` of one kernel
share names and constants), so one block per kernel compresses better and
packs and unpacks faster (one block, one checksum per kernel). One blob per
kernel (rather than one for the whole bundle) lets a kernel be packed as
soon as it is compiled (:meth:`pyruntime.bundle.collect.TritonBundler.put`), so
a collect at the end of a compile only assembles blocks, and lets blobs be
unpacked on several threads. Within a blob, files are laid out by extension
(``.json``, ``.source``, ``.ttir``, ``.ttgir``, ``.llir``, ``.ptx``, binaries,
then the rest). Readers do not depend on this layout: any table whose file
ranges tile the blobs exactly reads the same (files written by pyruntime
0.1.0 group the files of all kernels by extension).

Reading verifies everything before it returns: the container's checksums,
the entry names, the header, the content digest (which covers the kernel
table and every blob), the kernel table's schema, that every kernel hash and
file name is a plain name (no path traversal), that no kernel or file
appears twice, and that the file ranges tile each blob exactly (the
common case of those table checks in one call of the C core,
``csrc/bundle_table.c``; anything it does not call plain is checked item by
item, which names the problem). The blobs are unpacked on the C worker pool
meanwhile. The kernel and artifact objects are built on first use of
``kernel_artifacts``: a load+restore needs none. The byte layout is in
docs/FORMAT.md, "Bundle file".
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

from .. import config as _env
from .. import core, packing
from .._atomic import write_atomic
from .._version import __version__
from ..core.twin import PACK_MAGIC, FileTable, PackedEntry
from ..errors import BundleFormatError
from ..hashing import hash_bytes
from .model import (
    KERNEL,
    Buffer,
    KernelRow,
    TritonBundle,
    TritonKernelArtifacts,
    check_bundle,
    is_checked,
)
from .rules import (
    MAX_BUNDLE_BYTES,
    MAX_EXPANSION,
    MAX_DEVICE,
    MAX_HEADER_BYTES,
    MAX_RAW_BYTES,
    MAX_TABLE_BYTES,
    MAX_TARGETS,
    check_abi,
    check_file_name,
    check_kernel_hash,
    check_kind,
    check_platform,
    check_target,
    check_version,
    shown,
    table_is_plain,
)

FORMAT_NAME = "pyruntime-triton-bundle"
FORMAT_VERSION = 1
HEADER_NAME = "header.json"
KERNELS_NAME = "kernels.json"
BLOB_PREFIX = "blob."

_HEADER_KEYS = frozenset(
    {"format", "format_version", "pyruntime_version", "triton_version", "targets", "content_digest", "blobs"}
)
# Optional header keys: absent means unknown (files written before them).
_OPTIONAL_HEADER_KEYS = frozenset({"triton_abi"})
_KERNEL_KEYS = frozenset({"hash", "device", "target", "triton_version", "files"})
# Optional kernel keys, written only when not their default (so a bundle of
# plain kernels is byte for byte what earlier versions wrote): kind ("kernel"
# or "host"), the Python ABI tag and the platform an entry was built for.
_OPTIONAL_KERNEL_KEYS = frozenset({"kind", "triton_abi", "platform"})
_DIGEST_DOMAIN = b"pyruntime-triton-bundle/1\n"

# Extensions in the order their files are laid out; the rest follow, sorted.
_EXT_ORDER = {e: i for i, e in enumerate(
    (".json", ".source", ".ttir", ".ttgir", ".llir", ".ptx", ".amdgcn", ".cubin", ".hsaco", ".spv", ".zebin")
)}


def digest_of(kernels_json: Buffer, blob_digests: list[str]) -> str:
    """XXH3-128 (hex) of ``"pyruntime-triton-bundle/1\\n"``, the
    ``kernels.json`` bytes, ``"\\n"`` and the XXH3-128 hex digest of each
    blob in order: it covers every byte of the bundle and where it belongs."""
    return hash_bytes(b"".join((_DIGEST_DOMAIN, bytes(kernels_json), b"\n", "".join(blob_digests).encode("ascii"))))


def content_digest(kernels_json: Buffer, blobs: list[Buffer]) -> str:
    """:func:`digest_of` with the blobs' digests computed here."""
    return digest_of(kernels_json, [hash_bytes(b) for b in blobs])


# --------------------------------------------------------------------------
# writing


def kernel_layout(files: list[tuple[str, int]]) -> tuple[list[int], int]:
    """Where each file of one kernel goes in its blob: ``files`` lists
    ``(name, size)``; returns each file's offset and the blob size. Files are
    ordered by extension (:data:`_EXT_ORDER`, then others sorted), ties in
    the given order."""
    last = len(_EXT_ORDER)
    order = []
    for i, (name, _size) in enumerate(files):
        ext = os.path.splitext(name)[1]
        order.append((_EXT_ORDER.get(ext, last), ext, i))
    order.sort()
    offsets = [0] * len(files)
    used = 0
    for _, _, i in order:
        offsets[i] = used
        used += files[i][1]
    return offsets, used


def pack_kernel(kernel: TritonKernelArtifacts) -> tuple[list[int], PackedEntry]:
    """A kernel's blob, packed: the file offsets (in artifact order) and the
    pack entry."""
    arts = kernel.artifacts
    offsets, size = kernel_layout([(a.filename, len(a.payload)) for a in arts])
    blob = bytearray(size)
    for off, a in zip(offsets, arts):
        blob[off:off + len(a.payload)] = a.payload
    return offsets, core.backend.pack_entry(blob, _env.bundle_level())


def _untouched_collect(bundle: TritonBundle) -> tuple[list[list[int]], list[PackedEntry], list[bytes]] | None:
    """The file offsets, packed blob and table record of each kernel of a
    bundle fresh from a collect (its kernels were packed as they were read),
    while it is unchanged; else ``None``."""
    if bundle._packed is None or not is_checked(bundle):
        return None
    return bundle._packed


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# Stands for the blob index in a table record: a NUL in a JSON string,
# which no checked name, version or target holds.
_BLOB_MARK = b'"\\u0000"'


def table_record(kernel: TritonKernelArtifacts, offsets: list[int]) -> bytes:
    """``kernel``'s record in ``kernels.json`` as compact JSON, its files
    at ``offsets`` in a blob whose index is left as :data:`_BLOB_MARK`.
    Built once per kernel, by collect's packing threads."""
    return _json_bytes({
        "hash": kernel.kernel_hash,
        "device": kernel.device,
        "target": kernel.target,
        "triton_version": kernel.triton_version,
        "files": [[a.filename, "\0", off, len(a.payload)] for a, off in zip(kernel.artifacts, offsets)],
        **_optional_fields(kernel),
    })


def _optional_fields(kernel: TritonKernelArtifacts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if kernel.kind != KERNEL:
        out["kind"] = kernel.kind
    if kernel.triton_abi is not None:
        out["triton_abi"] = kernel.triton_abi
    if kernel.platform is not None:
        out["platform"] = kernel.platform
    return out


def _has_kernel_keys(k: dict[str, Any]) -> bool:
    keys = k.keys()
    return keys == _KERNEL_KEYS or (keys >= _KERNEL_KEYS and keys - _KERNEL_KEYS <= _OPTIONAL_KERNEL_KEYS)


def _check_optional(k: dict[str, Any], h: str) -> None:
    check_kind(k.get("kind", KERNEL), h)
    check_abi(k.get("triton_abi"))
    check_platform(k.get("platform"))


def encode_parts(bundle: TritonBundle) -> list[Buffer]:
    """The bundle file as pieces to write back to back: the container's
    header and index, then the packed entries (the kernel blobs as packed,
    not copied into one buffer)."""
    packed = _untouched_collect(bundle)
    if packed is None:
        check_bundle(bundle)
        done = [pack_kernel(k) for k in bundle.kernel_artifacts]
        records = [table_record(k, offs) for k, (offs, _) in zip(bundle.kernel_artifacts, done)]
        packed = [d[0] for d in done], [d[1] for d in done], records
    _, blobs, records = packed
    # the kernel table, each record's blob index filled in: the bytes of
    # _json_bytes(the list of records), without encoding it all again here
    kernels_json = b"[" + b",".join(r.replace(_BLOB_MARK, b"%d" % i) for i, r in enumerate(records)) + b"]"
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "pyruntime_version": __version__,
        "triton_version": bundle.triton_version,
        "targets": bundle.targets,
        "content_digest": digest_of(kernels_json, [b.digest for b in blobs]),
        "blobs": [b.raw_size for b in blobs],
    }
    if bundle.triton_abi is not None:
        # omitted when unknown, so such a file is byte for byte what older
        # pyruntime versions wrote and read
        header["triton_abi"] = bundle.triton_abi
    pack_entry = core.backend.pack_entry
    entries: list[tuple[bytes, PackedEntry]] = [
        (HEADER_NAME.encode(), pack_entry(_json_bytes(header))),
        (KERNELS_NAME.encode(), pack_entry(kernels_json)),
    ]
    entries += [(f"{BLOB_PREFIX}{i}".encode(), b) for i, b in enumerate(blobs)]
    return [core.backend.pack_stored(entries, head_only=True), *(e.stored for _, e in entries)]


def encode(bundle: TritonBundle) -> bytes:
    """The bundle file's bytes."""
    return b"".join(encode_parts(bundle))


def save(bundle: TritonBundle, path: str | os.PathLike[str]) -> int:
    """Write ``bundle`` to ``path``; returns the file size.

    The bytes go to a temporary file next to ``path`` that is renamed onto
    it, so ``path`` never holds a partial bundle. An existing ``path`` is
    unlinked just before the rename (see :func:`pyruntime._atomic.write_atomic`)."""
    parts = encode_parts(bundle)
    write_atomic(path, parts, unlink_first=True)
    return sum(len(p) for p in parts)


# --------------------------------------------------------------------------
# reading


def _fail(msg: str) -> BundleFormatError:
    return BundleFormatError(f"bad bundle: {msg}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()  # one pass: the first key seen twice
        for k, _ in pairs:
            if k in seen:
                raise _fail(f"key {shown(k)} appears twice in one object")
            seen.add(k)
    return out


def _some(names: Any) -> str:
    """A few of ``names`` for a message, and how many there are."""
    items = sorted(names) if not isinstance(names, list) else names
    head = ", ".join(shown(n) for n in items[:5])
    return f"[{head}{f', ... ({len(items)} in all)' if len(items) > 5 else ''}]"


def _is_uint(v: Any) -> bool:
    return type(v) is int and v >= 0


def _is_device(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_DEVICE


# one decoder for every parse: json.loads with a hook builds a new one per call
_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


def _parse_json(raw: Buffer, what: str) -> Any:
    try:
        return _JSON.decode(str(raw, "utf-8"))
    except BundleFormatError:
        raise
    except (ValueError, RecursionError) as e:
        raise _fail(f"{what} is not valid JSON ({e})") from None


def parse_header(raw: Buffer) -> dict[str, Any]:
    """Parse and check ``header.json``."""
    man = _parse_json(raw, HEADER_NAME)
    if not isinstance(man, dict):
        raise _fail(f"{HEADER_NAME} is not a JSON object")
    if man.get("format") != FORMAT_NAME:
        raise BundleFormatError(f"not a kernel bundle: format is {shown(man.get('format'))}, expected {FORMAT_NAME!r}")
    version = man.get("format_version")
    if not _is_uint(version):
        raise _fail("format_version is not an integer")
    if version != FORMAT_VERSION:
        raise BundleFormatError(
            f"bundle format version {shown(version)} is not supported (this pyruntime reads version {FORMAT_VERSION})"
        )
    extra = set(man) - _HEADER_KEYS - _OPTIONAL_HEADER_KEYS
    missing = _HEADER_KEYS - set(man)
    if extra or missing:
        raise _fail(f"{HEADER_NAME}: unexpected keys {_some(extra)}" if extra
                    else f"{HEADER_NAME}: missing keys {_some(missing)}")
    check_version(man["pyruntime_version"], "pyruntime_version")
    check_version(man["triton_version"], "triton_version")
    try:
        check_abi(man.get("triton_abi"))
    except BundleFormatError as e:
        raise _fail(str(e)) from None
    digest = man["content_digest"]
    if not (isinstance(digest, str) and len(digest) == 32 and all(c in "0123456789abcdef" for c in digest)):
        raise _fail("content_digest is not 32 lowercase hex digits")
    targets = man["targets"]
    if isinstance(targets, list) and len(targets) > MAX_TARGETS:
        raise _fail(f"header lists {len(targets)} targets, over the limit of {MAX_TARGETS}")
    if not isinstance(targets, list) or any(check_target(t) is None for t in targets):
        raise _fail("targets is not a list of target strings")
    blobs = man["blobs"]
    if not isinstance(blobs, list) or not all(_is_uint(b) for b in blobs):
        raise _fail("blobs is not a list of sizes")
    return man


#: The files of a kernel table as columns: names, blob indexes, offsets, sizes.
Columns = tuple[list[str], list[int], list[int], list[int]]


def _check_kernels(kernels: list[Any]) -> None:
    """Check each kernel and file in turn: raises naming the first problem."""
    seen_hashes: set[str] = set()
    for i, k in enumerate(kernels):
        if not isinstance(k, dict) or not _has_kernel_keys(k):
            raise _fail(f"kernel {i} is not an object with keys {sorted(_KERNEL_KEYS)} "
                        f"(and optionally {sorted(_OPTIONAL_KERNEL_KEYS)})")
        h = check_kernel_hash(k["hash"])
        if h in seen_hashes:
            raise _fail(f"kernel {h} appears twice")
        seen_hashes.add(h)
        if not _is_device(k["device"]):
            raise _fail(f"kernel {h}: device {shown(k['device'])} is not an integer from 0 to {MAX_DEVICE}")
        check_target(k["target"])
        check_version(k["triton_version"], f"kernel {h}: triton_version")
        _check_optional(k, h)
        files = k["files"]
        if not isinstance(files, list):
            raise _fail(f"kernel {h}: files is not a list")
        names = set()
        for f in files:
            if not (type(f) is list and len(f) == 4 and all(_is_uint(v) for v in f[1:])):
                raise _fail(f"kernel {h}: a file is not [name, blob, offset, size]")
            names.add(check_file_name(f[0], h))
        if len(names) != len(files):
            raise _fail(f"kernel {h}: a file name appears twice")


def _columns_if_plain(kernels: list[Any], blob_lens: list[int]) -> Columns | None:
    """The file columns when every check of :func:`_check_kernels` and
    :func:`_check_tiling` passes on the common case (plain ASCII names):
    the fields of each kernel here, the names, numbers and ranges in one
    call of the backend (``table_is_plain``) instead of a few calls per
    file. ``None`` means: check one by one. The caller made sure the table
    holds no JSON boolean (``True`` would pass as the integer 1)."""
    try:
        for k in kernels:
            if type(k) is not dict or not _has_kernel_keys(k) or type(k["files"]) is not list \
                    or not _is_device(k["device"]):
                return None
            check_target(k["target"])
            if len(k) > len(_KERNEL_KEYS):
                _check_optional(k, "?")
            check_version(k["triton_version"], "triton_version")
        files = [f for k in kernels for f in k["files"]]
        if files:
            if {type(f) for f in files} != {list} or set(map(len, files)) != {4}:
                return None
            names, blob_of, offs, sizes = map(list, zip(*files))
        else:
            names, blob_of, offs, sizes = [], [], [], []
        if not table_is_plain([k["hash"] for k in kernels], [len(k["files"]) for k in kernels],
                                             names, blob_of + offs + sizes, blob_lens):
            return None
    except BundleFormatError:
        return None
    return names, blob_of, offs, sizes


def parse_kernels(raw: Buffer, blob_lens: list[int]) -> tuple[list[dict[str, Any]], Columns]:
    """Parse and check ``kernels.json`` against blobs of ``blob_lens``
    bytes: every hash and file name is a plain name, no kernel or file
    appears twice, the files tile the blobs. Returns the kernels and their
    files as columns."""
    kernels = _parse_json(raw, KERNELS_NAME)
    if not isinstance(kernels, list):
        raise _fail(f"{KERNELS_NAME} is not a list")
    text = bytes(raw)
    columns = None if b"true" in text or b"false" in text else _columns_if_plain(kernels, blob_lens)
    if columns is None:
        _check_kernels(kernels)  # raises, or passes names beyond plain ASCII
        files = [f for k in kernels for f in k["files"]]
        columns = tuple(map(list, zip(*files))) if files else ([], [], [], [])  # type: ignore[assignment]
        _check_tiling(kernels, columns, blob_lens)
    return kernels, columns  # type: ignore[return-value]


def _check_tiling(kernels: list[dict[str, Any]], columns: Columns, blob_lens: list[int]) -> None:
    """Every byte of every blob belongs to exactly one file: the ranges,
    sorted, must tile each blob with no gap or overlap."""
    _, blob_of, offs, sizes = columns
    pos = [0] * len(blob_lens)
    for blob, off, size, i in sorted(zip(blob_of, offs, sizes, range(len(offs)))):
        if blob >= len(blob_lens) or off != pos[blob]:
            h, name = _file_at(kernels, i)
            if blob >= len(blob_lens):
                raise _fail(f"kernel {h}: file {shown(name)} points at blob {blob}, which does not exist")
            kind = "overlaps another file" if off < pos[blob] else "leaves a gap before it"
            raise _fail(f"kernel {h}: file {shown(name)} at blob {blob} offset {off} {kind}")
        pos[blob] = off + size
    for i, (end, size) in enumerate(zip(pos, blob_lens)):
        if end != size:
            raise _fail(f"blob {i}: files cover {end} of its {size} bytes")


def _file_at(kernels: list[dict[str, Any]], i: int) -> tuple[str, str]:
    """(kernel hash, file name) of the i-th file of the table."""
    for k in kernels:
        if i < len(k["files"]):
            return k["hash"], k["files"][i][0]
        i -= len(k["files"])
    raise IndexError(i)


def _entry_names(raw: list[bytes]) -> list[str]:
    names = []
    for i, name in enumerate(raw):
        try:
            names.append(name.decode("utf-8"))
        except UnicodeDecodeError:
            raise BundleFormatError(f"entry {i}: name is not valid UTF-8") from None
    return names


def decode(data: Buffer) -> TritonBundle:
    """Verify ``data`` completely, then build the :class:`TritonBundle`.
    Payloads are read-only views into the unpacked blobs (no copies)."""
    limit = raw_limit(len(data))
    try:
        u = core.backend.unpack_begin(data, packing.DEFAULT_MAX_ENTRY, limit)
        names = _entry_names(u.names)
    except BundleFormatError as e:
        why = f" (unpacked bytes may be at most {MAX_EXPANSION}x the file's size)" if str(limit) in str(e) else ""
        raise BundleFormatError(f"bad bundle container: {e}{why}") from None
    if len(names) < 2 or names[0] != HEADER_NAME or names[1] != KERNELS_NAME:
        raise BundleFormatError(
            f"not a kernel bundle: the container does not start with {HEADER_NAME} and {KERNELS_NAME}"
        )
    # the two JSON entries' sizes, before either is unpacked or parsed
    for view, name, limit in ((u.views[0], HEADER_NAME, MAX_HEADER_BYTES), (u.views[1], KERNELS_NAME, MAX_TABLE_BYTES)):
        if len(view) > limit:
            raise _fail(f"{name} unpacks to {len(view)} bytes, over the {limit}-byte limit")
    head = 2
    try:
        u.run(0, head, 1)
    except BundleFormatError as e:
        raise BundleFormatError(f"bad bundle container: {e}") from None
    # The blobs are decompressed and verified on the C worker pool while Python
    # checks the kernel table and builds the bundle around views of where
    # they land. Nothing is returned before every blob is verified, and a
    # damaged container is the error even when the table is bad too, as if
    # it had all been unpacked first.
    u.start(head, len(names) - head, _env.io_threads())
    try:
        bundle, kernels_raw = _build(u, names)
    finally:
        try:
            u.finish()
        except BundleFormatError as e:
            raise BundleFormatError(f"bad bundle container: {e}") from None
    if digest_of(kernels_raw, u.digests()[2:]) != bundle.content_digest:
        raise BundleFormatError("bundle content digest mismatch: the header does not describe these bytes")
    return bundle


def _build(u: Any, names: list[str]) -> tuple[TritonBundle, memoryview]:
    """Check the header and kernel table against the container and build
    the bundle (the blobs need not be unpacked yet: only their sizes and
    places are used). Returns it and the raw kernel table for the digest."""
    header = parse_header(u.views[0])
    kernels_raw = u.views[1]
    blobs = u.views[2:]
    if len(names) - 2 != len(header["blobs"]) or names[2:] != [f"{BLOB_PREFIX}{i}" for i in range(len(names) - 2)]:
        raise _fail(f"entries {_some(names[2:])} do not match the {len(header['blobs'])} blobs the header lists")
    for i, (want, blob) in enumerate(zip(header["blobs"], blobs)):
        if len(blob) != want:
            raise _fail(f"blob {i} holds {len(blob)} bytes, the header says {want}")
    kernels, columns = parse_kernels(kernels_raw, header["blobs"])
    targets = sorted({k["target"] for k in kernels if k["target"]})
    if header["targets"] != targets:
        raise _fail(f"header targets {_some(header['targets'])} differ from the kernels' targets {_some(targets)}")

    # the kernel and artifact objects are built on first use (model.KernelRow)
    bundle = TritonBundle(None, header["triton_version"], header["pyruntime_version"],  # type: ignore[arg-type]
                          header["content_digest"], triton_abi=header.get("triton_abi"))
    object.__setattr__(bundle, "_rows", [KernelRow(k["hash"], k["device"], k["target"], k["triton_version"],
                                                   len(k["files"]), k.get("kind", KERNEL), k.get("triton_abi"),
                                                   k.get("platform")) for k in kernels])
    object.__setattr__(bundle, "_table", FileTable(blobs, *columns))
    return bundle, kernels_raw


def raw_limit(file_size: int) -> int:
    """The most unpacked bytes a bundle file of ``file_size`` bytes may
    declare (:data:`~pyruntime.bundle.rules.MAX_EXPANSION` times its size,
    at most :data:`~pyruntime.bundle.rules.MAX_RAW_BYTES`)."""
    return min(MAX_RAW_BYTES, MAX_EXPANSION * file_size + MAX_HEADER_BYTES)


def read_file(path: str | os.PathLike[str]) -> bytearray:
    """The bytes of the bundle file at ``path``: only a regular file (a
    symlink to one is followed), its size checked against
    :data:`~pyruntime.bundle.rules.MAX_BUNDLE_BYTES` and its first bytes
    against the container's magic before the rest is read. Raises
    :class:`BundleFormatError` for anything that is not
    a bundle, :class:`OSError` when it cannot be read."""
    where = os.fspath(path)
    fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    with open(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleFormatError(f"not a regular file ({_file_kind(st.st_mode)}), so not a bundle")
        if st.st_size > MAX_BUNDLE_BYTES:
            raise BundleFormatError(f"{st.st_size} bytes, over the {MAX_BUNDLE_BYTES}-byte bundle limit")
        head = f.read(len(PACK_MAGIC))
        if head != PACK_MAGIC:
            raise BundleFormatError("not a bundle: bad magic (a bundle starts with the pack container's b'PRTP')")
        data = bytearray(st.st_size + 1)  # one byte more: a file that grew meanwhile is refused
        data[:len(head)] = head
        view = memoryview(data)
        got = len(head)
        while got < len(data):
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
        view.release()
        if got != st.st_size:
            raise BundleFormatError("changed size while it was read")
        del data[got:]
        return data


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def load(path: str | os.PathLike[str]) -> TritonBundle:
    """Read and verify the bundle file at ``path``; a
    :class:`BundleFormatError` names the file and the problem."""
    try:
        return decode(read_file(path))
    except BundleFormatError as e:
        raise BundleFormatError(f"{os.fspath(path)}: {e}") from None
    except (MemoryError, RecursionError) as e:
        raise BundleFormatError(f"{os.fspath(path)}: {exhausted(e)}") from None
    except OSError as e:
        if e.errno != errno.ENOMEM:
            raise
        raise BundleFormatError(f"{os.fspath(path)}: {exhausted(e)}") from None


def exhausted(e: BaseException) -> str:
    """A bundle that ran this process out of memory (``MemoryError``, or an
    ``ENOMEM`` from the kernel) or stack while being verified, in one line
    (the limits keep a valid bundle far from both)."""
    what = "stack" if isinstance(e, RecursionError) else "memory"
    return f"out of {what} while verifying it (refused)"


def describe(data: Buffer) -> dict[str, Any]:
    """Header, per-kernel rows and sizes of verified bundle bytes, for
    ``bundle inspect``: the bundle is fully verified first."""
    bundle = decode(data)
    raw = bundle.size
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "pyruntime_version": bundle.pyruntime_version,
        "triton_version": bundle.triton_version,
        "triton_abi": bundle.triton_abi,
        "targets": bundle.targets,
        "content_digest": bundle.content_digest,
        "file_size": len(data),
        "raw_size": raw,
        "compression_ratio": (raw / len(data)) if len(data) else 0.0,
        "kernels": [
            {
                "hash": k.kernel_hash,
                "names": k.kernel_names(),
                "device": k.device,
                "target": k.target,
                "triton_version": k.triton_version,
                "kind": k.kind,
                "triton_abi": k.triton_abi or bundle.triton_abi,
                "platform": k.platform,
                "files": len(k.artifacts),
                "size": k.size,
            }
            for k in bundle.kernel_artifacts
        ],
    }


def load_bundle(path: str | os.PathLike[str]) -> TritonBundle:
    """Read and verify a bundle file (:meth:`TritonBundle.load`)."""
    return load(path)
