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
artifacts file"); usage in docs/TORCH.md. Reading, verifying and signing
need no torch and live in :mod:`pyruntime.artifacts_file` (re-exported
here); this module adds what needs torch: saving from a run, loading into
its caches, the load report.

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
import sys
import sysconfig
import time
import warnings
from importlib import metadata
from typing import Any, Iterable, Literal

from .. import collect_dir
from .._atomic import write_atomic
from .._version import __version__

# the format, torch-free, for the readers that need no torch (python -m pyruntime torch verify/inspect)
from ..artifacts_file import (
    _CODE_DIR,
    _CPU_FLAG,
    _MEGA_TYPES,
    _NAME,
    _RESERVED_DIRS,
    _ROOT,
    FILE_KINDS,
    FORMAT,
    FORMAT_VERSION,
    MAX_DEVICE,
    REPORT_KINDS,
    ArtifactsInfo,
    KeyLike,
    Part,
    SignatureError,
    _check_rel_path,
    _encode,
    _shown,
    generate_signing_key,
    public_key_hex,
    read_compile_artifacts,
    sign_compile_artifacts,
)
from ..errors import BundleCompatibilityError, BundleFormatError, PyRuntimeError

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

MismatchPolicy = Literal["warn", "error", "force"]

log = logging.getLogger("pyruntime.torch")

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
