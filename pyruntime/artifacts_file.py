"""The torch artifacts file: its format, reading and verifying it, signing.

No torch here: ``python -m pyruntime torch verify``, ``inspect``, ``sign``
and ``keygen`` work on a machine (a build farm's, a registry's) without
torch. Writing a file from a torch.compile run and loading one into torch's
caches are :mod:`pyruntime.torch.artifacts`, which re-exports what is here.

A file is a pack container (:mod:`pyruntime.packing`) of
``manifest.json``, optionally ``signature.json``, then one entry per part::

    manifest.json ---- content digest = SHA-256(DIGEST_DOMAIN + manifest)
      "parts": [{kind, name, size, sha256, ...}]        |
    signature.json --- ed25519 over SIGNATURE_DOMAIN + digest (optional)
    part 0 .. n-1 ---- bytes whose SHA-256 the manifest names

Verification comes first and covers everything (the container's
checksums, the manifest's keys, types, names and paths, every part's
SHA-256, the Triton bundle's own checks, the JSON of autotune files, the
signature when there is one or one is required); only then is a part
handed on. The format is in docs/FORMAT.md ("torch artifacts file").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
from typing import Any, Iterable, Union

from ._atomic import write_atomic
from .bundle import TritonBundle
from .errors import BundleFormatError, PyRuntimeError
from .packing import pack, unpack

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

KeyLike = Union[str, bytes, "os.PathLike[str]", Any]

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
