"""torch.compile warm start from one verified file.

:func:`save_compile_artifacts` (after a compiled model ran) writes one
file holding what torch needs for a warm start in a new process, and
:func:`load_compile_artifacts` (in a new process, before the model is
compiled) verifies the whole file, then puts each part where torch and
Triton look for it:

``megacache``
    the bytes of torch's Mega-Cache (``torch.compiler.save_cache_artifacts``:
    FX graph, AOTAutograd, autotune and PGO entries), one opaque blob that
    only torch decodes, with ``torch.compiler.load_cache_artifacts``. Its
    entries are pickles: pyruntime never unpickles anything.
``triton``
    the Triton kernels of the run (every complete kernel directory of the
    Triton cache Inductor used for each device), binaries included, as a
    pyruntime Triton bundle (data only, docs/FORMAT.md "Bundle file").
``autotune``
    Inductor's autotuning results: ``*.best_config`` files next to the
    kernels' code and the ``cache/<system>`` file of GEMM timings, checked
    to be JSON objects.
``cpp``
    native libraries Inductor's C++ backend built (``<cache>/<xx>/*.so`` and
    ``*.o``): without them a warm start on the CPU recompiles every C++
    kernel. Built with ``-march=native``, so they are written only where the
    CPU has every feature of the one that built them.
``triton_module``
    Triton's compiled driver and launcher modules (``cuda_utils*.so``,
    ``__triton_launcher*.so``), which Triton otherwise builds with the C
    compiler in each new cache.

Verification comes first and covers everything: the pack container's
checksums (XXH3-64 of the index and of each entry), the manifest's keys,
types, names and paths, the SHA-256 of every part against the manifest,
the Triton bundle's own checks, the JSON of every autotune file, and, when
the file is signed or a signature is required, the ed25519 signature over
the content digest (SHA-256 of the manifest). Only then is anything written
to a cache or handed to torch. The format is in docs/FORMAT.md ("torch
artifacts file"); usage in docs/TORCH.md.

Trust: a file that passes verification is exactly what its writer saved,
but what it carries is code (torch's pickled cache entries, generated
Python, compiled libraries): load only files you trust. A launcher that must
know where a file comes from requires a signature from its own key
(``trusted_keys=[...]``); signing needs the ``cryptography`` package
(``pip install pyruntime[sign]``), imported only to sign or check a signature.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import re
import stat
import sys
import sysconfig
import time
import warnings
from importlib import metadata
from typing import Any, Iterable, Literal, Union

from .. import TritonBundle, collect_dir
from .._atomic import write_atomic
from .._version import __version__
from ..errors import BundleCompatibilityError, BundleFormatError, PyRuntimeError
from ..packing import pack, unpack

__all__ = [
    "ArtifactsInfo",
    "CacheKindReport",
    "LoadReport",
    "SaveSummary",
    "SignatureError",
    "generate_signing_key",
    "load_compile_artifacts",
    "public_key_hex",
    "read_compile_artifacts",
    "save_compile_artifacts",
    "sign_compile_artifacts",
]

FORMAT = "pyruntime-torch-artifacts"
FORMAT_VERSION = 1
#: prefix of the bytes whose SHA-256 is the content digest
DIGEST_DOMAIN = b"pyruntime-torch-artifacts/1\n"
#: prefix of the message an ed25519 signature signs (then the digest's 64 hex digits)
SIGNATURE_DOMAIN = b"pyruntime-torch-artifacts/1 signature\n"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"

PART_KINDS = ("megacache", "triton", "autotune", "cpp", "triton_module")
FILE_KINDS = ("autotune", "cpp", "triton_module")
#: cache kinds of the report, in display order (torch's Mega-Cache types map onto the first ones)
REPORT_KINDS = ("fx_graph", "aot_autograd", "autotune", "triton", "cpp", "triton_module", "pgo", "precompile")
_MEGA_TYPES = {"inductor": "fx_graph", "aot_autograd": "aot_autograd", "autotune": "autotune",
               "pgo": "pgo", "precompile": "precompile"}

MismatchPolicy = Literal["warn", "error", "force"]
KeyLike = Union[str, bytes, "os.PathLike[str]", Any]

log = logging.getLogger("pyruntime.torch")

# limits a reader holds a file to, before the work they bound
MAX_MANIFEST = 16 << 20
MAX_PARTS = 100_000
MAX_KEYS = 100_000
MAX_DEVICE = 4095
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_HEX128 = re.compile(r"[0-9a-f]{128}\Z")
# a directory or file name inside a cache: plain, printable, no separators
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}\Z")
# Inductor's code-cache directories are short hash prefixes (<cache>/<xx>/)
_CODE_DIR = re.compile(r"[A-Za-z0-9_]{1,16}\Z")
_RESERVED_DIRS = frozenset({"fxgraph", "aotautograd", "triton", "locks", "cache", "dynamo", "precompiled_headers"})
_ROOT = re.compile(r"(inductor|triton_home|triton:(\d{1,4}))\Z")
_CPU_FLAG = re.compile(r"[A-Za-z0-9_.]{1,64}\Z")
_ENV_KEYS = {"torch", "triton", "python", "ext_suffix", "machine", "cpu_flags", "cuda", "gpu"}


class SignatureError(BundleFormatError):
    """A signature is missing where one is required, made by a key that is
    not trusted, or does not match the file. Nothing was written."""


def _shown(value: object, limit: int = 64) -> str:
    """A hostile value quoted for a message, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit] + "..." if len(text) > limit else text)


def _fail(msg: str) -> BundleFormatError:
    return BundleFormatError(msg)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _fail(f"duplicate key {_shown(k)}")
        out[k] = v
    return out


def _parse_json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except BundleFormatError as e:
        raise _fail(f"{what}: {e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(f"{what} is not valid JSON ({type(e).__name__})") from None


def content_digest(manifest: bytes) -> str:
    """The content digest: SHA-256 (hex) of the domain line and the manifest,
    which lists the SHA-256 of every part."""
    return hashlib.sha256(DIGEST_DOMAIN + manifest).hexdigest()


# --------------------------------------------------------------------------
# the environment a file was made in


def _cpu_flags() -> list[str] | None:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``), sorted; None when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("flags", "features"):
                    return sorted({w for w in value.split() if _CPU_FLAG.match(w)})
    except OSError:
        pass
    return None


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _triton_version() -> str | None:
    mod = sys.modules.get("triton")
    version = getattr(mod, "__version__", None)
    return version if isinstance(version, str) else _dist_version("triton", "pytorch-triton")


def _gpu_name(torch: Any) -> str | None:
    """This process's GPU 0 as ``"<name> (<arch>)"``, only when CUDA is
    already initialised (never initialises it)."""
    try:
        if not torch.cuda.is_initialized():
            return None
        props = torch.cuda.get_device_properties(0)
        arch = getattr(props, "gcnArchName", None) if torch.version.hip else f"sm_{props.major}{props.minor}"
        return f"{props.name} ({arch})"
    except Exception:  # a broken CUDA setup must not break a save or a report
        return None


def _environment(torch: Any) -> dict[str, Any]:
    return {
        "torch": str(torch.__version__),
        "triton": _triton_version(),
        "python": platform.python_version(),
        "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX") or None,
        "machine": platform.machine() or None,
        "cpu_flags": _cpu_flags(),
        "cuda": torch.version.cuda,
        "gpu": _gpu_name(torch),
    }


# --------------------------------------------------------------------------
# cache directories


def _inductor_dir(cache_dir: str | os.PathLike[str] | None) -> str:
    if cache_dir is not None:
        return os.path.abspath(os.fspath(cache_dir))
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env:
        return os.path.abspath(env)
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(default_cache_dir())


def _triton_dir(inductor: str, device: int) -> str:
    """Where Inductor keeps device ``device``'s Triton kernels (its own rule)."""
    env = os.environ.get("TRITON_CACHE_DIR")
    return os.path.abspath(env) if env else os.path.join(inductor, "triton", str(device))


def _triton_default_dir() -> str:
    """Triton's own default cache directory (``$TRITON_HOME/.triton/cache``,
    ``~/.triton/cache``): Triton builds its driver modules there when it
    starts before Inductor points ``TRITON_CACHE_DIR`` at its own cache."""
    home = os.environ.get("TRITON_HOME") or os.path.expanduser("~")
    return os.path.join(home, ".triton", "cache")


def _triton_home_dir() -> str:
    """Where Triton looks first for its modules here: ``TRITON_CACHE_DIR``
    when set, else its default directory."""
    env = os.environ.get("TRITON_CACHE_DIR")
    return os.path.abspath(env) if env else _triton_default_dir()


def _save_triton_dirs(inductor: str) -> list[tuple[int, str]]:
    """(device, directory) of every Triton cache Inductor used in this process."""
    found: list[tuple[int, str]] = []
    base = os.path.join(inductor, "triton")
    if os.path.isdir(base):
        for name in sorted(os.listdir(base), key=lambda n: (len(n), n)):
            path = os.path.join(base, name)
            if name.isdigit() and int(name) <= MAX_DEVICE and os.path.isdir(path):
                found.append((int(name), path))
    env = os.environ.get("TRITON_CACHE_DIR")
    if env and os.path.isdir(env):
        real = {os.path.realpath(p) for _, p in found}
        if os.path.realpath(env) not in real:
            found.append((0, os.path.abspath(env)))
    return found


def _root_dir(root: str, inductor: str) -> str:
    m = _ROOT.match(root)
    assert m is not None  # checked when the manifest was read
    if root == "inductor":
        return inductor
    if root == "triton_home":
        return _triton_home_dir()
    return _triton_dir(inductor, int(m.group(2)))


def _mapped_libraries() -> set[str] | None:
    """Real paths of the ``.so`` files mapped into this process, None where
    ``/proc/self/maps`` cannot be read."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {p for p in (line.split(None, 5)[5].strip() if line.count(" ") >= 5 else "" for line in f)
                     if p.startswith("/") and p.endswith(".so")}
    except (OSError, IndexError):
        return None
    return {os.path.realpath(p) for p in paths}


def _under(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` when it is a ``<dir>/<file>`` inside it."""
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)
    if len(parts) != 2 or parts[0] in (os.curdir, os.pardir):
        return None
    return "/".join(parts)


# --------------------------------------------------------------------------
# names and paths of the files a file carries


def _check_rel_path(kind: str, root: str, path: object) -> str:
    """The rules for where a carried file may go (docs/FORMAT.md)."""
    if not isinstance(path, str):
        raise _fail(f"{kind} part: path must be a string")
    parts = path.split("/")
    if len(parts) != 2 or not all(_NAME.match(p) for p in parts) or any(
            p.startswith("tmp.") or p == "lock" for p in parts):
        raise _fail(f"{kind} part: path {_shown(path)} is not <dir>/<file> of plain names")
    d, name = parts
    if kind == "autotune":
        ok = root == "inductor" and ((_CODE_DIR.match(d) and d not in _RESERVED_DIRS and name.endswith(".best_config"))
                                     or (d == "cache" and "." not in name))
    elif kind == "cpp":
        ok = (root == "inductor" and bool(_CODE_DIR.match(d)) and d not in _RESERVED_DIRS
              and name.endswith((".so", ".o")))
    else:  # triton_module
        ok = root != "inductor" and name.endswith(".so")
    if not ok:
        raise _fail(f"{kind} part: {_shown(path)} under root {_shown(root)} is not where {kind} files go")
    return path


# --------------------------------------------------------------------------
# signing keys (cryptography, imported only here)


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise PyRuntimeError("signing needs the cryptography package: pip install 'pyruntime[sign]'") from None
    return ed25519


def _key_bytes(key: Any, what: str) -> bytes:
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    if isinstance(key, str) and key.lstrip().startswith("-----BEGIN"):
        return key.encode("ascii", "replace")
    if isinstance(key, os.PathLike) or (isinstance(key, str) and not _HEX64.match(key.strip().lower())):
        path = os.fspath(key)
        try:
            with open(path, "rb") as f:
                return f.read(1 << 16)
        except OSError as e:
            raise PyRuntimeError(f"{what} {_shown(path)}: {e.strerror or e}") from None
    if isinstance(key, str):
        return key.strip().lower().encode("ascii")
    raise TypeError(f"{what} must be a key object, bytes, a hex string or a file path, not {type(key).__name__}")


def _private_key(key: Any) -> Any:
    ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raw = _key_bytes(key, "signing key")
    if raw.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            loaded = load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as e:
            raise PyRuntimeError(f"signing key: not a readable unencrypted PEM private key ({e})") from None
        if not isinstance(loaded, ed25519.Ed25519PrivateKey):
            raise PyRuntimeError(f"signing key: an ed25519 key is needed, not {type(loaded).__name__}")
        return loaded
    text = raw.strip()
    if _HEX64.match(text.decode("ascii", "replace")):
        raw = bytes.fromhex(text.decode("ascii"))
    if len(raw) != 32:
        raise PyRuntimeError("signing key: not an ed25519 private key (PEM, 32 raw bytes or 64 hex digits)")
    return ed25519.Ed25519PrivateKey.from_private_bytes(raw)


def public_key_hex(key: Any) -> str:
    """A public key (an ``Ed25519PublicKey``, PEM, 32 raw bytes, 64 hex
    digits, or a file holding one of these) as 64 hex digits."""
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        ed25519 = None
    if ed25519 is not None and isinstance(key, ed25519.Ed25519PublicKey):
        from cryptography.hazmat.primitives import serialization

        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    raw = _key_bytes(key, "trusted key")
    if raw.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        ed = _crypto()
        try:
            loaded = load_pem_public_key(raw)
        except (ValueError, TypeError) as e:
            raise PyRuntimeError(f"trusted key: not a readable PEM public key ({e})") from None
        if not isinstance(loaded, ed.Ed25519PublicKey):
            raise PyRuntimeError(f"trusted key: an ed25519 key is needed, not {type(loaded).__name__}")
        return public_key_hex(loaded)
    text = raw.strip().decode("ascii", "replace").lower()
    if _HEX64.match(text):
        return text
    if len(raw) == 32:
        return raw.hex()
    raise PyRuntimeError("trusted key: not an ed25519 public key (PEM, 32 raw bytes or 64 hex digits)")


def generate_signing_key(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> str:
    """Make an ed25519 key pair: the private key as unencrypted PKCS#8 PEM
    (mode 0600), the public key as one line of 64 hex digits (what
    ``trusted_keys`` and ``--trusted-key`` take). Returns the public key."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_path = os.fspath(private_path)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = public_key_hex(key.public_key())
    write_atomic(public_path, (pub + "\n").encode("ascii"))
    return pub


def _signature_entry(private_key: Any, digest: str) -> bytes:
    key = _private_key(private_key)
    sig = key.sign(SIGNATURE_DOMAIN + digest.encode("ascii"))
    return _json_bytes({"algorithm": "ed25519", "public_key": public_key_hex(key.public_key()),
                        "signature": sig.hex()})


# --------------------------------------------------------------------------
# reading and verifying


@dataclasses.dataclass
class Part:
    """One verified part of a file."""

    kind: str
    data: bytes
    root: str | None = None
    path: str | None = None
    device: int | None = None
    bundle: Any = None  # the decoded TritonBundle of a triton part


@dataclasses.dataclass
class ArtifactsInfo:
    """A verified file: its manifest, parts and signature status."""

    size: int
    content_digest: str
    pyruntime_version: str
    environment: dict[str, Any]
    megacache_keys: dict[str, list[str]]
    parts: list[Part]
    #: "unsigned", "verified (trusted key)", "verified (key not checked against a trusted list)",
    #: or "present, not checked (cryptography is not installed)"
    signature: str
    signed_by: str | None  # public key (hex) of a checked signature

    def count(self, kind: str) -> int:
        """Parts of ``kind`` (for ``triton``: kernels)."""
        if kind == "triton":
            return sum(len(p.bundle) for p in self.parts if p.kind == "triton")
        return sum(1 for p in self.parts if p.kind == kind)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (what ``torch inspect`` prints)."""
        kinds: dict[str, Any] = {}
        for p in self.parts:
            k = kinds.setdefault(p.kind, {"parts": 0, "bytes": 0})
            k["parts"] += 1
            k["bytes"] += len(p.data)
            if p.kind == "triton":
                k["kernels"] = k.get("kernels", 0) + len(p.bundle)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "pyruntime_version": self.pyruntime_version,
                "size": self.size, "content_digest": self.content_digest, "signature": self.signature,
                "signed_by": self.signed_by, "environment": self.environment,
                "megacache_entries": {k: len(v) for k, v in self.megacache_keys.items()}, "parts": kinds}


def _check_env(env: object) -> dict[str, Any]:
    if not isinstance(env, dict) or set(env) != _ENV_KEYS:
        raise _fail(f"manifest: environment must have exactly the keys {sorted(_ENV_KEYS)}")
    for k, v in env.items():
        if k == "cpu_flags":
            if v is not None and (not isinstance(v, list) or len(v) > 4096
                                  or not all(isinstance(f, str) and _CPU_FLAG.match(f) for f in v)):
                raise _fail("manifest: environment.cpu_flags must be null or a list of flag names")
        elif v is not None and (not isinstance(v, str) or len(v) > 256):
            raise _fail(f"manifest: environment.{k} must be null or a string of at most 256 characters")
    return env


def _check_megacache_keys(keys: object) -> dict[str, list[str]]:
    if not isinstance(keys, dict) or len(keys) > 64:
        raise _fail("manifest: megacache must be an object of key lists")
    total = 0
    for t, ks in keys.items():
        if not re.fullmatch(r"[a-z0-9_]{1,64}", t) or not isinstance(ks, list):
            raise _fail(f"manifest: megacache entry {_shown(t)} must be a list of keys")
        total += len(ks)
        if total > MAX_KEYS or not all(isinstance(k, str) and 0 < len(k) <= 512 for k in ks):
            raise _fail(f"manifest: megacache keys of {_shown(t)} must be strings of 1-512 characters")
    return keys


def _is_uint(v: object, top: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top


def _parse_manifest(raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    m = _parse_json(raw, MANIFEST)
    need = {"format", "format_version", "pyruntime_version", "environment", "megacache", "parts"}
    if not isinstance(m, dict) or set(m) != need:
        raise _fail(f"{MANIFEST} must be an object with exactly the keys {sorted(need)}")
    if m["format"] != FORMAT:
        raise _fail(f"not a torch artifacts file (format {_shown(m['format'])})")
    if m["format_version"] != FORMAT_VERSION:
        raise _fail(f"unknown format version {_shown(m['format_version'])} (this pyruntime reads {FORMAT_VERSION})")
    if not isinstance(m["pyruntime_version"], str) or len(m["pyruntime_version"]) > 64:
        raise _fail("manifest: pyruntime_version must be a short string")
    _check_env(m["environment"])
    _check_megacache_keys(m["megacache"])
    parts = m["parts"]
    if not isinstance(parts, list) or len(parts) > MAX_PARTS:
        raise _fail(f"manifest: parts must be a list of at most {MAX_PARTS}")
    seen: set[tuple[str, str]] = set()
    devices: set[int] = set()
    for i, p in enumerate(parts):
        if not isinstance(p, dict) or "kind" not in p:
            raise _fail(f"manifest: part {i} must be an object with a kind")
        kind = p["kind"]
        if kind not in PART_KINDS:
            raise _fail(f"manifest: part {i} has unknown kind {_shown(kind)}")
        keys = {"kind", "size", "sha256"} | ({"device", "kernels"} if kind == "triton" else set()) | (
            {"root", "path"} if kind in FILE_KINDS else set())
        if set(p) != keys:
            raise _fail(f"manifest: part {i} ({kind}) must have exactly the keys {sorted(keys)}")
        if not _is_uint(p["size"], 1 << 40) or not isinstance(p["sha256"], str) or not _HEX64.match(p["sha256"]):
            raise _fail(f"manifest: part {i} needs a size and a sha256 of 64 lowercase hex digits")
        if kind == "megacache" and any(q.get("kind") == "megacache" for q in parts[:i] if isinstance(q, dict)):
            raise _fail("manifest: more than one megacache part")
        if kind == "triton":
            if not _is_uint(p["device"], MAX_DEVICE) or not _is_uint(p["kernels"], 1 << 24):
                raise _fail(f"manifest: part {i} (triton) needs a device and a kernel count")
            if p["device"] in devices:
                raise _fail(f"manifest: two triton parts for device {p['device']}")
            devices.add(p["device"])
        if kind in FILE_KINDS:
            root = p["root"]
            if not isinstance(root, str) or not _ROOT.match(root) or (
                    root.startswith("triton:") and int(root[7:]) > MAX_DEVICE):
                raise _fail(f"manifest: part {i} ({kind}) has unknown root {_shown(root)}")
            path = _check_rel_path(kind, root, p["path"])
            if (root, path) in seen:
                raise _fail(f"manifest: {root}/{_shown(path)} appears twice")
            seen.add((root, path))
    return m, parts


def _check_signature(raw: bytes | None, digest: str, trusted: set[str] | None,
                     require: bool) -> tuple[str, str | None]:
    if raw is None:
        if require or trusted:
            raise SignatureError("the file is not signed, and a signature is required")
        return "unsigned", None
    sig = _parse_json(raw, SIGNATURE)
    need = {"algorithm", "public_key", "signature"}
    if not isinstance(sig, dict) or set(sig) != need:
        raise _fail(f"{SIGNATURE} must be an object with exactly the keys {sorted(need)}")
    if sig["algorithm"] != "ed25519":
        raise SignatureError(f"unknown signature algorithm {_shown(sig['algorithm'])}")
    pub, value = sig["public_key"], sig["signature"]
    if not isinstance(pub, str) or not _HEX64.match(pub) or not isinstance(value, str) or not _HEX128.match(value):
        raise _fail(f"{SIGNATURE}: public_key must be 64 and signature 128 lowercase hex digits")
    if trusted is not None and pub not in trusted:
        raise SignatureError(f"signed by key {pub[:16]}..., which is not a trusted key")
    try:
        ed25519 = _crypto()
    except PyRuntimeError:
        if require or trusted:
            raise
        return "present, not checked (cryptography is not installed)", None
    from cryptography.exceptions import InvalidSignature

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(pub)).verify(
            bytes.fromhex(value), SIGNATURE_DOMAIN + digest.encode("ascii"))
    except (InvalidSignature, ValueError):
        raise SignatureError(f"the signature by key {pub[:16]}... does not match the file's content") from None
    if trusted is not None:
        return "verified (trusted key)", pub
    return "verified (key not checked against a trusted list)", pub


def _trusted_set(trusted_keys: Iterable[KeyLike] | None) -> set[str] | None:
    if trusted_keys is None:
        return None
    if isinstance(trusted_keys, (str, bytes, os.PathLike)):
        trusted_keys = [trusted_keys]
    keys = {public_key_hex(k) for k in trusted_keys}
    if not keys:
        raise PyRuntimeError("trusted_keys is empty: no file could be accepted")
    return keys


def _read_file(path: str | os.PathLike[str]) -> bytes:
    path = os.fspath(path)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BundleFormatError(f"{path}: not a regular file")
        return f.read()


def read_compile_artifacts(source: str | os.PathLike[str] | bytes | bytearray | memoryview, *,
                           trusted_keys: Iterable[KeyLike] | None = None,
                           require_signature: bool = False) -> ArtifactsInfo:
    """Read and verify a torch artifacts file (a path, or its bytes) as a
    whole, writing nothing; raises :class:`~pyruntime.errors.BundleFormatError`
    (:class:`SignatureError` for signatures) naming the first problem.

    ``trusted_keys``: public keys (see :func:`public_key_hex`); the file must
    then be signed by one of them. ``require_signature`` alone needs
    ``trusted_keys`` (a signature by an unknown key proves nothing)."""
    if require_signature and trusted_keys is None:
        raise PyRuntimeError("require_signature needs trusted_keys: a signature by any key proves nothing")
    trusted = _trusted_set(trusted_keys)
    data = _read_file(source) if isinstance(source, (str, os.PathLike)) else bytes(source)
    entries = unpack(data)  # container checks: magic, index and entry checksums, names, sizes
    names = [n for n, _ in entries]
    if not names or names[0] != MANIFEST:
        raise _fail(f"not a torch artifacts file: the first entry is {_shown(names[0]) if names else 'missing'}, "
                    f"not {MANIFEST}")
    if len(entries[0][1]) > MAX_MANIFEST:
        raise _fail(f"{MANIFEST} is over {MAX_MANIFEST} bytes")
    manifest_raw = entries[0][1]
    m, parts = _parse_manifest(manifest_raw)
    signed = len(names) > 1 and names[1] == SIGNATURE
    first = 2 if signed else 1
    expected = [f"part.{i}" for i in range(len(parts))]
    if names[first:] != expected:
        raise _fail(f"entries do not match the manifest: expected {first + len(parts)} entries "
                    f"({MANIFEST}{', ' + SIGNATURE if signed else ''}, part.0 ... part.{len(parts) - 1}), "
                    f"found {len(names)}")
    digest = content_digest(manifest_raw)
    signature, signed_by = _check_signature(entries[1][1] if signed else None, digest, trusted, require_signature)
    out: list[Part] = []
    for i, (p, (_, blob)) in enumerate(zip(parts, entries[first:])):
        if len(blob) != p["size"]:
            raise _fail(f"part {i} ({p['kind']}) is {len(blob)} bytes, the manifest says {p['size']}")
        if hashlib.sha256(blob).hexdigest() != p["sha256"]:
            raise _fail(f"part {i} ({p['kind']}) does not match its SHA-256 in the manifest")
        part = Part(p["kind"], blob, p.get("root"), p.get("path"), p.get("device"))
        if part.kind == "triton":
            try:
                part.bundle = TritonBundle.from_bytes(blob)
            except BundleFormatError as e:
                raise _fail(f"part {i} (triton): {e}") from None
            if len(part.bundle) != p["kernels"]:
                raise _fail(f"part {i} (triton) holds {len(part.bundle)} kernels, the manifest says {p['kernels']}")
        elif part.kind == "autotune" and not isinstance(_parse_json(blob, f"part {i} (autotune)"), dict):
            raise _fail(f"part {i} (autotune) is not a JSON object")
        out.append(part)
    return ArtifactsInfo(len(data), digest, m["pyruntime_version"], m["environment"], m["megacache"], out,
                         signature, signed_by)


# --------------------------------------------------------------------------
# writing


@dataclasses.dataclass
class SaveSummary:
    """What :func:`save_compile_artifacts` wrote."""

    path: str
    size: int
    content_digest: str
    signed_by: str | None
    #: kind -> entries (megacache: per torch cache type; triton: kernels; others: files)
    counts: dict[str, int]
    environment: dict[str, Any]
    seconds: float
    #: what could not be carried, and why
    notes: list[str] = dataclasses.field(default_factory=list)


def _encode(manifest: dict[str, Any], blobs: list[bytes], sign_key: Any | None) -> tuple[bytes, str, str | None]:
    raw = _json_bytes(manifest)
    digest = content_digest(raw)
    entries: list[tuple[str, Any]] = [(MANIFEST, raw)]
    signed_by = None
    if sign_key is not None:
        sig = _signature_entry(sign_key, digest)
        signed_by = json.loads(sig)["public_key"]
        entries.append((SIGNATURE, sig))
    entries += [(f"part.{i}", b) for i, b in enumerate(blobs)]
    return pack(entries), digest, signed_by


def _file_part(kind: str, root: str, rel: str, data: bytes) -> tuple[dict[str, Any], bytes]:
    return ({"kind": kind, "root": root, "path": rel, "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}, data)


def _read_small(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _collect_autotune(inductor: str, notes: list[str]) -> list[tuple[dict[str, Any], bytes]]:
    out = []
    if not os.path.isdir(inductor):
        return out
    for d in sorted(os.listdir(inductor)):
        sub = os.path.join(inductor, d)
        if d == "cache" or not _CODE_DIR.match(d) or d in _RESERVED_DIRS or not os.path.isdir(sub):
            continue
        for name in sorted(os.listdir(sub)):
            if name.endswith(".best_config") and _NAME.match(name):
                data = _read_small(os.path.join(sub, name))
                if data is not None:
                    out.append(("autotune", f"{d}/{name}", data))
    cache = os.path.join(inductor, "cache")
    if os.path.isdir(cache):
        for name in sorted(os.listdir(cache)):
            if _NAME.match(name) and "." not in name and os.path.isfile(os.path.join(cache, name)):
                data = _read_small(os.path.join(cache, name))
                if data is not None:
                    out.append(("autotune", f"cache/{name}", data))
    parts = []
    for kind, rel, data in out:
        try:
            ok = isinstance(json.loads(data), dict)
        except ValueError:
            ok = False
        if ok:
            parts.append(_file_part(kind, "inductor", rel, data))
        else:
            notes.append(f"autotune: {rel} is not a JSON object; left out")
    return parts


def _collect_native(inductor: str, triton_dirs: list[tuple[int, str]],
                    notes: list[str]) -> list[tuple[dict[str, Any], bytes]]:
    """C++ kernel libraries of Inductor and Triton's driver and launcher
    modules that this process loaded (or, without ``/proc/self/maps``,
    every one in the caches)."""
    mapped = _mapped_libraries()
    roots: list[tuple[str, str, str]] = []  # (kind, root name, real directory); Triton dirs first
    for dev, d in triton_dirs:
        roots.append(("triton_module", f"triton:{dev}", os.path.realpath(d)))
    home = _triton_default_dir()  # not TRITON_CACHE_DIR: Inductor has set that to its own by now
    if os.path.isdir(home) and all(os.path.realpath(home) != r for _, _, r in roots):
        roots.append(("triton_module", "triton_home", os.path.realpath(home)))
    roots.append(("cpp", "inductor", os.path.realpath(inductor)))
    found: dict[tuple[str, str], tuple[str, str]] = {}  # (root, rel) -> (kind, real path)

    def consider(kind: str, root: str, real_root: str, real: str) -> None:
        rel = _under(real, real_root)
        if rel is None:
            return
        try:
            _check_rel_path(kind, root, rel)
        except BundleFormatError:
            return
        found.setdefault((root, rel), (kind, real))

    if mapped is not None:
        for real in sorted(mapped):
            for kind, root, real_root in roots:
                if real.startswith(real_root + os.sep):
                    consider(kind, root, real_root, real)
                    break
    else:
        for kind, root, real_root in roots:
            if root == "triton_home" or not os.path.isdir(real_root):
                continue  # Triton's own cache is shared by everything: only what this process mapped
            for d in sorted(os.listdir(real_root)):
                sub = os.path.join(real_root, d)
                if os.path.isdir(sub) and not (kind == "triton_module" and any(
                        n.startswith("__grp__") for n in os.listdir(sub))):
                    for name in sorted(os.listdir(sub)):
                        if name.endswith(".so"):
                            consider(kind, root, real_root, os.path.join(sub, name))
    # objects of Inductor's C++ builds (cpp_wrapper links them): every one, as they are not mapped
    real_inductor = os.path.realpath(inductor)
    if os.path.isdir(real_inductor):
        for d in sorted(os.listdir(real_inductor)):
            sub = os.path.join(real_inductor, d)
            if _CODE_DIR.match(d) and d not in _RESERVED_DIRS and os.path.isdir(sub):
                for name in sorted(os.listdir(sub)):
                    if name.endswith(".o"):
                        consider("cpp", "inductor", real_inductor, os.path.join(sub, name))
    parts = []
    for (root, rel), (kind, real) in sorted(found.items()):
        data = _read_small(real)
        if data is None:
            notes.append(f"{kind}: {rel} could not be read; left out")
            continue
        parts.append(_file_part(kind, root, rel, data))
    return parts


def save_compile_artifacts(path: str | os.PathLike[str], *, sign_key: KeyLike | None = None,
                           cache_dir: str | os.PathLike[str] | None = None,
                           native: bool = True) -> SaveSummary:
    """Write everything torch needs for a warm start of what this process
    compiled to one file at ``path`` (atomically); call it after the
    compiled model ran.

    It holds torch's Mega-Cache bytes, the Triton kernels (with binaries)
    of the Triton caches Inductor used, Inductor's autotuning results and,
    with ``native`` (the default), the native libraries this process loaded
    from the caches (Inductor's C++ kernels, Triton's driver and launcher
    modules). ``cache_dir`` is Inductor's cache directory (default: the one
    torch uses). Every kernel and result in those caches goes in, so export
    from a run with a fresh ``TORCHINDUCTOR_CACHE_DIR`` to carry just one
    model's. Save from a warm start (a second process on the first one's
    caches): Inductor compiles a few Triton kernels only then (the
    autotuned configs it reads back), and a file saved by the cold run
    lacks them. ``python -m pyruntime torch export`` does both.
    ``sign_key``: an ed25519 private key (PEM or raw; an object, bytes or a
    file path) to sign the file with (needs ``pyruntime[sign]``)."""
    import torch

    t0 = time.perf_counter()
    inductor = _inductor_dir(cache_dir)
    notes: list[str] = []
    manifest_parts: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    counts: dict[str, int] = {}

    mega = torch.compiler.save_cache_artifacts()
    mega_keys: dict[str, list[str]] = {}
    if mega is not None:
        data, info = mega
        mega_keys = {str(t): [str(k) for k in ks] for t, ks in info.artifacts.items() if ks}
        manifest_parts.append({"kind": "megacache", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        blobs.append(bytes(data))
        for t, ks in mega_keys.items():
            counts[f"megacache.{t}"] = len(ks)
    else:
        notes.append("megacache: torch recorded no cache artifacts in this process (did a torch.compile run? "
                     "are torch's caches disabled?)")

    triton_dirs = _save_triton_dirs(inductor)
    for dev, d in triton_dirs:
        bundle = collect_dir(d, device=dev)
        if len(bundle):
            raw = bundle.to_bytes()
            manifest_parts.append({"kind": "triton", "device": dev, "kernels": len(bundle), "size": len(raw),
                                   "sha256": hashlib.sha256(raw).hexdigest()})
            blobs.append(raw)
            counts["triton"] = counts.get("triton", 0) + len(bundle)

    files = _collect_autotune(inductor, notes)
    if native:
        files += _collect_native(inductor, triton_dirs, notes)
    for meta, data in files:
        manifest_parts.append(meta)
        blobs.append(data)
        counts[meta["kind"]] = counts.get(meta["kind"], 0) + 1
    if not blobs:
        raise PyRuntimeError("nothing to save: torch recorded no cache artifacts and the caches hold no kernels "
                             f"({inductor}); save after the compiled model ran")

    env = _environment(torch)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "pyruntime_version": __version__,
                "environment": env, "megacache": mega_keys, "parts": manifest_parts}
    data, digest, signed_by = _encode(manifest, blobs, sign_key)
    write_atomic(path, data)
    return SaveSummary(os.fspath(path), len(data), digest, signed_by, counts, env,
                       round(time.perf_counter() - t0, 4), notes)


def sign_compile_artifacts(path: str | os.PathLike[str], sign_key: KeyLike,
                           output: str | os.PathLike[str] | None = None) -> str:
    """Verify the file at ``path`` as a whole and write it (to ``output``,
    default in place, atomically) signed with ``sign_key``, replacing any
    signature it had. Returns the signer's public key (hex)."""
    data = _read_file(path)
    read_compile_artifacts(data)  # the whole file, so only what verifies gets signed
    entries = unpack(data)
    raw = entries[0][1]
    sig = _signature_entry(sign_key, content_digest(raw))
    rest = [e for e in entries[1:] if e[0] != SIGNATURE]
    write_atomic(output if output is not None else path, pack([(MANIFEST, raw), (SIGNATURE, sig), *rest]))
    return json.loads(sig)["public_key"]


# --------------------------------------------------------------------------
# the report


@dataclasses.dataclass
class CacheKindReport:
    """One cache kind of a :class:`LoadReport`."""

    kind: str
    in_file: int = 0  # entries the file holds (megacache: per torch's account; triton: kernels)
    loaded: int = 0  # written into the caches (handed to torch for the Mega-Cache)
    present: int = 0  # already in the cache, left alone
    skipped: int = 0  # not written (mismatch; see reasons)
    hits: int | None = None  # after the compile (None: torch does not count them)
    misses: int | None = None  # after the compile
    reasons: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Forward(logging.Handler):
    """Hands records at or above its level to ``parent`` (as propagation would)."""

    def __init__(self, parent: logging.Logger, level: int) -> None:
        super().__init__(level)
        self.parent = parent

    def emit(self, record: logging.LogRecord) -> None:
        self.parent.handle(record)


class _LogCapture(logging.Handler):
    """Catches torch's INFO lines on cache hits, misses and bypasses (the
    only place torch gives the reasons) without letting them reach torch's
    own handlers: the two loggers stop propagating while it is installed,
    and records at their former level or above are handed to the parent."""

    LOGGERS = ("torch._inductor.codecache", "torch._functorch._aot_autograd.autograd_cache")
    PATTERNS = (
        ("fx_graph", re.compile(r"Bypassing FX Graph Cache because '?(.*?)'?$", re.S), "bypass"),
        ("fx_graph", re.compile(r"fx graph cache miss for key (\S+)"), "miss"),
        ("aot_autograd", re.compile(r"Bypassing autograd cache due to: (.*)$", re.S), "bypass"),
        ("aot_autograd", re.compile(r"AOTAutograd cache miss for key (\S+)"), "miss"),
        ("aot_autograd", re.compile(r"AOTAutograd cache unable to load compiled graph: (.*)$", re.S), "error"),
    )

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[tuple[str, str, str]] = []  # (kind, what, detail)
        self._saved: list[tuple[logging.Logger, int, bool, logging.Handler | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.events) >= 200:
            return
        try:
            msg = record.getMessage()
        except Exception:
            return
        for kind, pattern, what in self.PATTERNS:
            m = pattern.search(msg)
            if m:
                self.events.append((kind, what, " ".join(m.group(1).split())[:300]))
                return

    def start(self) -> None:
        for name in self.LOGGERS:
            lg = logging.getLogger(name)
            former = lg.getEffectiveLevel()
            forward = None
            if former > logging.INFO and lg.parent is not None:
                forward = _Forward(lg.parent, former)
                lg.addHandler(forward)
            self._saved.append((lg, lg.level, lg.propagate, forward))
            lg.addHandler(self)
            if former > logging.INFO:
                lg.setLevel(logging.INFO)
                lg.propagate = False

    def stop(self) -> None:
        for lg, level, propagate, forward in self._saved:
            lg.removeHandler(self)
            if forward is not None:
                lg.removeHandler(forward)
            lg.setLevel(level)
            lg.propagate = propagate
        self._saved.clear()


def _list_names(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def _code_files(inductor: str, suffixes: tuple[str, ...]) -> set[str]:
    out: set[str] = set()
    for d in _list_names(inductor):
        if _CODE_DIR.match(d) and d not in _RESERVED_DIRS:
            out.update(f"{d}/{n}" for n in _list_names(os.path.join(inductor, d)) if n.endswith(suffixes))
    return out


def _snapshot(inductor: str, triton_dirs: list[str]) -> dict[str, set[str]]:
    return {
        "triton": {f"{d}\0{n}" for d in triton_dirs for n in _list_names(d) if not n.startswith("tmp.")},
        "cpp": _code_files(inductor, (".so",)),
        "autotune": _code_files(inductor, (".best_config",)),
    }


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_compile_artifacts` loaded, and, after
    :meth:`finish` (call it once the compiled model ran), what torch hit and
    missed, per cache kind, with the reasons torch or pyruntime gives."""

    path: str
    size: int
    content_digest: str
    signature: str
    signed_by: str | None
    environment: dict[str, Any]  # the file's
    kinds: dict[str, CacheKindReport]
    load_s: float
    notes: list[str] = dataclasses.field(default_factory=list)
    finished: bool = False
    _watch: Any = dataclasses.field(default=None, repr=False, compare=False)

    def kind(self, name: str) -> CacheKindReport:
        if name not in self.kinds:
            self.kinds[name] = CacheKindReport(name)
        return self.kinds[name]

    def finish(self) -> "LoadReport":
        """Read torch's counters, its log lines and the caches since the
        load: hits and misses per kind, with reasons. Idempotent."""
        if self.finished or self._watch is None:
            self.finished = True
            return self
        self._watch.finish(self)
        self._watch = None
        self.finished = True
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "content_digest": self.content_digest,
                "signature": self.signature, "signed_by": self.signed_by, "environment": self.environment,
                "load_s": self.load_s, "finished": self.finished, "notes": list(self.notes),
                "kinds": {k: v.to_dict() for k, v in self.kinds.items()}}

    def format(self) -> str:
        """The report as a small table and one line per reason."""
        rows = [["kind", "in file", "loaded", "present", "skipped", "hits", "misses"]]
        for k in REPORT_KINDS + tuple(sorted(set(self.kinds) - set(REPORT_KINDS))):
            r = self.kinds.get(k)
            if r is None:
                continue
            rows.append([k, str(r.in_file), str(r.loaded), str(r.present), str(r.skipped),
                         "-" if r.hits is None else str(r.hits), "-" if r.misses is None else str(r.misses)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        by = f" by {self.signed_by[:16]}..." if self.signed_by else ""
        lines = [(f"loaded {self.path} ({self.size} bytes, digest {self.content_digest[:16]}..., "
                  f"signature: {self.signature}{by}) in {self.load_s:.3f} s")]
        for row in rows:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if not self.finished:
            lines.append("(hits and misses: call finish() after the first compile)")
        for k, r in self.kinds.items():
            for reason in r.reasons:
                lines.append(f"  {k}: {reason}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class _Watch:
    """What :meth:`LoadReport.finish` compares with: torch's counters, the
    log capture and the caches' contents, as they were right after the load."""

    def __init__(self, torch: Any, inductor: str, triton_dirs: list[str], megacache_keys: dict[str, list[str]],
                 local_env: dict[str, Any], file_env: dict[str, Any]) -> None:
        from torch._dynamo.utils import counters

        self.counters = counters
        self.before = {g: dict(counters[g]) for g in ("inductor", "aot_autograd")}
        self.inductor = inductor
        self.triton_dirs = triton_dirs
        self.files = _snapshot(inductor, triton_dirs)
        self.keys = {_MEGA_TYPES.get(t, t): set(ks) for t, ks in megacache_keys.items()}
        self.torch = torch
        self.local_env = local_env
        self.file_env = file_env
        self.capture = _LogCapture()
        self.capture.start()

    def _delta(self, group: str, name: str) -> int:
        return int(self.counters[group].get(name, 0)) - int(self.before[group].get(name, 0))

    def _env_hint(self) -> str:
        diffs = []
        gpu = _gpu_name(self.torch)
        local = dict(self.local_env, gpu=gpu or self.local_env.get("gpu"))
        for k in ("torch", "triton", "python", "cuda", "gpu"):
            a, b = self.file_env.get(k), local.get(k)
            if a and b and a != b:
                diffs.append(f"{k} {a} there, {b} here")
        return f" (the file was made with {'; '.join(diffs)}: torch's cache keys include these)" if diffs else ""

    def finish(self, report: LoadReport) -> None:
        try:
            self.capture.stop()
            fx, aot = report.kind("fx_graph"), report.kind("aot_autograd")
            fx.hits = self._delta("inductor", "fxgraph_cache_hit")
            fx.misses = self._delta("inductor", "fxgraph_cache_miss") + self._delta("inductor", "fxgraph_cache_bypass")
            aot.hits = self._delta("aot_autograd", "autograd_cache_hit")
            aot.misses = (self._delta("aot_autograd", "autograd_cache_miss")
                          + self._delta("aot_autograd", "autograd_cache_bypass"))
            hint = self._env_hint()
            for kind, what, detail in self.capture.events:
                r = report.kind(kind)
                if what == "bypass":
                    r.reasons.append(f"bypassed: {detail}")
                elif what == "error":
                    r.reasons.append(f"entry found but not loaded: {detail}")
                elif detail in self.keys.get(kind, ()):
                    r.reasons.append(f"miss: key {detail[:16]}... is in the file, but none of its entries' guards "
                                     f"held (other input shapes or dynamic dimensions?){hint}")
                else:
                    r.reasons.append(f"miss: key {detail[:16]}... is not in the file (another graph, input shape, "
                                     f"torch config or environment than the export run){hint}")
            after = _snapshot(self.inductor, self.triton_dirs)
            new_triton = sorted(after["triton"] - self.files["triton"])
            kernels = [p for p in new_triton if any(n.startswith("__grp__")
                                                    for n in _list_names(os.path.join(*p.split("\0"))))]
            modules = [p for p in new_triton if p not in kernels]
            for kind, new, what in (
                    ("triton", kernels, ("kernel(s) not from the file (compiled here, or written by Inductor "
                                         "from its FX graph entries)")),
                    ("triton_module", modules, "Triton module(s) built here"),
                    ("cpp", sorted(after["cpp"] - self.files["cpp"]), "C++ kernel librar(ies) built here"),
                    ("autotune", sorted(after["autotune"] - self.files["autotune"]),
                     "kernel(s) autotuned here (no result in the file)")):
                if kind in report.kinds or new:
                    r = report.kind(kind)
                    r.misses = len(new)
                    if new:
                        shown = ", ".join(os.path.basename(n.replace("\0", "/"))[:40] for n in new[:3])
                        r.reasons.append(f"{len(new)} {what}: {shown}{', ...' if len(new) > 3 else ''}")
        finally:
            self.capture.stop()


# --------------------------------------------------------------------------
# loading


def _mismatches(file_env: dict[str, Any], here: dict[str, Any]) -> dict[str, str | None]:
    """Why each file kind would not be used here (None: fine)."""

    def differ(key: str) -> str | None:
        a, b = file_env.get(key), here.get(key)
        return f"made with {key} {a}, this is {b}" if a and b and a != b else None

    torch_r = differ("torch")
    if torch_r:
        torch_r += ": torch's cache keys include its version, none of these entries would hit"
    triton_r = differ("triton")
    machine_r = differ("machine")
    cpp_r = torch_r or machine_r
    if cpp_r is None:
        there, local = file_env.get("cpu_flags"), here.get("cpu_flags")
        if there is None or local is None:
            cpp_r = "the CPU features of the machine that built them, or of this one, are unknown"
        else:
            lacking = sorted(set(there) - set(local))
            if lacking:
                cpp_r = (f"built with -march=native on a CPU with features this one lacks "
                         f"({', '.join(lacking[:6])}{', ...' if len(lacking) > 6 else ''})")
    module_r = triton_r or machine_r or differ("ext_suffix")
    return {"megacache": torch_r, "autotune": torch_r, "cpp": cpp_r, "triton_module": module_r}


def load_compile_artifacts(path: str | os.PathLike[str], *, trusted_keys: Iterable[KeyLike] | None = None,
                           require_signature: bool = False, on_mismatch: MismatchPolicy = "warn",
                           cache_dir: str | os.PathLike[str] | None = None, native: bool = True,
                           watch: bool = True) -> LoadReport:
    """Verify the file at ``path`` as a whole, then write its parts into
    the caches (Inductor's ``cache_dir``, default the one torch uses, and
    the Triton caches Inductor derives from it) and hand the Mega-Cache to
    ``torch.compiler.load_cache_artifacts``. Call it before the model is
    compiled. Nothing is written, and torch is handed nothing, unless every
    check passes (:class:`~pyruntime.errors.BundleFormatError`,
    :class:`SignatureError`).

    ``trusted_keys``: the file must be signed by one of these ed25519 public
    keys (hex, PEM, raw, or files holding them). ``require_signature`` makes
    that explicit (it needs ``trusted_keys``).

    ``on_mismatch``: parts made under another torch, Triton, Python, machine
    or CPU (see :func:`_mismatches`) are skipped with the reason in the
    report and one warning (``"warn"``, the default), refused before
    anything is written (``"error"``, :class:`~pyruntime.errors.BundleCompatibilityError`),
    or written anyway (``"force"``). ``native=False`` writes no native
    library (C++ kernels, Triton modules).

    Returns a :class:`LoadReport`; with ``watch`` (the default) call its
    :meth:`~LoadReport.finish` once the compiled model ran, to learn what
    torch hit and missed and why."""
    import torch

    if on_mismatch not in ("warn", "error", "force"):
        raise ValueError(f"on_mismatch must be 'warn', 'error' or 'force', not {_shown(on_mismatch)}")
    t0 = time.perf_counter()
    info = read_compile_artifacts(path, trusted_keys=trusted_keys, require_signature=require_signature)

    # 1. decide everything before writing anything
    inductor = _inductor_dir(cache_dir)
    here = _environment(torch)
    reasons = _mismatches(info.environment, here)
    report = LoadReport(os.fspath(path), info.size, info.content_digest, info.signature, info.signed_by,
                        info.environment, {}, 0.0)
    autotune_paths = {p.path for p in info.parts if p.kind == "autotune"}
    for t, ks in info.megacache_keys.items():
        kind = _MEGA_TYPES.get(t, t)  # an autotune entry may be carried twice: count it once
        report.kind(kind).in_file += len([k for k in ks if not (kind == "autotune" and k in autotune_paths)])
    triton_parts = [p for p in info.parts if p.kind == "triton"]
    if triton_parts:
        report.kind("triton").in_file = sum(len(p.bundle) for p in triton_parts)
    todo: list[tuple[Part, str, str]] = []  # (part, report kind, destination)
    skipped: list[str] = []
    for p in info.parts:
        if p.kind not in FILE_KINDS:
            continue
        r = report.kind(p.kind)
        r.in_file += 1
        why = reasons[p.kind] if on_mismatch != "force" else None
        if why is None and not native and p.kind in ("cpp", "triton_module"):
            why = "native libraries not requested (native=False)"
        if why is not None:
            r.skipped += 1
            if f"skipped: {why}" not in r.reasons:
                r.reasons.append(f"skipped: {why}")
            skipped.append(f"{p.kind}: {why}")
            continue
        assert p.root is not None and p.path is not None
        todo.append((p, p.kind, os.path.join(_root_dir(p.root, inductor), *p.path.split("/"))))
    mega = next((p for p in info.parts if p.kind == "megacache"), None)
    mega_why = reasons["megacache"] if on_mismatch != "force" else None
    if mega is not None and mega_why is not None:
        for t, ks in info.megacache_keys.items():
            r = report.kind(_MEGA_TYPES.get(t, t))
            r.skipped += len(ks)
            r.reasons.append(f"skipped: {mega_why}")
        skipped.append(f"megacache: {mega_why}")
    if on_mismatch == "error":
        problems = list(skipped)
        if triton_parts and info.environment.get("triton") and here.get("triton") and \
                info.environment["triton"] != here["triton"]:
            problems.append(f"triton: made with triton {info.environment['triton']}, this is {here['triton']}")
        if problems:
            raise BundleCompatibilityError(f"{os.fspath(path)}: {problems[0]}"
                                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))

    # 2. write: Triton kernels first (a restore under on_mismatch="error" refuses before its first
    # write), then the files, then torch's own caches
    triton_dirs: list[str] = []
    for p in triton_parts:
        dest = _triton_dir(inductor, p.device or 0)
        triton_dirs.append(dest)
        os.makedirs(dest, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported below, with one warning for the whole file
            res = p.bundle.restore(dest, on_mismatch=on_mismatch)
        r = report.kind("triton")
        r.loaded += len(res.restored)
        r.present += len(res.existing)
        r.skipped += len(res.incompatible)
        for why in dict.fromkeys(res.incompatible.values()):
            r.reasons.append(f"skipped: {why}")
            skipped.append(f"triton: {why}")
    written: set[str] = set()  # autotune paths written or present (torch's Mega-Cache carries them too)
    for p, kind, dest in todo:
        r = report.kind(kind)
        if kind == "autotune" and p.path is not None:
            written.add(p.path)
        if os.path.lexists(dest):
            r.present += 1
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        write_atomic(dest, p.data)
        r.loaded += 1
    if mega is not None and mega_why is None:
        saved_env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor  # where torch's populate writes
        try:
            loaded = torch.compiler.load_cache_artifacts(mega.data)
        finally:
            if cache_dir is not None:
                if saved_env is None:
                    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
                else:
                    os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved_env
        if loaded is None:
            report.notes.append("torch could not read its Mega-Cache bytes (see torch's warning); "
                                "nothing of it was loaded")
        else:
            for t, ks in loaded.artifacts.items():
                kind = _MEGA_TYPES.get(t, t)
                report.kind(kind).loaded += len([k for k in ks if not (kind == "autotune" and k in written)])
    if not triton_dirs:
        triton_dirs.append(_triton_dir(inductor, 0))
    report.load_s = round(time.perf_counter() - t0, 4)
    skipped = list(dict.fromkeys(skipped))
    if skipped:
        warnings.warn(f"pyruntime: {os.fspath(path)}: parts skipped, torch will recompile them: {skipped[0]}"
                      + (f" (and {len(skipped) - 1} more; see the load report)" if len(skipped) > 1 else ""),
                      stacklevel=2)
    if watch:
        report._watch = _Watch(torch, inductor, triton_dirs, info.megacache_keys, here, info.environment)
    return report
