"""The C backend: the cffi module built from ``csrc/`` (``pyruntime.core._c``)
behind the same functions as :mod:`pyruntime.core.twin`, and the one
return-code helper (:meth:`CBackend.check`) that turns the C side's
``0``/negative status into an exception with a message.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from array import array
from typing import Any, Sequence

from .. import config
from . import twin
from ..errors import BundleFormatError, ProtocolError

ABI_VERSION = 8  # must equal PRT_ABI_VERSION in csrc/prt_core.cdef.h


class CBackend:
    """The cffi module built from csrc/."""

    name = "c"

    def __init__(self, module: Any) -> None:
        self.ffi = module.ffi
        self.lib = module.lib
        # Scratch buffers the C side fills completely: zeroing them first would
        # touch every page of a bound-sized (pack) or total-sized (unpack) buffer.
        self._scratch = self.ffi.new_allocator(should_clear_after_alloc=False)
        got = self.lib.prt_abi_version()
        if got != ABI_VERSION:
            raise ImportError(
                f"pyruntime.core._c has ABI version {got}, the Python package expects "
                f"{ABI_VERSION}: rebuild it with `pip install .` (stale build)"
            )
        outcomes = (self.lib.PRT_KERNEL_PRESENT, self.lib.PRT_KERNEL_RENAMED, self.lib.PRT_KERNEL_REPLACED,
                    self.lib.PRT_KERNEL_BLOCKED)
        if outcomes != (twin.KERNEL_PRESENT, twin.KERNEL_RENAMED, twin.KERNEL_REPLACED, twin.KERNEL_BLOCKED):
            raise ImportError(f"pyruntime.core._c numbers kernel outcomes {outcomes}: rebuild it with `pip install .`")
        if self.ffi.sizeof("prt_entry") != _ENTRY.size:
            raise ImportError(f"pyruntime.core._c lays prt_entry out in {self.ffi.sizeof('prt_entry')} bytes, "
                              f"the Python package reads {_ENTRY.size}: rebuild it with `pip install .`")
        self._pool: Any = None
        self._pool_pid = -1
        self._pool_lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget_pool)
        lib = self.lib
        self._status_text = {
            lib.PRT_E_EOF: "end of stream at a frame boundary",
            lib.PRT_E_TRUNCATED: "truncated frame",
            lib.PRT_E_MAGIC: "bad frame magic",
            lib.PRT_E_VERSION: "unknown frame version",
            lib.PRT_E_TOO_LARGE: "frame payload over the length limit",
            lib.PRT_E_CHECKSUM: "frame payload checksum mismatch",
        }

    # -- the worker pool -------------------------------------------------
    def pool(self) -> Any:
        """The C worker threads the parallel calls use (PYRUNTIME_IO_THREADS
        of them, as set at first use), started on first use, and again in a
        forked child (which has none of its parent's threads). They live as
        long as the process; after a call they poll for more work for
        PYRUNTIME_IO_SPIN_US, then sleep on a condition variable."""
        pid = os.getpid()
        if self._pool_pid != pid:
            with self._pool_lock:
                if self._pool_pid != pid:
                    out = self.ffi.new("prt_pool **")
                    err = self.ffi.new("prt_err *")
                    rc = self.lib.prt_pool_new(config.io_threads(), config.io_spin_us() * 1000, out, err)
                    self.check(rc, err, OSError)
                    self._pool, self._pool_pid = out[0], pid
        return self._pool

    def _forget_pool(self) -> None:
        # after a fork: the parent's workers do not exist here, and its lock
        # may have been held by a thread that does not exist either
        self._pool_pid = -1
        self._pool_lock = threading.Lock()

    # -- the one return-code helper ---------------------------------------
    def check(self, rc: int, err: Any = None, exc: type[Exception] = ProtocolError) -> None:
        """Turn a C return code into an exception (0 is success).

        -errno becomes OSError; PRT_E_EOF becomes EOFError; other statuses
        become ``exc`` with the message the C side wrote, or a fixed text."""
        if rc == 0:
            return
        msg = ""
        if err is not None and err.msg[0] != b"\0":
            msg = self.ffi.string(err.msg).decode("utf-8", "replace")
        if rc == self.lib.PRT_E_EOF:
            raise EOFError(msg or self._status_text[rc])
        if rc > -4096:
            code = -rc
            raise OSError(code, msg or os.strerror(code))
        raise exc(msg or self._status_text.get(rc, f"status {rc}"))

    # -- framing ----------------------------------------------------------
    def write_frame(self, fd: int, kind: int, job_id: int, payload: Any) -> None:
        buf = self.ffi.from_buffer(payload)
        self.check(self.lib.prt_write_frame(fd, kind, job_id, buf, len(buf)))

    def read_frame(self, fd: int, max_len: int) -> tuple[int, int, bytearray]:
        hdr = self.ffi.new("prt_frame_header *")
        rc = self.lib.prt_read_header(fd, max_len, hdr)
        if rc != 0:
            if rc == self.lib.PRT_E_TOO_LARGE:
                raise ProtocolError(f"frame payload of {hdr.length} bytes is over the {max_len}-byte limit")
            self.check(rc)
        if hdr.length <= twin.EAGER_PAYLOAD:
            payload = bytearray(hdr.length)
            rc = self.lib.prt_read_payload(fd, self.ffi.from_buffer(payload), hdr.length, hdr.checksum)
            self.check(rc)
            return hdr.kind, hdr.job_id, payload
        # A large declared length may be forged: grow the buffer as bytes
        # arrive (os.readv releases the GIL) instead of trusting it up front.
        payload = twin.read_payload(fd, hdr.length)
        if self.lib.prt_xxh3_64(self.ffi.from_buffer(payload), hdr.length) != hdr.checksum:
            self.check(self.lib.PRT_E_CHECKSUM)
        return hdr.kind, hdr.job_id, payload

    def set_pdeathsig(self, sig: int) -> None:
        self.check(self.lib.prt_set_pdeathsig(sig))

    # -- hashing ----------------------------------------------------------
    def hash_bytes(self, data: Any) -> str:
        out = self.ffi.new("char[33]")
        buf = self.ffi.from_buffer(data)
        self.lib.prt_hash_bytes(buf, len(buf), out)
        return self.ffi.string(out).decode()

    def _hash_path(self, fn: Any, path: Any) -> str:
        out = self.ffi.new("char[33]")
        err = self.ffi.new("prt_err *")
        rc = fn(os.fsencode(path), out, err)
        if rc == self.lib.PRT_E_FILETYPE:
            raise ValueError(self.ffi.string(err.msg).decode("utf-8", "replace"))
        if rc == -errno.ENOTDIR:
            raise NotADirectoryError(errno.ENOTDIR, self.ffi.string(err.msg).decode("utf-8", "replace"))
        self.check(rc, err, OSError)
        return self.ffi.string(out).decode()

    def hash_file(self, path: Any) -> str:
        return self._hash_path(self.lib.prt_hash_file, path)

    def hash_dir(self, path: Any) -> str:
        return self._hash_path(self.lib.prt_hash_dir, path)

    # -- packing ----------------------------------------------------------
    def pack(self, entries: Sequence[tuple[bytes, Any]]) -> bytes:
        ffi, lib = self.ffi, self.lib
        n = len(entries)
        keep = [(ffi.from_buffer(name), ffi.from_buffer(data)) for name, data in entries]
        names = ffi.new("char *[]", [k[0] for k in keep]) if n else ffi.NULL
        datas = ffi.new("uint8_t *[]", [k[1] for k in keep]) if n else ffi.NULL
        name_lens = ffi.new("size_t[]", [len(k[0]) for k in keep]) if n else ffi.NULL
        sizes = ffi.new("size_t[]", [len(k[1]) for k in keep]) if n else ffi.NULL
        err = ffi.new("prt_err *")
        bound = ffi.new("size_t *")
        self.check(lib.prt_pack_bound(n, name_lens, sizes, bound, err), err, BundleFormatError)
        out = self._scratch("uint8_t[]", bound[0])
        out_len = ffi.new("size_t *")
        rc = lib.prt_pack(n, names, name_lens, datas, sizes, out, bound[0], out_len, err)
        self.check(rc, err, BundleFormatError)
        return ffi.buffer(out, out_len[0])[:]

    def _unpack_index(self, data: Any, max_entry: int, max_total: int) -> tuple[Any, Any, int, Any, Any]:
        """Check a container's header and index: (source, entries, count,
        total raw size, error struct)."""
        ffi, lib = self.ffi, self.lib
        src = ffi.from_buffer(data)
        err = ffi.new("prt_err *")
        count = ffi.new("uint32_t *")
        self.check(lib.prt_unpack_count(src, len(src), count, err), err, BundleFormatError)
        n = count[0]
        entries = ffi.new("prt_entry[]", max(n, 1))
        total = ffi.new("uint64_t *")
        rc = lib.prt_unpack_index(src, len(src), entries, n, max_entry, max_total, total, err)
        self.check(rc, err, BundleFormatError)
        return src, entries, n, total, err

    def unpack(self, data: Any, max_entry: int, max_total: int) -> list[tuple[bytes, bytes]]:
        ffi, lib = self.ffi, self.lib
        src, entries, n, total, err = self._unpack_index(data, max_entry, max_total)
        out = self._scratch("uint8_t[]", max(total[0], 1))
        rc = lib.prt_unpack_data(src, len(src), entries, n, out, total[0], err)
        self.check(rc, err, BundleFormatError)
        view = memoryview(data).cast("B")
        mv = memoryview(ffi.buffer(out, total[0]))
        result = []
        for i in range(n):
            e = entries[i]
            name = bytes(view[e.name_off:e.name_off + e.name_len])
            result.append((name, bytes(mv[e.out_off:e.out_off + e.raw_size])))
        return result


    # -- entries packed ahead of their container ------------------------------
    def pack_entry(self, data: Any, level: int = 0) -> twin.PackedEntry:
        twin.check_level(level)
        ffi, lib = self.ffi, self.lib
        src = ffi.from_buffer(data)
        err = ffi.new("prt_err *")
        bound = ffi.new("size_t *")
        self.check(lib.prt_entry_bound(len(src), bound, err), err, BundleFormatError)
        dst = self._scratch("uint8_t[]", max(bound[0], 1))
        method = ffi.new("uint8_t *")
        stored = ffi.new("size_t *")
        checksum = ffi.new("uint64_t *")
        hex128 = ffi.new("char[33]")
        rc = lib.prt_pack_entry(src, len(src), level, dst, bound[0], method, stored, checksum, hex128, err)
        self.check(rc, err, BundleFormatError)
        # copied out of the bound-sized scratch block, which is not kept
        return twin.PackedEntry(method[0], len(src), checksum[0], ffi.buffer(dst, stored[0])[:],
                                 ffi.string(hex128).decode())

    def pack_stored(self, items: Sequence[tuple[bytes, twin.PackedEntry]], *, head_only: bool = False) -> Any:
        ffi, lib = self.ffi, self.lib
        n = len(items)
        if head_only:
            return self._pack_head(items)
        keep = [(ffi.from_buffer(name), ffi.from_buffer(e.stored)) for name, e in items]
        names = ffi.new("char *[]", [k[0] for k in keep]) if n else ffi.NULL
        name_lens = ffi.new("size_t[]", [len(k[0]) for k in keep]) if n else ffi.NULL
        stored = ffi.new("uint8_t *[]", [k[1] for k in keep]) if n else ffi.NULL
        stored_sizes = ffi.new("size_t[]", [len(k[1]) for k in keep]) if n else ffi.NULL
        methods = ffi.new("uint8_t[]", [e.method for _, e in items]) if n else ffi.NULL
        raw_sizes = ffi.new("uint64_t[]", [e.raw_size for _, e in items]) if n else ffi.NULL
        checksums = ffi.new("uint64_t[]", [e.checksum for _, e in items]) if n else ffi.NULL
        err = ffi.new("prt_err *")
        need = ffi.new("size_t *")
        self.check(lib.prt_pack_stored_len(n, name_lens, stored_sizes, need, err), err, BundleFormatError)
        # every byte is written, and the result is a view (no copy out)
        out, view = _output_block(ffi, self._scratch, need[0])
        out_len = ffi.new("size_t *")
        rc = lib.prt_pack_stored(n, names, name_lens, methods, raw_sizes, checksums, stored, stored_sizes,
                                 out, need[0], out_len, err)
        self.check(rc, err, BundleFormatError)
        return view

    def _pack_head(self, items: Sequence[tuple[bytes, twin.PackedEntry]]) -> bytes:
        ffi, lib = self.ffi, self.lib
        n = len(items)
        keep = [ffi.from_buffer(name) for name, _ in items]
        names = ffi.new("char *[]", keep) if n else ffi.NULL
        name_lens = ffi.new("size_t[]", [len(k) for k in keep]) if n else ffi.NULL
        stored_sizes = ffi.new("size_t[]", [len(e.stored) for _, e in items]) if n else ffi.NULL
        methods = ffi.new("uint8_t[]", [e.method for _, e in items]) if n else ffi.NULL
        raw_sizes = ffi.new("uint64_t[]", [e.raw_size for _, e in items]) if n else ffi.NULL
        checksums = ffi.new("uint64_t[]", [e.checksum for _, e in items]) if n else ffi.NULL
        cap = lib.PRT_PACK_HEADER_SIZE + sum(twin.INDEX_REC.size + len(k) for k in keep)
        out = ffi.new("uint8_t[]", cap)
        out_len = ffi.new("size_t *")
        err = ffi.new("prt_err *")
        rc = lib.prt_pack_stored(n, names, name_lens, methods, raw_sizes, checksums, ffi.NULL, stored_sizes,
                                 out, cap, out_len, err)
        self.check(rc, err, BundleFormatError)
        return ffi.buffer(out, out_len[0])[:]

    def unpack_begin(self, data: Any, max_entry: int, max_total: int) -> _CUnpacking:
        """Check a container's header and index and set its output memory
        aside; :meth:`_CUnpacking.run` then unpacks ranges of entries."""
        src, entries, n, total, err = self._unpack_index(data, max_entry, max_total)
        block, mv = _output_block(self.ffi, self._scratch, total[0])
        raw = memoryview(data).cast("B")
        # the index records in one go (a cdata field read costs more than a tuple item)
        recs = list(_ENTRY.iter_unpack(self.ffi.buffer(entries, n * _ENTRY.size))) if n else []
        names = [bytes(raw[r[0]:r[0] + r[1]]) for r in recs]
        views = [mv[r[7]:r[7] + r[3]] for r in recs]
        return _CUnpacking(self, src, entries, n, block, total[0], names, views, [r[3] for r in recs])

    def unpack_views(self, data: Any, max_entry: int, max_total: int,
                     nthreads: int) -> tuple[list[bytes], list[memoryview], list[str]]:
        u = self.unpack_begin(data, max_entry, max_total)
        u.run(0, len(u.names), nthreads)
        return u.names, u.views, u.digests()

    def table_is_plain(self, hashes: Sequence[str], kernel_files: Sequence[int], names: Sequence[str],
                       numbers: Sequence[int], blob_lens: Sequence[int]) -> bool:
        """prt_table_is_plain (see :func:`pyruntime.bundle.rules.table_is_plain`);
        a hash or name that is not a string or does not encode, or a number
        that is not an integer of 64 bits, is not plain either."""
        ffi = self.ffi
        n = len(names)
        if len(numbers) != 3 * n:
            return False
        try:
            hbuf = ("\0".join(hashes) + "\0").encode() if hashes else b""
            nbuf = ("\0".join(names) + "\0").encode() if names else b""
            # array() refuses floats, strings and what is out of range (bools
            # pass as 0 and 1: the caller keeps them out)
            cols = ffi.from_buffer("uint64_t[]", array("Q", numbers)) if n else ffi.NULL
            lens = ffi.from_buffer("uint64_t[]", array("Q", blob_lens)) if blob_lens else ffi.NULL
            counts = ffi.from_buffer("uint32_t[]", array(_U32, kernel_files)) if kernel_files else ffi.NULL
        except (TypeError, UnicodeEncodeError, OverflowError):
            return False
        return self.lib.prt_table_is_plain(hbuf, len(hbuf), len(hashes), counts, nbuf, len(nbuf), n,
                                           cols, lens, len(blob_lens), ffi.NULL) == 0

    # -- kernel directories -------------------------------------------------
    def read_files(self, directory: str, names: Sequence[str | None], offsets: Sequence[int],
                   sizes: Sequence[int], out: bytearray) -> None:
        ffi, lib = self.ffi, self.lib
        n = len(names)
        keep = [ffi.NULL if x is None else ffi.new("char[]", x.encode()) for x in names]
        err = ffi.new("prt_err *")
        rc = lib.prt_read_files(os.fsencode(directory), n, ffi.new("char *[]", keep) if n else ffi.NULL,
                                ffi.new("uint64_t[]", offsets) if n else ffi.NULL,
                                ffi.new("uint64_t[]", sizes) if n else ffi.NULL,
                                ffi.from_buffer(out), len(out), err)
        if rc == lib.PRT_E_CHANGED:
            raise twin.FileChanged(ffi.string(err.msg).decode("utf-8", "replace"))
        self.check(rc, err, OSError)

    def write_kernels(self, root: str, table: twin.FileTable, jobs: Sequence[twin.KernelJob], nthreads: int,
                      do_fsync: bool, swap: twin.Swap | None = None, *, replace: bool = False,
                      after_file: Any = None) -> list[twin.Written]:
        """See :func:`pyruntime.core.twin.write_kernels`."""
        if after_file is not None:
            raise ValueError("the C backend has no per-file hook")
        ffi, lib = self.ffi, self.lib
        twin.check_table_lengths(table)
        n, nblobs = len(table.names), len(table.blobs)
        blobs = [ffi.from_buffer(b) for b in table.blobs]
        names = ("\0".join(table.names) + "\0").encode() if n else b""
        job_names = "".join(f"{tmp}\0{final}\0" for tmp, final, _, _ in jobs).encode()
        sentinel, prefix = swap if swap is not None else (b"", b"")
        t = ffi.new("prt_file_table *")
        # the columns go through array(): a C-speed conversion, where
        # ffi.new converts list items one by one
        keep = (ffi.new("uint8_t *[]", blobs) if nblobs else ffi.NULL,
                ffi.new("size_t[]", [len(b) for b in blobs]) if nblobs else ffi.NULL,
                ffi.from_buffer(names),
                ffi.from_buffer("uint32_t[]", array(_U32, table.blob_of)) if n else ffi.NULL,
                ffi.from_buffer("uint64_t[]", array("Q", table.offs)) if n else ffi.NULL,
                ffi.from_buffer("uint64_t[]", array("Q", table.sizes)) if n else ffi.NULL,
                ffi.from_buffer(sentinel), ffi.from_buffer(prefix))
        t.blobs, t.blob_lens, t.names, t.blob_of, t.offs, t.sizes, t.sentinel, t.prefix = keep
        t.nblobs, t.names_len, t.nfiles = nblobs, len(names), n
        t.sentinel_len, t.prefix_len = len(sentinel), len(prefix)
        cjobs = ffi.new("prt_kernel_job[]", [(first, nfiles) for _, _, first, nfiles in jobs] or 1)
        err = ffi.new("prt_err *")
        rc = lib.prt_write_kernels(self.pool(), os.fsencode(root), t, job_names, len(job_names), cjobs, len(jobs),
                                   max(1, nthreads), int(do_fsync), int(bool(replace)), err)
        self.check(rc, err, OSError)
        return [twin.Written(cjobs[j].outcome, cjobs[j].bytes, cjobs[j].err_no) for j in range(len(jobs))]


class _CUnpacking:
    """A container being unpacked by the C core: ``names``, ``views`` (each
    entry's place in the output, valid once :meth:`run`, or :meth:`start`
    and then :meth:`finish`, covered it) and ``sizes`` of every entry.
    Calls cover disjoint entries; between :meth:`start` and :meth:`finish`
    pool threads write into the output."""

    def __init__(self, backend: CBackend, src: Any, entries: Any, n: int, block: Any, total: int,
                 names: list[bytes], views: list[memoryview], sizes: list[int]) -> None:
        self._backend, self._src, self._entries, self._n = backend, src, entries, n
        self._block, self._total = block, total
        self._hexes = backend.ffi.new("char[]", max(n, 1) * 33)
        self._job: Any = None
        self._job_pid = 0
        self.names, self.views, self.sizes = names, views, sizes

    def run(self, first: int, count: int, nthreads: int) -> None:
        """Decompress and verify entries ``first .. first + count - 1``;
        raises :class:`BundleFormatError` naming the lowest bad one."""
        b = self._backend
        err = b.ffi.new("prt_err *")
        rc = b.lib.prt_unpack_data_par(b.pool(), self._src, len(self._src), self._entries, self._n, first, count,
                                       self._block, self._total, self._threads(first, count, nthreads),
                                       self._hexes, err)
        b.check(rc, err, BundleFormatError)

    def _threads(self, first: int, count: int, nthreads: int) -> int:
        # a thread per UNPACK_PER_THREAD raw bytes, up to nthreads: handing
        # work to one costs about what decompressing that much does
        return max(1, min(nthreads, sum(self.sizes[first:first + count]) // UNPACK_PER_THREAD))

    def start(self, first: int, count: int, nthreads: int) -> None:
        """:meth:`run` on the C worker pool, returning at once; the caller
        must :meth:`finish` (in a ``finally``) before it reads the entries
        or drops this object. The caller's thread counts as one of
        ``nthreads``: busy meanwhile, it works on what is left in
        :meth:`finish`."""
        b = self._backend
        job = b.ffi.new("prt_unpack_job *")
        job.data, job.len, job.entries, job.n = self._src, len(self._src), self._entries, self._n
        job.first, job.count, job.out, job.out_len = first, count, self._block, self._total
        job.nthreads, job.hex128s = max(1, self._threads(first, count, nthreads) - 1), self._hexes
        b.check(b.lib.prt_unpack_start(b.pool(), job, b.ffi.NULL))
        self._job, self._job_pid = job, os.getpid()

    def finish(self) -> None:
        """Unpack what :meth:`start`'s helpers have not taken, wait for
        them; raises what :meth:`run` would."""
        job, self._job = self._job, None
        if job is None:
            return
        if self._job_pid != os.getpid():  # forked meanwhile: the thread is the parent's
            raise BundleFormatError("the bundle was being unpacked when this process forked; load it again")
        b = self._backend
        err = b.ffi.new("prt_err *")
        b.check(b.lib.prt_unpack_finish(job, err), err, BundleFormatError)

    def __del__(self) -> None:
        # never free what a running thread writes into
        if getattr(self, "_job", None) is not None and self._job_pid == os.getpid():
            self._backend.lib.prt_unpack_finish(self._job, self._backend.ffi.NULL)

    def digests(self) -> list[str]:
        """Each entry's XXH3-128 hex digest (after :meth:`run` covered it)."""
        raw = self._backend.ffi.buffer(self._hexes, self._n * 33)[:]
        return [raw[i * 33:i * 33 + 32].decode("ascii") for i in range(self._n)]


_U32 = next(t for t in "IL" if array(t).itemsize == 4)  # array typecode of uint32_t
# prt_entry as the C side lays it out (checked against the compiled module
# in CBackend.__init__): name_off, name_len, method, raw_size, comp_size,
# data_off, checksum, out_off
_ENTRY = struct.Struct("=QIIQQQQQ")

HUGE_OUTPUT = 8 << 20  # outputs this large get a mapping of their own
HUGE_PAGE = 2 << 20
UNPACK_PER_THREAD = 256 << 10  # raw bytes worth a thread of their own (~100 us of LZ4)


def _output_block(ffi: Any, scratch: Any, size: int) -> tuple[Any, memoryview]:
    """Memory for ``size`` bytes that C fills completely, and a read-only
    view of it that keeps it alive.

    Not a bytearray: that writes every page once (zero-fill) before the
    decompression writes it again. A large block is an anonymous mapping
    aligned to, and asking for, transparent huge pages, since at 4 KiB per
    page fault a 64 MiB bundle spends more time faulting than decompressing
    (private: Python's default shared mapping is tmpfs-backed and slower
    still). Smaller ones are malloc'ed, which a process reuses from one load
    to the next (a fresh huge page per load costs more than it saves below
    HUGE_OUTPUT; docs/PERFORMANCE.md has the measurements)."""
    if size >= HUGE_OUTPUT:
        return _mapped_block(ffi, size)
    block = scratch("uint8_t[]", max(size, 1))
    return block, memoryview(ffi.buffer(block, size)).toreadonly()


def _mapped_block(ffi: Any, size: int) -> tuple[Any, memoryview]:
    import mmap

    # one huge page of slack, so that the block can start on a boundary
    span = -(-size // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE
    m = mmap.mmap(-1, span, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -int(ffi.cast("uintptr_t", ffi.from_buffer(m))) % HUGE_PAGE
    if hasattr(m, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE, start, span - start)
        except OSError:
            pass  # no transparent huge pages here: 4 KiB pages it is
    view = memoryview(m)[start:start + size]
    return ffi.from_buffer(view), view.toreadonly()
