"""The pure-Python twin of the C core (csrc/).

It reads and writes exactly the bytes the C module does, using the ``lz4``
and ``xxhash`` packages; the test suite holds the two against each other.
The formats are written down in docs/FORMAT.md and in the C sources.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from typing import Any, Callable, NamedTuple, Sequence

import lz4.block
import xxhash

from ..errors import BundleFormatError, ProtocolError

FRAME_MAGIC = b"PRTF"
FRAME_VERSION = 1
FRAME_HEADER = struct.Struct("<4sHHQQQ")  # magic, version, kind, job id, length, xxh3-64
PACK_MAGIC = b"PRTP"
PACK_VERSION = 1
PACK_HEADER = struct.Struct("<4sHHIIQQ")  # magic, version, flags, count, index len, data len, xxh3-64(index)
INDEX_REC = struct.Struct("<HBBQQQ")  # name len, method, reserved, raw, stored, xxh3-64(raw)
MAX_NAME = 255
LZ4_MAX_INPUT = 0x7E000000
LZ4_MAX_RATIO = 255
LZ4HC_MAX_LEVEL = 12
IO_CHUNK = 1 << 20
EAGER_PAYLOAD = 16 << 20  # frame payloads up to this are allocated before reading

_xxh3_64 = xxhash.xxh3_64_intdigest


class PackedEntry(NamedTuple):
    """One pack entry prepared ahead of its container (see
    :func:`pack_entry`): how it is stored, its sizes, the XXH3-64 the index
    records and the XXH3-128 hex digest of its raw bytes."""

    method: int  # 0 stored, 1 LZ4 block
    raw_size: int
    checksum: int
    stored: bytes | bytearray | memoryview
    digest: str


class FileChanged(RuntimeError):
    """A file's size differs from the one its listing gave (it is being
    written); the caller reads that directory again."""


class FileTable(NamedTuple):
    """The files of the kernels to write, flat: file ``i`` is ``names[i]``
    holding ``blobs[blob_of[i]][offs[i]:offs[i] + sizes[i]]``. A decoded
    bundle's table points into its unpacked blobs (no copy per file)."""

    blobs: Sequence[bytes | bytearray | memoryview]
    names: Sequence[str]
    blob_of: Sequence[int]
    offs: Sequence[int]
    sizes: Sequence[int]


#: (tmp directory name, final name, first file in the table, file count)
KernelJob = tuple[str, str, int, int]

#: (sentinel, prefix): in ``*.json`` files each sentinel becomes prefix +
#: the kernel's final name
Swap = tuple[bytes, bytes]


def check_table_lengths(table: FileTable) -> None:
    if not len(table.names) == len(table.blob_of) == len(table.offs) == len(table.sizes):
        raise ValueError("file table: names, blob_of, offs and sizes differ in length")


def table_of(kernels: Sequence[tuple[str, str, Sequence[tuple[str, bytes | bytearray | memoryview]]]]
             ) -> tuple[FileTable, list[KernelJob]]:
    """A table and jobs for ``(tmp name, final name, [(file name, data),
    ...])`` kernels, each file its own blob."""
    blobs: list[bytes | bytearray | memoryview] = []
    names: list[str] = []
    jobs: list[KernelJob] = []
    for tmp_name, final_name, files in kernels:
        jobs.append((tmp_name, final_name, len(names), len(files)))
        for name, data in files:
            names.append(name)
            blobs.append(data)
    n = len(names)
    return FileTable(blobs, names, list(range(n)), [0] * n, [len(_flat(b)) for b in blobs]), jobs


def _flat(data: bytes | bytearray | memoryview) -> memoryview:
    """A byte view of a contiguous buffer: len() of a memoryview counts
    items, so an array('I') view would otherwise declare the wrong size."""
    return memoryview(data).cast("B")


# ---------------------------------------------------------------- framing
def encode_frame_header(kind: int, job_id: int, payload: bytes | bytearray | memoryview) -> bytes:
    payload = _flat(payload)
    return FRAME_HEADER.pack(FRAME_MAGIC, FRAME_VERSION, kind, job_id, len(payload), _xxh3_64(payload))


def write_frame(fd: int, kind: int, job_id: int, payload: bytes | bytearray | memoryview) -> None:
    payload = _flat(payload)
    bufs = [memoryview(encode_frame_header(kind, job_id, payload))]
    if len(payload):
        bufs.append(payload)
    while bufs:
        n = os.writev(fd, bufs)
        while bufs and n >= len(bufs[0]):
            n -= len(bufs[0])
            bufs.pop(0)
        if bufs and n:
            bufs[0] = bufs[0][n:]


def _read_into(fd: int, view: memoryview) -> int:
    done = 0
    while done < len(view):
        n = os.readv(fd, [view[done:]])
        if n == 0:
            break
        done += n
    return done


def read_payload(fd: int, length: int) -> bytearray:
    """Read exactly ``length`` payload bytes (ProtocolError if the stream ends first).

    Up to EAGER_PAYLOAD is allocated at once; past that the buffer doubles
    as bytes arrive, so a forged length under a generous max_len costs at
    most twice the bytes actually sent, never the declared size."""
    buf = bytearray(min(length, EAGER_PAYLOAD))
    done = 0
    while True:
        done += _read_into(fd, memoryview(buf)[done:])
        if done < len(buf):
            raise ProtocolError(f"truncated frame: stream ended {done} of {length} payload bytes")
        if done == length:
            return buf
        buf += bytes(min(len(buf), length - len(buf)))


def parse_frame_header(hdr: bytes | bytearray, max_len: int) -> tuple[int, int, int, int]:
    magic, version, kind, job_id, length, checksum = FRAME_HEADER.unpack(hdr)
    if magic != FRAME_MAGIC:
        raise ProtocolError(f"bad frame magic {bytes(magic)!r} (expected {FRAME_MAGIC!r})")
    if version != FRAME_VERSION:
        raise ProtocolError(f"unknown frame version {version} (this build speaks {FRAME_VERSION})")
    if length > max_len:
        raise ProtocolError(f"frame payload of {length} bytes is over the {max_len}-byte limit")
    return kind, job_id, length, checksum


def read_frame(fd: int, max_len: int) -> tuple[int, int, bytearray]:
    hdr = bytearray(FRAME_HEADER.size)
    got = _read_into(fd, memoryview(hdr))
    if got == 0:
        raise EOFError("end of stream at a frame boundary")
    if got < len(hdr):
        raise ProtocolError(f"truncated frame: stream ended {got} bytes into the header")
    kind, job_id, length, checksum = parse_frame_header(hdr, max_len)
    payload = read_payload(fd, length)
    if _xxh3_64(payload) != checksum:
        raise ProtocolError("frame payload checksum mismatch")
    return kind, job_id, payload


# ---------------------------------------------------------------- hashing
def _hex128(h: "xxhash.xxh3_128") -> str:
    return h.hexdigest()


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    return xxhash.xxh3_128(data).hexdigest()


def _feed_file(h: "xxhash.xxh3_128", path: str | bytes, size: int | None) -> None:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(IO_CHUNK):
            total += len(chunk)
            h.update(chunk)
    if size is not None and total != size:
        raise OSError(f"{os.fsdecode(path)} changed size while being hashed")


def hash_file(path: str | os.PathLike[str]) -> str:
    h = xxhash.xxh3_128()
    _feed_file(h, os.fspath(path), None)
    return h.hexdigest()


def _excluded_name(name: bytes) -> bool:
    # decided before the lstat: Triton adds and removes these mid-walk
    return name.startswith(b"tmp.") or b".tmp.pid_" in name


def _walk(h: "xxhash.xxh3_128", root: bytes, rel: bytes) -> None:
    full_dir = os.path.join(root, rel) if rel else root
    for name in sorted(os.listdir(full_dir)):
        path = os.path.join(full_dir, name)
        relpath = rel + b"/" + name if rel else name
        if _excluded_name(name):
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if name == b"lock":  # a lock released since the listing: skipped anyway
                continue
            raise
        if name == b"lock" and stat.S_ISREG(st.st_mode):
            continue
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            h.update(b"l" + struct.pack("<I", len(relpath)) + relpath + struct.pack("<Q", len(target)) + target)
        elif stat.S_ISREG(st.st_mode):
            h.update(b"f" + struct.pack("<I", len(relpath)) + relpath + struct.pack("<Q", st.st_size))
            _feed_file(h, path, st.st_size)
        elif stat.S_ISDIR(st.st_mode):
            h.update(b"d" + struct.pack("<I", len(relpath)) + relpath + struct.pack("<Q", 0))
            _walk(h, root, relpath)
        else:
            raise ValueError(f"{os.fsdecode(relpath)} is not a regular file, directory or symlink")


def hash_dir(path: str | os.PathLike[str]) -> str:
    root = os.fsencode(path)
    try:  # the same open the C side does, so both raise the same OSError subclass
        os.close(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as e:
        raise OSError(e.errno, f"cannot open directory {os.fsdecode(root)}: {os.strerror(e.errno)}") from None
    h = xxhash.xxh3_128(b"PRTH\x01")
    _walk(h, root, b"")
    return h.hexdigest()


# ---------------------------------------------------------------- packing
NAME_SHOWN = 64  # bytes of a name quoted in a message, as in packing.c


def _shown(name: bytes | str) -> str:
    if isinstance(name, str):
        name = name.encode("utf-8", "replace")
    return name[:NAME_SHOWN].decode(errors="replace") + ("..." if len(name) > NAME_SHOWN else "")


def check_name(name: bytes, i: int) -> None:
    if not name:
        raise BundleFormatError(f"entry {i}: empty name")
    if len(name) > MAX_NAME:
        raise BundleFormatError(f"entry {i}: name longer than {MAX_NAME} bytes")
    if name in (b".", b".."):
        raise BundleFormatError(f"entry {i}: name '{name.decode()}' is not a file name")
    if b"/" in name or b"\\" in name or b"\0" in name:
        raise BundleFormatError(f"entry {i}: name contains a path separator or NUL")


def pack(entries: Sequence[tuple[bytes, bytes | bytearray | memoryview]]) -> bytes:
    views = [(name, _flat(data)) for name, data in entries]
    # Checks in the C side's order (sizes, names, duplicates), so both
    # backends name the same problem first.
    for i, (name, data) in enumerate(views):
        if len(data) > LZ4_MAX_INPUT:
            raise BundleFormatError(
                f"entry {i}: {len(data)} bytes is over the {LZ4_MAX_INPUT}-byte LZ4 block limit"
            )
    for i, (name, data) in enumerate(views):
        check_name(name, i)
    ordered = sorted(name for name, _ in views)
    for a, b in zip(ordered, ordered[1:]):
        if a == b:  # unpack would refuse the container
            raise BundleFormatError(f"duplicate entry name '{_shown(a)}'")
    index = bytearray()
    blocks = []
    data_len = 0
    for i, (name, data) in enumerate(views):
        method, stored = 0, data
        if len(data):
            c = _compress(data, 0)
            if len(c) < len(data):
                method, stored = 1, c
        index += INDEX_REC.pack(len(name), method, 0, len(data), len(stored), _xxh3_64(data)) + name
        blocks.append(stored)
        data_len += len(stored)
    header = PACK_HEADER.pack(
        PACK_MAGIC, PACK_VERSION, 0, len(entries), len(index), data_len, _xxh3_64(bytes(index))
    )
    return b"".join([header, index, *blocks])


#: An index record as :func:`parse_index` gives it: name, method, raw
#: size, stored size, XXH3-64 of the raw bytes, offset of the stored bytes.
IndexEntry = tuple[bytes, int, int, int, int, int]


def parse_pack_header(head: bytes | bytearray | memoryview, size: int) -> tuple[int, int, int]:
    """Check a container's 32-byte header against the container's ``size``
    (the header alone may be at hand: the lazy reader reads no more);
    returns the entry count, the index length and the index's XXH3-64."""
    if size < PACK_HEADER.size:
        raise BundleFormatError(f"truncated: {size} bytes, the header alone needs {PACK_HEADER.size}")
    magic, version, flags, count, index_len, data_len, index_sum = PACK_HEADER.unpack_from(head)
    if magic != PACK_MAGIC:
        raise BundleFormatError("bad magic: not a pyruntime pack")
    if version != PACK_VERSION:
        raise BundleFormatError(f"unknown format version {version} (this build reads {PACK_VERSION})")
    if flags:
        raise BundleFormatError(f"unknown flags 0x{flags:04x}")
    want = PACK_HEADER.size + index_len
    if want + data_len > size:
        raise BundleFormatError(f"truncated: header declares more bytes than the {size} present")
    if want + data_len < size:
        raise BundleFormatError(f"{size - want - data_len} trailing bytes after the data")
    if count * INDEX_REC.size > index_len:
        raise BundleFormatError(f"entry count {count} does not fit the {index_len}-byte index")
    return count, index_len, index_sum


def parse_index(index: bytes | bytearray | memoryview, count: int, size: int, max_entry: int,
                max_total: int) -> list[IndexEntry]:
    """Check every record of a container's (checksummed) index, in order,
    for a container of ``size`` bytes: names, methods, sizes, limits, that
    the data tiles the rest of the container, no name twice."""
    idx = memoryview(index).cast("B")
    pos, end, data_off, total = 0, len(idx), PACK_HEADER.size + len(idx), 0
    parsed = []
    for i in range(count):
        if end - pos < INDEX_REC.size:
            raise BundleFormatError(f"entry {i}: index ends inside its record")
        name_len, method, reserved, raw, stored, checksum = INDEX_REC.unpack_from(idx, pos)
        pos += INDEX_REC.size
        if end - pos < name_len:
            raise BundleFormatError(f"entry {i}: name runs past the index")
        name = bytes(idx[pos:pos + name_len])
        pos += name_len
        if reserved:
            raise BundleFormatError(f"entry {i}: reserved byte is not zero")
        check_name(name, i)
        if method == 0 and stored != raw:
            raise BundleFormatError(f"entry {i}: stored size differs from raw size")
        if method == 1 and (stored == 0 or stored >= raw or raw // LZ4_MAX_RATIO > stored):
            raise BundleFormatError(f"entry {i}: impossible LZ4 sizes ({stored} -> {raw})")
        if method > 1:
            raise BundleFormatError(f"entry {i}: unknown method {method}")
        if raw > max_entry:
            raise BundleFormatError(
                f"entry '{_shown(name)}' declares {raw} bytes, over the {max_entry}-byte limit"
            )
        if stored > size - data_off:
            raise BundleFormatError(f"entry {i}: data runs past the end")
        parsed.append((name, method, raw, stored, checksum, data_off))
        data_off += stored
        total += raw
        if total > max_total:
            raise BundleFormatError(f"entries declare more than the {max_total}-byte total limit")
    if pos != end:
        raise BundleFormatError(f"{end - pos} unused bytes at the end of the index")
    if data_off != size:
        raise BundleFormatError("entry sizes do not add up to the data length")
    seen: set[bytes] = set()
    for name, *_ in sorted(parsed):
        if name in seen:
            raise BundleFormatError(f"duplicate entry name '{_shown(name)}'")
        seen.add(name)
    return parsed


def unpack_entry(block: bytes | bytearray | memoryview, name: bytes | str, method: int, raw: int,
                 checksum: int) -> bytes:
    """One entry's stored bytes, decompressed and checked against its XXH3-64."""
    if method == 0:
        content = bytes(block)
    else:
        try:
            content = lz4.block.decompress(block, uncompressed_size=raw)
        except lz4.block.LZ4BlockError:
            raise BundleFormatError(f"entry '{_shown(name)}': corrupt LZ4 block") from None
        if len(content) != raw:
            raise BundleFormatError(f"entry '{_shown(name)}': corrupt LZ4 block")
    if _xxh3_64(content) != checksum:
        raise BundleFormatError(f"entry '{_shown(name)}': checksum mismatch")
    return content


def unpack(data: bytes | bytearray | memoryview, max_entry: int, max_total: int) -> list[tuple[bytes, bytes]]:
    mv = memoryview(data).cast("B")
    count, index_len, index_sum = parse_pack_header(mv[:PACK_HEADER.size], len(mv))
    index = mv[PACK_HEADER.size:PACK_HEADER.size + index_len]
    if _xxh3_64(index) != index_sum:
        raise BundleFormatError("index checksum mismatch")
    return [(name, unpack_entry(mv[off:off + stored], name, method, raw, checksum))
            for name, method, raw, stored, checksum, off in parse_index(index, count, len(mv), max_entry, max_total)]


# --------------------------------------------------------------------------
# entries packed ahead of their container, and unpacking into views


def _system_lz4() -> Any:
    """The system liblz4 (the library the C core links), when it loads.

    LZ4 builds may pick different, equally valid matches for the same input
    (Debian's liblz4 1.9.4 and the copy inside the ``lz4`` package do, for
    some short inputs), so the twin compresses with the C core's library
    where it can, and both backends write the same bytes; without it the
    ``lz4`` package's copy packs, whose blocks every reader accepts too."""
    try:
        lib = ctypes.CDLL("liblz4.so.1")  # the soname; dlopen is quick, find_library is not
        lib.LZ4_compressBound.argtypes = [ctypes.c_int]
        lib.LZ4_compress_default.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        lib.LZ4_compress_HC.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return lib


_LZ4: list[Any] = []  # [the library or None], loaded on first use


def _compress(data: bytes | bytearray | memoryview, level: int) -> bytes:
    """A raw LZ4 block of ``data`` (0: the fast mode, 1-12: HC at that level)."""
    if not _LZ4:
        _LZ4.append(_system_lz4())
    lib = _LZ4[0]
    if lib is None:
        return (lz4.block.compress(data, mode="default", store_size=False) if level == 0 else
                lz4.block.compress(data, mode="high_compression", compression=level, store_size=False))
    src = bytes(data)
    cap = lib.LZ4_compressBound(len(src))
    dst = ctypes.create_string_buffer(cap)
    n = (lib.LZ4_compress_default(src, dst, len(src), cap) if level == 0 else
         lib.LZ4_compress_HC(src, dst, len(src), cap, level))
    if n <= 0:
        raise BundleFormatError(f"LZ4 could not pack {len(src)} bytes")
    return dst.raw[:n]


def check_level(level: int) -> None:
    if type(level) is not int or not 0 <= level <= LZ4HC_MAX_LEVEL:
        raise ValueError(f"LZ4 level {level!r}: 0 (fast) or 1 to {LZ4HC_MAX_LEVEL} (HC)")


def pack_entry(data: bytes | bytearray | memoryview, level: int = 0) -> PackedEntry:
    """One entry packed at ``level``: 0 is LZ4's fast mode, 1 to 12 its HC
    mode (csrc/packing.c, store_entry)."""
    check_level(level)
    view = _flat(data)
    if len(view) > LZ4_MAX_INPUT:
        raise BundleFormatError(f"{len(view)} bytes is over the {LZ4_MAX_INPUT}-byte LZ4 block limit")
    method, stored = 0, view
    if len(view):
        c = _compress(view, level)
        if len(c) < len(view):
            method, stored = 1, c
    return PackedEntry(method, len(view), _xxh3_64(view), stored, hash_bytes(view))


def _check_stored(i: int, e: PackedEntry) -> None:
    # what unpack accepts, in packing.c's order
    if e.method > 1:
        raise BundleFormatError(f"entry {i}: unknown method {e.method}")
    if e.method == 0 and len(e.stored) != e.raw_size:
        raise BundleFormatError(f"entry {i}: stored size differs from raw size")
    stored = len(e.stored)
    if e.method == 1 and (stored == 0 or stored >= e.raw_size or e.raw_size // LZ4_MAX_RATIO > stored):
        raise BundleFormatError(f"entry {i}: impossible LZ4 sizes ({stored} -> {e.raw_size})")
    if e.raw_size > LZ4_MAX_INPUT:
        raise BundleFormatError(f"entry {i}: {e.raw_size} bytes is over the {LZ4_MAX_INPUT}-byte LZ4 block limit")


def pack_stored(items: Sequence[tuple[bytes, PackedEntry]], *, head_only: bool = False) -> bytes:
    """The container of entries packed ahead (:func:`pack_entry`); with
    ``head_only`` just its header and index, which the stored blocks follow
    in order."""
    # packing.c's order: every block, then every name, then duplicates
    for i, (_, e) in enumerate(items):
        _check_stored(i, e)
    for i, (name, _) in enumerate(items):
        check_name(name, i)
    ordered = sorted(name for name, _ in items)
    for a, b in zip(ordered, ordered[1:]):
        if a == b:
            raise BundleFormatError(f"duplicate entry name '{_shown(a)}'")
    index = bytearray()
    data_len = 0
    for name, e in items:
        index += INDEX_REC.pack(len(name), e.method, 0, e.raw_size, len(e.stored), e.checksum) + name
        data_len += len(e.stored)
    header = PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, 0, len(items), len(index), data_len, _xxh3_64(bytes(index)))
    if head_only:
        return header + bytes(index)
    return b"".join([header, index, *(e.stored for _, e in items)])


class Unpacking:
    """The twin of the C side's container being unpacked: everything is
    unpacked and checked up front (so errors come out of
    :func:`unpack_begin`, in the order the C side's would), and
    :meth:`run`, :meth:`start` and :meth:`finish` have nothing left to do."""

    def __init__(self, entries: list[tuple[bytes, bytes]]) -> None:
        self.names = [n for n, _ in entries]
        self.views = [memoryview(c).toreadonly() for _, c in entries]
        self.sizes = [len(c) for _, c in entries]
        self._digests = [hash_bytes(c) for _, c in entries]

    def run(self, first: int, count: int, nthreads: int) -> None:
        del first, count, nthreads

    start = run

    def finish(self) -> None:
        pass

    def digests(self) -> list[str]:
        return list(self._digests)


def unpack_begin(data: bytes | bytearray | memoryview, max_entry: int, max_total: int) -> Unpacking:
    return Unpacking(unpack(data, max_entry, max_total))


def unpack_views(
    data: bytes | bytearray | memoryview, max_entry: int, max_total: int, nthreads: int
) -> tuple[list[bytes], list[memoryview], list[str]]:
    """:func:`unpack` as names, read-only views and XXH3-128 hex digests
    (``nthreads`` is the C side's upper bound on threads; the twin runs in
    one)."""
    del nthreads
    entries = unpack(data, max_entry, max_total)
    return ([n for n, _ in entries], [memoryview(c).toreadonly() for _, c in entries],
            [hash_bytes(c) for _, c in entries])


# --------------------------------------------------------------------------
# kernel directories (csrc/kernel_dirs.c)


def read_files(directory: str, names: Sequence[str | None], offsets: Sequence[int], sizes: Sequence[int],
               out: bytearray) -> None:
    """Read each named file, exactly ``sizes[i]`` bytes, into
    ``out[offsets[i]:]``; a ``None`` name is a slot the caller fills.
    Raises :class:`FileChanged` when a file is shorter or longer."""
    view = memoryview(out)
    probe = bytearray(1)  # a byte past the expected end: detects a file that grew
    for name, off, size in zip(names, offsets, sizes):
        if name is None:
            continue
        path = f"{directory}/{name}"
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            slot = view[off:off + size]
            got = 0
            while True:
                n = os.readv(fd, [slot[got:], probe])
                if n == 0:
                    break
                got += n
                if got > size:
                    break
        finally:
            os.close(fd)
        if got != size:
            raise FileChanged(f"{path} changed size while it was read")


_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: flock errors of a file system without locks (cleaners then go by age)
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})
#: as in csrc/kernel_dirs.c
MAX_TMP_ATTEMPTS = 8
MAX_PLACE_ATTEMPTS = 4

#: What became of a kernel (the C core's PRT_KERNEL_*): a directory with
#: files holds its name (another restorer was first; the copy is dropped);
#: renamed into place; renamed after unlinking the non-directory that held
#: its name; a non-directory holds its name and was left there (``replace``
#: off, or unlinking it failed: ``err_no``).
KERNEL_PRESENT, KERNEL_RENAMED, KERNEL_REPLACED, KERNEL_BLOCKED = 0, 1, 2, 3


class Written(NamedTuple):
    """One kernel of :func:`write_kernels`: its outcome (``KERNEL_*``), the
    bytes written when it landed (else 0), and with ``KERNEL_BLOCKED`` the
    errno of the failed unlink (0 when ``replace`` was off)."""

    outcome: int
    nbytes: int
    err_no: int


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _remove_tmp(root: str, tmp_name: str, dfd: int, created: list[str]) -> None:
    for name in created:
        try:
            os.unlink(name, dir_fd=dfd)
        except OSError:
            pass
    try:
        os.rmdir(f"{root}/{tmp_name}")
    except OSError:
        pass  # litter for the next restore or `cache clean`


def _payload(table: FileTable, i: int, final_name: str, swap: Swap | None) -> bytes | memoryview:
    off = table.offs[i]
    data = _flat(table.blobs[table.blob_of[i]])[off:off + table.sizes[i]]
    if swap is not None and swap[0] and table.names[i].endswith(".json"):
        raw = bytes(data)
        if swap[0] in raw:
            return raw.replace(swap[0], swap[1] + final_name.encode())
    return data


def _lock_dir(fd: int) -> bool:
    """Take the flock that marks fd's directory as in use: ``False`` when a
    cleaner holds it (or the file system has no locks: ``True``)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in _NO_LOCKS:
            raise
    return True


def _open_locked_dir(root: str, name: str) -> int | None:
    """mkdir, open and lock ``root/name``: its fd (locked until closed), or
    ``None`` when a cleaner took the directory first (try another name)."""
    path = f"{root}/{name}"
    os.mkdir(path)
    try:
        fd = os.open(path, _OPEN_DIR)
    except FileNotFoundError:
        return None
    except BaseException:
        _rmdir_quietly(path)
        raise
    try:
        if not _lock_dir(fd):
            os.close(fd)  # the cleaner removes it
            return None
        mine = os.fstat(fd)
        try:
            named = os.lstat(path)
        except FileNotFoundError:
            named = None
    except BaseException:
        os.close(fd)
        _rmdir_quietly(path)
        raise
    if named is None or (named.st_dev, named.st_ino) != (mine.st_dev, mine.st_ino):
        os.close(fd)  # removed by a cleaner that took it before our flock
        return None
    return fd


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _make_tmp_dir(root: str, base_name: str) -> tuple[str, int]:
    """The job's tmp directory, locked: ``base_name``, else ``base_name``
    r1, r2, ... while cleaners take them."""
    for attempt in range(MAX_TMP_ATTEMPTS):
        name = base_name if attempt == 0 else f"{base_name}r{attempt}"
        fd = _open_locked_dir(root, name)
        if fd is not None:
            return name, fd
    raise OSError(errno.EAGAIN, f"mkdir {root}/{base_name}: taken by a cache cleaner {MAX_TMP_ATTEMPTS} times")


def _place_kernel(root: str, tmp_name: str, final_name: str, replace: bool) -> tuple[int, int]:
    """Rename the complete tmp directory onto ``final_name``: (outcome,
    errno), as place_kernel in csrc/kernel_dirs.c. ``os.unlink`` never
    removes a directory, so a kernel another restorer renamed there
    meanwhile stays and wins."""
    unlinked = False
    attempt = 1
    while True:
        try:
            os.rename(f"{root}/{tmp_name}", f"{root}/{final_name}")
            return (KERNEL_REPLACED if unlinked else KERNEL_RENAMED), 0
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return KERNEL_PRESENT, 0
            if e.errno != errno.ENOTDIR:
                raise OSError(e.errno, f"rename onto {root}/{final_name}: {e.strerror}") from None
        if not replace:
            return KERNEL_BLOCKED, 0
        if attempt == MAX_PLACE_ATTEMPTS:
            return KERNEL_BLOCKED, errno.EAGAIN  # something keeps putting a non-directory there
        attempt += 1
        try:
            os.unlink(f"{root}/{final_name}")
            unlinked = True
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EISDIR):
                return KERNEL_BLOCKED, e.errno or 0


def _write_kernel(root: str, table: FileTable, job: KernelJob, do_fsync: bool, swap: Swap | None,
                  replace: bool, after_file: Callable[[str, str], None] | None) -> Written:
    base_name, final_name, first, nfiles = job
    tmp_name, dfd = _make_tmp_dir(root, base_name)
    tmp = f"{root}/{tmp_name}"
    created: list[str] = []
    written = 0
    outcome = err_no = -1
    try:
        for i in range(first, first + nfiles):
            name = table.names[i]
            data = _payload(table, i, final_name, swap)
            fd = os.open(name, _OPEN_NEW, 0o666, dir_fd=dfd)
            created.append(name)
            try:
                _write_all(fd, _flat(data))
                if do_fsync:
                    os.fsync(fd)
            except OSError as e:  # name the file, as the C side does
                raise OSError(e.errno, f"write {tmp}/{name}: {e.strerror}") from None
            finally:
                os.close(fd)
            written += len(data)
            if after_file is not None:
                after_file(final_name, name)
        if do_fsync:
            os.fsync(dfd)
        outcome, err_no = _place_kernel(root, tmp_name, final_name, replace)
    finally:
        if outcome not in (KERNEL_RENAMED, KERNEL_REPLACED):
            _remove_tmp(root, tmp_name, dfd, created)  # still locked: no cleaner works on it
        os.close(dfd)  # releases the lock, once the directory is renamed or removed
    if outcome in (KERNEL_RENAMED, KERNEL_REPLACED):
        return Written(outcome, written, 0)
    return Written(outcome, 0, err_no)


def write_kernels(root: str, table: FileTable, jobs: Sequence[KernelJob], nthreads: int, do_fsync: bool,
                  swap: Swap | None = None, *, replace: bool = False,
                  after_file: Callable[[str, str], None] | None = None) -> list[Written]:
    """Write each kernel (files ``first .. first + nfiles - 1`` of
    ``table``) into ``root/<tmp name>``, held under an flock from its mkdir
    until it is renamed or removed (what tells cleaners it is in use), and
    rename it onto its final name; one :class:`Written` per kernel. A final
    name held by a directory with files is left (``KERNEL_PRESENT``, the
    copy is removed); one held by a non-directory (file, FIFO, socket,
    device, symlink: never followed) is unlinked first with ``replace``
    (``KERNEL_REPLACED``), else left (``KERNEL_BLOCKED``). With ``swap``,
    each sentinel in a ``.json`` file is written as prefix + final name.
    Stops at the first error, which is raised. ``after_file(final name,
    file name)`` is a test hook the C side does not have."""
    del nthreads
    check_table_lengths(table)
    for i, (b, off, size) in enumerate(zip(table.blob_of, table.offs, table.sizes)):
        if not 0 <= b < len(table.blobs):
            raise OSError(errno.EINVAL, f"file {i}: blob {b} of {len(table.blobs)}")
        blob_len = len(_flat(table.blobs[b]))
        if not (0 <= off <= blob_len and 0 <= size <= blob_len - off):
            raise OSError(errno.EINVAL, f"file {i}: outside blob {b}")
    for k, (_, _, first, nfiles) in enumerate(jobs):
        if first < 0 or nfiles < 0 or first + nfiles > len(table.names):
            raise OSError(errno.EINVAL, f"kernel {k}: files outside the table")
    if not os.path.isdir(root):
        os.open(root, os.O_RDONLY | os.O_DIRECTORY)  # raises the errno C reports
    return [_write_kernel(root, table, job, do_fsync, swap, replace, after_file) for job in jobs]


class PythonBackend:
    """This module as a backend object, beside :class:`pyruntime.core.c.CBackend`."""

    name = "python"
    write_frame = staticmethod(write_frame)
    read_frame = staticmethod(read_frame)
    hash_bytes = staticmethod(hash_bytes)
    hash_file = staticmethod(hash_file)
    hash_dir = staticmethod(hash_dir)
    pack = staticmethod(pack)
    unpack = staticmethod(unpack)
    pack_entry = staticmethod(pack_entry)
    pack_stored = staticmethod(pack_stored)
    unpack_begin = staticmethod(unpack_begin)
    unpack_views = staticmethod(unpack_views)
    read_files = staticmethod(read_files)
    write_kernels = staticmethod(write_kernels)

    @staticmethod
    def set_pdeathsig(sig: int) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, sig, 0, 0, 0) != 0:  # 1 == PR_SET_PDEATHSIG
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
