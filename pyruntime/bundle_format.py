"""The bundle file: compiled Triton kernels as data only (never pickle).

A bundle file is one pack container (:mod:`pyruntime.packing`: LZ4 blocks,
XXH3 checksums, plain entry names) holding, in this order,

* ``header.json``: format name and version, the Triton version that built
  the kernels, the targets, the pyruntime version that wrote the file, the
  content digest, the blob sizes and, optionally, ``triton_abi``: the ABI
  tag of the Python that collected the kernels (``"cpython-312-x86_64-linux-gnu"``);
  Triton's cache keys depend on the exact Triton wheel, which differs per
  Python version, so :func:`pyruntime.cache.restore` checks it. It is
  written only when known and a header without it reads as "unknown", so
  files written before it existed still read (format version stays 1);
* ``kernels.json``: the kernel table; each kernel's hash, device, target and
  Triton version, and each of its files as ``[name, blob, offset, size]``;
* ``blob.0``, ``blob.1``, ...: the kernel files back to back.

Why blobs instead of one pack entry per file: LZ4 compresses each entry on
its own, and a Triton kernel's files are small and resemble the same file
of the next kernel. Files are laid out grouped by extension (every ``.json``
together, then every ``.source``, ``.ttir``, ...), so LZ4's 64 KiB window
sees the repetition between kernels; on a cache of small kernels this halves
the file compared with one entry per file, and it packs and unpacks faster
(one block, one checksum). A blob is closed at 64 MiB so no entry nears the
container's per-entry limit.

Reading verifies everything before it returns: the container's checksums,
the entry names, the header, the content digest (which covers the kernel
table and every blob), the kernel table's schema, that every kernel hash and
file name is a plain name (no path traversal), that no kernel or file
appears twice, and that the file ranges tile each blob exactly. The byte
layout is in docs/FORMAT.md, "Bundle file".
"""

from __future__ import annotations

import json
import os
from typing import Any

from . import native, packing
from ._atomic import write_atomic
from ._version import __version__
from .bundler import (
    Buffer,
    TritonBundle,
    TritonKernelArtifact,
    TritonKernelArtifacts,
    check_file_name,
    check_kernel_hash,
    check_target,
    check_abi,
    check_version,
)
from .errors import BundleFormatError
from .hashing import hash_bytes

FORMAT_NAME = "pyruntime-triton-bundle"
FORMAT_VERSION = 1
HEADER_NAME = "header.json"
KERNELS_NAME = "kernels.json"
BLOB_PREFIX = "blob."
BLOB_LIMIT = 64 << 20  # close a blob past this many bytes
MAX_JSON = 256 << 20

_HEADER_KEYS = frozenset(
    {"format", "format_version", "pyruntime_version", "triton_version", "targets", "content_digest", "blobs"}
)
# Optional header keys: absent means unknown (files written before them).
_OPTIONAL_HEADER_KEYS = frozenset({"triton_abi"})
_KERNEL_KEYS = frozenset({"hash", "device", "target", "triton_version", "files"})
_DIGEST_DOMAIN = b"pyruntime-triton-bundle/1\n"

# Extensions in the order their files are laid out; the rest follow, sorted.
_EXT_ORDER = {e: i for i, e in enumerate(
    (".json", ".source", ".ttir", ".ttgir", ".llir", ".ptx", ".amdgcn", ".cubin", ".hsaco", ".spv", ".zebin")
)}


def content_digest(kernels_json: Buffer, blobs: list[Buffer]) -> str:
    """XXH3-128 (hex) of ``"pyruntime-triton-bundle/1\\n"``, the
    ``kernels.json`` bytes, ``"\\n"`` and the XXH3-128 hex digest of each
    blob in order: it covers every byte of the bundle and where it belongs."""
    blob_digests = "".join(hash_bytes(b) for b in blobs).encode("ascii")
    return hash_bytes(b"".join((_DIGEST_DOMAIN, bytes(kernels_json), b"\n", blob_digests)))


# --------------------------------------------------------------------------
# writing


def plan_layout(files: list[list[tuple[str, int]]]) -> tuple[list[list[tuple[int, int]]], list[int]]:
    """Where each file goes: ``files[k]`` lists ``(name, size)`` of kernel
    ``k``; returns ``places[k][i] = (blob, offset)`` and the blob sizes.

    Files are grouped by extension (:data:`_EXT_ORDER`, then others sorted),
    in kernel order within an extension; a blob is closed before a file
    would take it past :data:`BLOB_LIMIT`."""
    rank_of = _EXT_ORDER
    last = len(rank_of)
    order = []
    for ki, kfiles in enumerate(files):
        for fi, (name, size) in enumerate(kfiles):
            ext = os.path.splitext(name)[1]
            order.append((rank_of.get(ext, last), ext, ki, fi, size))
    order.sort()
    places: list[list[tuple[int, int]]] = [[(0, 0)] * len(kfiles) for kfiles in files]
    sizes: list[int] = []
    used = 0
    for _, _, ki, fi, size in order:
        if not sizes or (used and used + size > BLOB_LIMIT):
            if sizes:
                sizes[-1] = used
            sizes.append(0)
            used = 0
        places[ki][fi] = (len(sizes) - 1, used)
        used += size
    if sizes:
        sizes[-1] = used
    return places, sizes


def _layout(bundle: TritonBundle) -> tuple[list[dict[str, Any]], list[Buffer]]:
    """The kernel table and the blobs.

    A bundle fresh from a collect already holds its files in blobs laid out
    this way (:func:`pyruntime.bundler.collect_dir` reads them straight into
    place), and those are used as they are, provided every artifact still
    holds the very payload object it was read into."""
    kernels = bundle.kernel_artifacts
    pre = bundle._prelaid
    flat = [a.payload for k in kernels for a in k.artifacts]
    if pre is not None and len(pre[0]) == len(flat) and all(x is y for x, y in zip(pre[0], flat)):
        places, blobs = pre[1], pre[2]
    else:
        places, sizes = plan_layout([[(a.filename, len(a.payload)) for a in k.artifacts] for k in kernels])
        parts: list[list[tuple[int, Buffer]]] = [[] for _ in sizes]
        for ki, k in enumerate(kernels):
            for fi, a in enumerate(k.artifacts):
                blob, off = places[ki][fi]
                parts[blob].append((off, a.payload))
        blobs = []
        for p in parts:
            p.sort(key=lambda t: t[0])
            blobs.append(b"".join(payload for _, payload in p))
    table = []
    for ki, k in enumerate(kernels):
        kp = places[ki]
        table.append({
            "hash": k.kernel_hash,
            "device": k.device,
            "target": k.target,
            "triton_version": k.triton_version,
            "files": [[a.filename, kp[fi][0], kp[fi][1], len(a.payload)] for fi, a in enumerate(k.artifacts)],
        })
    return table, blobs


def check_bundle(bundle: TritonBundle) -> None:
    """Validate names and fields of an in-memory bundle (what :func:`decode`
    checks on a file): raises :class:`BundleFormatError`."""
    seen: set[str] = set()
    for k in bundle.kernel_artifacts:
        check_kernel_hash(k.kernel_hash)
        if k.kernel_hash in seen:
            raise BundleFormatError(f"kernel {k.kernel_hash} appears twice")
        seen.add(k.kernel_hash)
        if not isinstance(k.device, int) or isinstance(k.device, bool) or k.device < 0:
            raise BundleFormatError(f"kernel {k.kernel_hash}: device {k.device!r} is not a non-negative integer")
        check_target(k.target)
        check_version(k.triton_version, f"kernel {k.kernel_hash}: triton_version")
        names: set[str] = set()
        for a in k.artifacts:
            check_file_name(a.filename, k.kernel_hash)
            names.add(a.filename)
        if len(names) != len(k.artifacts):
            raise BundleFormatError(f"kernel {k.kernel_hash}: a file name appears twice")
    check_version(bundle.triton_version, "triton_version")
    check_abi(bundle.triton_abi)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def encode(bundle: TritonBundle) -> bytes:
    """The bundle file's bytes."""
    check_bundle(bundle)
    table, blobs = _layout(bundle)
    kernels_json = _json_bytes(table)
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "pyruntime_version": __version__,
        "triton_version": bundle.triton_version,
        "targets": bundle.targets,
        "content_digest": content_digest(kernels_json, blobs),
        "blobs": [len(b) for b in blobs],
    }
    if bundle.triton_abi is not None:
        # omitted when unknown, so such a file is byte for byte what older
        # pyruntime versions wrote and read
        header["triton_abi"] = bundle.triton_abi
    entries: list[tuple[str, Buffer]] = [(HEADER_NAME, _json_bytes(header)), (KERNELS_NAME, kernels_json)]
    entries += [(f"{BLOB_PREFIX}{i}", b) for i, b in enumerate(blobs)]
    return packing.pack(entries)


def save(bundle: TritonBundle, path: str | os.PathLike[str]) -> int:
    """Write ``bundle`` to ``path``; returns the file size.

    The bytes go to a temporary file next to ``path`` that is renamed onto
    it, so ``path`` never holds a partial bundle. An existing ``path`` is
    unlinked just before the rename (see :func:`pyruntime._atomic.write_atomic`)."""
    data = encode(bundle)
    write_atomic(path, data, unlink_first=True)
    return len(data)


# --------------------------------------------------------------------------
# reading


def _fail(msg: str) -> BundleFormatError:
    return BundleFormatError(f"bad bundle: {msg}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        keys = [k for k, _ in pairs]
        dup = next(k for k in keys if keys.count(k) > 1)
        raise _fail(f"key {dup!r} appears twice in one object")
    return out


def _is_uint(v: Any) -> bool:
    return type(v) is int and v >= 0


def _parse_json(raw: Buffer, what: str) -> Any:
    if len(raw) > MAX_JSON:
        raise _fail(f"{what} is {len(raw)} bytes, over the {MAX_JSON}-byte limit")
    try:
        return json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
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
        raise BundleFormatError(f"not a kernel bundle: format is {man.get('format')!r}, expected {FORMAT_NAME!r}")
    version = man.get("format_version")
    if not _is_uint(version):
        raise _fail("format_version is not an integer")
    if version != FORMAT_VERSION:
        raise BundleFormatError(
            f"bundle format version {version} is not supported (this pyruntime reads version {FORMAT_VERSION})"
        )
    extra = set(man) - _HEADER_KEYS - _OPTIONAL_HEADER_KEYS
    missing = _HEADER_KEYS - set(man)
    if extra or missing:
        raise _fail(f"{HEADER_NAME}: unexpected keys {sorted(extra)}" if extra
                    else f"{HEADER_NAME}: missing keys {sorted(missing)}")
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
    if not isinstance(targets, list) or any(check_target(t) is None for t in targets):
        raise _fail("targets is not a list of target strings")
    blobs = man["blobs"]
    if not isinstance(blobs, list) or not all(_is_uint(b) for b in blobs):
        raise _fail("blobs is not a list of sizes")
    return man


def parse_kernels(raw: Buffer) -> list[dict[str, Any]]:
    """Parse and check ``kernels.json``: every hash and file name is a
    plain name, no kernel or file appears twice."""
    kernels = _parse_json(raw, KERNELS_NAME)
    if not isinstance(kernels, list):
        raise _fail(f"{KERNELS_NAME} is not a list")
    seen_hashes: set[str] = set()
    for i, k in enumerate(kernels):
        if not isinstance(k, dict) or k.keys() != _KERNEL_KEYS:
            raise _fail(f"kernel {i} is not an object with keys {sorted(_KERNEL_KEYS)}")
        h = check_kernel_hash(k["hash"])
        if h in seen_hashes:
            raise _fail(f"kernel {h} appears twice")
        seen_hashes.add(h)
        if not _is_uint(k["device"]):
            raise _fail(f"kernel {h}: device is not a non-negative integer")
        check_target(k["target"])
        check_version(k["triton_version"], f"kernel {h}: triton_version")
        files = k["files"]
        if not isinstance(files, list):
            raise _fail(f"kernel {h}: files is not a list")
        names = set()
        for f in files:
            if not (type(f) is list and len(f) == 4 and _is_uint(f[1]) and _is_uint(f[2]) and _is_uint(f[3])):
                raise _fail(f"kernel {h}: a file is not [name, blob, offset, size]")
            names.add(check_file_name(f[0], h))
        if len(names) != len(files):
            raise _fail(f"kernel {h}: a file name appears twice")
    return kernels


def _unpack(data: Buffer) -> list[tuple[str, memoryview]]:
    """:func:`pyruntime.packing.unpack` with the same checks, but the
    entries are views into one buffer: for the C backend this skips a copy
    of every entry (and its page faults), which is a large share of a load."""
    backend = native.backend
    lib = getattr(backend, "lib", None)
    if lib is None or not hasattr(lib, "prt_unpack_data"):
        return [(n, memoryview(c)) for n, c in packing.unpack(data)]
    ffi = backend.ffi
    src = ffi.from_buffer(data)
    err = ffi.new("prt_err *")
    count = ffi.new("uint32_t *")
    backend.check(lib.prt_unpack_count(src, len(src), count, err), err, BundleFormatError)
    n = count[0]
    entries = ffi.new("prt_entry[]", max(n, 1))
    total = ffi.new("uint64_t *")
    rc = lib.prt_unpack_index(src, len(src), entries, n, packing.DEFAULT_MAX_ENTRY,
                              packing.DEFAULT_MAX_TOTAL, total, err)
    backend.check(rc, err, BundleFormatError)
    out = bytearray(total[0])
    rc = lib.prt_unpack_data(src, len(src), entries, n, ffi.from_buffer(out), len(out), err)
    backend.check(rc, err, BundleFormatError)
    raw = memoryview(data).cast("B")
    mv = memoryview(out).toreadonly()
    result = []
    for i in range(n):
        e = entries[i]
        try:
            name = bytes(raw[e.name_off:e.name_off + e.name_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise BundleFormatError(f"entry {i}: name is not valid UTF-8") from None
        result.append((name, mv[e.out_off:e.out_off + e.raw_size]))
    return result


def decode(data: Buffer) -> TritonBundle:
    """Verify ``data`` completely, then build the :class:`TritonBundle`.
    Payloads are read-only views into the unpacked blobs (no copies)."""
    try:
        entries = _unpack(data)
    except BundleFormatError as e:
        raise BundleFormatError(f"bad bundle container: {e}") from None
    if len(entries) < 2 or entries[0][0] != HEADER_NAME or entries[1][0] != KERNELS_NAME:
        raise BundleFormatError(
            f"not a kernel bundle: the container does not start with {HEADER_NAME} and {KERNELS_NAME}"
        )
    header = parse_header(entries[0][1])
    kernels_raw = entries[1][1]
    blobs = [content for _, content in entries[2:]]
    names = [name for name, _ in entries[2:]]
    if names != [f"{BLOB_PREFIX}{i}" for i in range(len(header["blobs"]))]:
        raise _fail(f"entries {names[:8]} do not match the {len(header['blobs'])} blobs the header lists")
    for i, (want, blob) in enumerate(zip(header["blobs"], blobs)):
        if len(blob) != want:
            raise _fail(f"blob {i} holds {len(blob)} bytes, the header says {want}")
    if content_digest(kernels_raw, blobs) != header["content_digest"]:
        raise BundleFormatError("bundle content digest mismatch: the header does not describe these bytes")
    kernels = parse_kernels(kernels_raw)

    # Every byte of every blob belongs to exactly one file: the ranges,
    # sorted, must tile each blob with no gap or overlap.
    ranges = [(f[1], f[2], f[3], k["hash"], f[0]) for k in kernels for f in k["files"]]
    ranges.sort()
    pos = [0] * len(blobs)
    for blob, off, size, h, name in ranges:
        if blob >= len(blobs):
            raise _fail(f"kernel {h}: file {name!r} points at blob {blob}, which does not exist")
        if off != pos[blob]:
            kind = "overlaps another file" if off < pos[blob] else "leaves a gap before it"
            raise _fail(f"kernel {h}: file {name!r} at blob {blob} offset {off} {kind}")
        pos[blob] = off + size
    for i, (end, blob) in enumerate(zip(pos, blobs)):
        if end != len(blob):
            raise _fail(f"blob {i}: files cover {end} of its {len(blob)} bytes")
    targets = sorted({k["target"] for k in kernels if k["target"]})
    if header["targets"] != targets:
        raise _fail(f"header targets {header['targets']} differ from the kernels' targets {targets}")

    out = []
    for k in kernels:
        arts = [TritonKernelArtifact(name, blobs[blob][off:off + size]) for name, blob, off, size in k["files"]]
        out.append(TritonKernelArtifacts(k["hash"], k["device"], arts, k["target"], k["triton_version"]))
    return TritonBundle(out, header["triton_version"], header["pyruntime_version"], header["content_digest"],
                        triton_abi=header.get("triton_abi"))


def read_file(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load(path: str | os.PathLike[str]) -> TritonBundle:
    """Read and verify the bundle file at ``path``; a
    :class:`BundleFormatError` names the file and the problem."""
    data = read_file(path)
    try:
        return decode(data)
    except BundleFormatError as e:
        raise BundleFormatError(f"{os.fspath(path)}: {e}") from None


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
                "files": len(k.artifacts),
                "size": k.size,
            }
            for k in bundle.kernel_artifacts
        ],
    }
