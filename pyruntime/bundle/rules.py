"""The bundle's rules: what is a valid kernel hash, file name, target,
version and ABI tag, what is litter, and the limits a reader enforces.

Every other bundle layer (model, format, collect, restore) checks names
with these functions, and the C core's kernel-table check
(``csrc/bundle_table.c``) restates them; :func:`table_is_plain` picks the
C check when the C core runs and the pure-Python one here otherwise.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from .. import core
from ..errors import BundleFormatError

REPLACE_SENTINEL = b"[REPLACE]"

# --------------------------------------------------------------------------
# limits: what a reader accepts at most, checked before the work they bound
# starts (docs/FORMAT.md, "Limits"), so that time, memory and disk stay
# proportional to the file and these numbers whatever the file says

#: Largest bundle file read (its size is checked before a byte is read).
MAX_BUNDLE_BYTES = 4 << 30
#: Largest total of unpacked bytes, and at most this many times the file's
#: size: LZ4 can declare 255x, real kernels compress 3-10x.
MAX_RAW_BYTES = 8 << 30
MAX_EXPANSION = 64
#: Largest ``header.json`` and ``kernels.json`` (unpacked), checked before
#: either is unpacked or parsed; parsed JSON costs up to ~20x its text.
MAX_HEADER_BYTES = 1 << 20
MAX_TABLE_BYTES = 16 << 20
#: Highest device index a kernel may name.
MAX_DEVICE = (1 << 31) - 1
#: Most targets a header may list.
MAX_TARGETS = 4096
#: Largest kernel file (the pack container's per-entry limit).
MAX_ARTIFACT_BYTES = 1 << 30
#: Largest ``.json`` kernel file once ``[REPLACE]`` became the kernel's
#: directory, and the most the sentinels of one restore may add in all
#: (besides, never more than the bundle's own unpacked bytes).
MAX_JSON_FILE_BYTES = 16 << 20
MAX_SENTINEL_GROWTH = 64 << 20

#: Characters of a hostile value quoted in a message.
SHOWN = 64


def shown(value: object) -> str:
    """``value`` for an error message: its repr cut to :data:`SHOWN`
    characters, in time and memory that do not grow with it."""
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value[:SHOWN])
        return text + ("..." if len(value) > SHOWN else "")
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


#: Prefix of in-flight restore and compile directories (ours and Triton's):
#: never a kernel, always litter once its writer is gone.
TMP_PREFIX = "tmp."
#: What Triton releases before 3.0 appended to a file while writing it in
#: place (``<name>.tmp.pid_<pid>_<random>``).
_TMP_INFIX = ".tmp.pid_"


def is_litter(name: str) -> bool:
    """Whether a cache entry called ``name`` (at the top of a cache or in a
    kernel directory) is a writer's in-flight or leftover state: ``tmp.*``
    (restores, Triton's compiles) or ``*.tmp.pid_*`` (older Triton). The one
    rule for both sides: the reader refuses such kernel hashes and file
    names, ``cache clean`` removes nothing else, and the directory digest
    skips them (:func:`pyruntime.hashing.hash_dir`)."""
    return name.startswith(TMP_PREFIX) or _TMP_INFIX in name


#: A restore's in-flight kernel directory (at the top of the cache):
#: ``tmp.pid_<pid>_prt<12 hex>_<n>``, ``r<k>`` appended when a cleaner took
#: the first name. Its writer holds an flock on it for its whole life, which
#: is what tells it is in use: the pid is for people only (in another PID
#: namespace it names another process or none).
_RESTORE_TMP_RE = re.compile(r"tmp\.pid_[0-9]{1,10}_prt[0-9a-f]{12}_[0-9]{1,10}(?:r[0-9])?")


def restore_tmp_name(pid: int, token: str, n: int) -> str:
    return f"tmp.pid_{pid}_prt{token}_{n}"


def is_restore_tmp(name: str) -> bool:
    """Whether ``name`` is one of :func:`restore_tmp_name`'s (a directory
    its writer keeps locked; Triton's ``tmp.pid_<pid>_<uuid>`` are not)."""
    return _RESTORE_TMP_RE.fullmatch(name) is not None

#: Extensions of the binary artifact of a kernel, one per backend; the kernel
#: name reported in the metadata is the stem of the file that has one.
GPU_KERNEL_BIN_EXTS: dict[str, str] = {
    "cuda": ".cubin",
    "hip": ".hsaco",
    "xpu": ".spv",
    "xpu-ze": ".zebin",
}
_BIN_EXTS = frozenset(GPU_KERNEL_BIN_EXTS.values())
_BIN_EXT_NAMES = frozenset(e[1:] for e in _BIN_EXTS)

_BIN_SUFFIXES = tuple(sorted("." + e for e in _BIN_EXT_NAMES))


def kernel_names_in(file_names: Iterable[str]) -> list[str]:
    """The kernel names among file names: stems of binary artifacts (as
    :func:`os.path.splitext` sees them: a stem of only dots has no
    extension), in order."""
    stems = [n.rpartition(".")[0] for n in file_names if n.endswith(_BIN_SUFFIXES)]
    return [s for s in stems if s.strip(".")]


# A kernel hash names a directory in the cache: Triton's base32 keys and
# Inductor's hex keys both fit. Litter names (is_litter) are reserved.
_HASH_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")


def is_kernel_hash(name: str) -> bool:
    """Whether ``name`` is a kernel hash :func:`check_kernel_hash` accepts."""
    return _HASH_RE.fullmatch(name) is not None and not is_litter(name)
MAX_FILE_NAME = 255

# Triton writes these next to kernels; they are not part of a kernel.
_SKIP_FILES = frozenset({"lock"})



def check_kernel_hash(kernel_hash: object) -> str:
    """Return ``kernel_hash`` if it is a safe cache directory name, else raise
    :class:`BundleFormatError` naming the problem."""
    if not isinstance(kernel_hash, str):
        raise BundleFormatError(f"kernel hash must be a string, not {type(kernel_hash).__name__}")
    if not is_kernel_hash(kernel_hash):
        raise BundleFormatError(
            f"kernel hash {shown(kernel_hash)} is not a plain directory name "
            "(1-128 of A-Z a-z 0-9 _ - ., not starting with '.' or 'tmp.', without '.tmp.pid_')"
        )
    return kernel_hash


_PLAIN_ASCII_RE = re.compile(r"[\x20-\x2e\x30-\x5b\x5d-\x7e]{1,255}")  # printable ASCII except / and \\


def check_file_name(name: object, kernel_hash: str = "?") -> str:
    """Return ``name`` if it is a plain file name (no path separator, NUL or
    control character, not ``.``/``..``, at most 255 UTF-8 bytes) and not
    litter (:func:`is_litter`: Triton never writes such a final file, and
    ``cache clean`` would remove it from the restored kernel)."""
    if type(name) is str and _PLAIN_ASCII_RE.fullmatch(name) and name not in (".", "..") \
            and name not in _SKIP_FILES and not is_litter(name):
        return name  # the common case, one regex
    if not isinstance(name, str):
        raise BundleFormatError(f"kernel {kernel_hash}: file name must be a string, not {type(name).__name__}")
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or not name.isprintable()
        or name in _SKIP_FILES
    )
    if bad:
        raise BundleFormatError(f"kernel {kernel_hash}: {shown(name)} is not a plain file name")
    if is_litter(name):
        raise BundleFormatError(f"kernel {kernel_hash}: file name {shown(name)} is reserved for in-flight "
                                "writes (tmp.* or *.tmp.pid_*), which `cache clean` removes")
    try:
        if len(name.encode("utf-8")) > MAX_FILE_NAME:
            raise BundleFormatError(f"kernel {kernel_hash}: file name {shown(name)} is over {MAX_FILE_NAME} bytes")
    except UnicodeEncodeError:
        raise BundleFormatError(f"kernel {kernel_hash}: file name {shown(name)} is not valid UTF-8") from None
    return name


def check_target(target: object) -> str | None:
    if target is None:
        return None
    if not isinstance(target, str) or not target or len(target) > 64 or not target.isprintable():
        raise BundleFormatError(f"target {shown(target)} is not a short printable string like 'cuda:90'")
    return target


_ABI_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def check_abi(abi: object) -> str | None:
    """Return ``abi`` if it is ``None`` or a short ABI tag such as
    ``"cpython-312-x86_64-linux-gnu"``, else raise :class:`BundleFormatError`."""
    if abi is None:
        return None
    if not isinstance(abi, str) or not _ABI_RE.fullmatch(abi):
        raise BundleFormatError(
            f"triton_abi {shown(abi)} is not an ABI tag like 'cpython-312-x86_64-linux-gnu' (1-64 of A-Z a-z 0-9 _ - .)"
        )
    return abi


_PLATFORM_RE = re.compile(r"[a-z0-9_]{1,24}-[a-z0-9_]{1,24}")


def check_platform(platform: object) -> str | None:
    """Return ``platform`` if it is ``None`` or a tag such as ``"linux-x86_64"``."""
    if platform is None:
        return None
    if not isinstance(platform, str) or not _PLATFORM_RE.fullmatch(platform):
        raise BundleFormatError(f"platform {shown(platform)} is not a tag like 'linux-x86_64'")
    return platform


def check_kind(kind: object, kernel_hash: str = "?") -> str:
    """Return ``kind`` if it is ``"kernel"``, ``"host"`` or ``"autotune"``."""
    if kind not in ("kernel", "host", "autotune"):
        raise BundleFormatError(f"kernel {kernel_hash}: kind {shown(kind)} is not 'kernel', 'host' or 'autotune'")
    return kind  # type: ignore[return-value]


def check_version(version: object, what: str) -> str | None:
    if version is None:
        return None
    if not isinstance(version, str) or not version or len(version) > 128 or not version.isprintable():
        raise BundleFormatError(f"{what} {shown(version)} is not a short printable string")
    return version



def table_is_plain(hashes: Sequence[str], kernel_files: Sequence[int], names: Sequence[str],
                   numbers: Sequence[int], blob_lens: Sequence[int]) -> bool:
    """Whether a kernel table passes every check of the bundle reader's
    common case in one call (the reader checks item by item when not):
    the C core's ``prt_table_is_plain`` when it runs, else the same rules
    in Python. ``numbers`` holds each file's blob index, then each one's
    offset, then each one's size."""
    fast = getattr(core.backend, "table_is_plain", None)
    if fast is not None:
        return fast(hashes, kernel_files, names, numbers, blob_lens)
    return _table_is_plain_py(hashes, kernel_files, names, numbers, blob_lens)


def _table_is_plain_py(hashes: Sequence[str], kernel_files: Sequence[int], names: Sequence[str],
                   numbers: Sequence[int], blob_lens: Sequence[int]) -> bool:
    """The pure-Python side of prt_table_is_plain (csrc/bundle_table.c,
    which restates these rules in C): whether a kernel table passes every check of the
    bundle reader's common case (the reader checks item by item when not).
    ``numbers`` holds each file's blob index, then each one's offset, then
    each one's size; each must be an integer from 0 to 2**64 - 1."""
    n = len(names)
    if not all(type(x) is str for x in [*hashes, *names]) or len(numbers) != 3 * n \
            or not all(type(x) is int and 0 <= x < 1 << 64 for x in numbers):
        return False
    if not all(map(is_kernel_hash, hashes)) or len(set(hashes)) != len(hashes):
        return False
    if not all(map(_PLAIN_ASCII_RE.fullmatch, names)) or not _SKIP_FILES.isdisjoint(names) \
            or not {".", ".."}.isdisjoint(names) or any(map(is_litter, names)):
        return False
    first = 0
    for count in kernel_files:
        if first + count > n or len(set(names[first:first + count])) != count:
            return False
        first += count
    if first != n:
        return False
    pos = [0] * len(blob_lens)
    for blob, off, size in sorted(zip(numbers[:n], numbers[n:2 * n], numbers[2 * n:])):
        if blob >= len(blob_lens) or off != pos[blob] or size > blob_lens[blob] - off:
            return False
        pos[blob] = off + size
    return pos == list(blob_lens)
