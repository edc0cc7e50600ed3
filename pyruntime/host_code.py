"""Host code for bundles: the C modules Triton would build with a compiler
on a GPU machine's first launches, built ahead of time on a machine without
a GPU and written into the Triton cache where Triton looks them up.

On a GPU machine Triton compiles, with gcc, per machine and Python ABI:

* Triton 3.6: ``cuda_utils`` (the driver glue) and one ``__triton_launcher``
  per launch signature (the argument types and constexpr positions);
* Triton 3.7 to 3.9: ``cuda_utils`` only (it holds one launcher for every
  signature).

Each lands in the cache in a directory of its own, named by a key Triton
computes from the C source (and, from 3.8, the build configuration, which
holds the GPU machine's paths): ``<key>/<module><EXT_SUFFIX>``.
:func:`build_host_code` produces those directories for the kernels of a
cache. The work runs in :mod:`pyruntime._host_worker`, in a subprocess of
the *target* interpreter: the Python (headers, ``EXT_SUFFIX``) and the
Triton (its generated source and cache key) of the GPU machine, which may
differ from the ones running this (``HostTarget.python``; a helper venv
with the GPU machine's Triton: :func:`helper_venv`). Triton's own functions
generate the source and compute the key; see the worker's docstring for
what each version does. Modules are linked against a stub ``libcuda.so.1``
(the driver's soname, as CUDA's ``stubs/`` are), so they need the driver
only where they run.

Each host directory also gets :data:`~pyruntime.bundle.collect.HOST_MARKER`
(which Triton, Python ABI and platform built it, how its key was made),
which Triton never reads. :func:`pyruntime.bundle.collect_dir` recognises a
host directory by Triton's module file names and bundles it as an entry of
kind ``"host"``, which a restore writes only on a matching machine.

Launch signatures: 3.6 needs the signature each kernel is launched with. It
comes from the kernel directory's ``pyruntime.spec.json`` (written by
``precompile``) when there is one, else from the kernel's TTIR (the runtime
arguments' types and names) and the ``@jit`` function's parameters (read
from its source file, which the TTIR's location names): every parameter the
TTIR lacks is a constexpr. TTIR types are signless, so a ``u32``/``u64``
argument reads as ``i32``/``i64`` there (a Python int is ``u64`` only from
2**63); such a launch misses and Triton builds its stub as before.
"""

from __future__ import annotations

import ast
import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Iterable, Mapping, Sequence

from ._version import __version__
from .bundle.collect import HOST_MARKER
from .errors import PyRuntimeError, one_line

__all__ = [
    "HostBuild",
    "HostCodeError",
    "HostModule",
    "HostTarget",
    "build_host_code",
    "default_build_dir",
    "helper_venv",
    "launch_signature",
    "probe_python",
    "resolve_python",
]

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_host_worker.py")
SPEC_FILE = "pyruntime.spec.json"  # written by precompile (pyruntime.specialize)


class HostCodeError(PyRuntimeError, RuntimeError):
    """Host code could not be built; the message is one line naming why."""


@dataclasses.dataclass(frozen=True)
class HostTarget:
    """The machine host code is built for.

    ``python``: the interpreter that runs the generator, whose headers,
    ``EXT_SUFFIX`` and Triton are the GPU machine's: a path, or a version
    (``"3.12"``: ``python3.12`` on ``PATH``, else pyenv's); ``None``: this
    interpreter. ``python_abi``: instead, find an interpreter with this ABI
    tag (``"cpython-312-x86_64-linux-gnu"``). ``triton_version``: with
    either, make (once) and use a helper venv of that interpreter with this
    Triton (:func:`helper_venv`; needs the package index).
    ``triton_dir`` and ``libcuda_dirs``: the GPU machine's Triton package
    directory and libcuda directories, which Triton 3.8+ hashes into the
    ``cuda_utils`` key (``None``: this install's Triton, and this machine's
    libcuda directories or, without a driver, ``/lib/<multiarch>``).
    ``cc``: the C compiler (default ``$CC``, gcc, clang)."""

    python: str | None = None
    python_abi: str | None = None
    triton_version: str | None = None
    triton_dir: str | None = None
    libcuda_dirs: tuple[str, ...] = ()
    cc: str | None = None


@dataclasses.dataclass(frozen=True)
class HostModule:
    """One host directory in the cache: ``key`` (its name), the module
    (``cuda_utils``, ``__triton_launcher``), its file, who it is for, the
    kernels that use it (all of them for ``cuda_utils``), and whether this
    call compiled it (``False``: it was there already)."""

    key: str
    module: str
    file: str
    triton_version: str
    triton_abi: str
    platform: str
    kernels: tuple[str, ...]
    built: bool
    glibc: str | None = None


@dataclasses.dataclass(frozen=True)
class HostBuild:
    """What :func:`build_host_code` did: the host ``modules``, the target
    (interpreter, Python version, Triton version, ABI tag, platform; empty
    strings when there were no CUDA kernels, and nothing was built),
    ``skipped`` kernels with the reason (no launcher could be made for
    them), ``warnings`` (one line each), ``notes`` (assumptions made, such
    as the GPU machine's paths in a Triton 3.8+ key) and ``key_paths`` (the
    paths that key holds, ``triton_dir`` and ``libcuda_dirs``)."""

    modules: tuple[HostModule, ...]
    python: str
    python_version: str
    triton_version: str
    triton_abi: str
    platform: str
    skipped: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    key_paths: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """The host directories' names (cache keys), ``cuda_utils`` first."""
        return [m.key for m in self.modules]

    def keys_for(self, kernel_hash: str) -> list[str]:
        """The host directories a launch of ``kernel_hash`` looks up."""
        return [m.key for m in self.modules if m.module == "cuda_utils" or kernel_hash in m.kernels]

    def summary(self) -> str:
        n_launch = sum(m.module == "__triton_launcher" for m in self.modules)
        built = sum(m.built for m in self.modules)
        what = "cuda_utils" + (f" + {n_launch} launcher stubs" if n_launch else "")
        return (f"host code: {what} for {self.triton_abi} ({self.platform}), Triton {self.triton_version}; "
                f"{built} built, {len(self.modules) - built} already in the cache")


def _cache_home() -> str:
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def default_build_dir() -> str:
    """Where stub libraries are kept (``$XDG_CACHE_HOME/pyruntime/host-build``)."""
    return os.path.join(_cache_home(), "pyruntime", "host-build")


# ------------------------------------------------------------------ interpreters


def _run_worker(python: str, mode: str, request: Mapping[str, Any], *, env: Mapping[str, str] | None = None,
                timeout: float = 600.0) -> dict[str, Any]:
    """Run the worker under ``python``; its reply, or :class:`HostCodeError`."""
    with tempfile.TemporaryDirectory(prefix="pyruntime-host-") as tmp:
        req_path = os.path.join(tmp, "request.json")
        reply_path = os.path.join(tmp, "reply.json")
        with open(req_path, "w", encoding="utf-8") as f:
            json.dump(request, f)
        try:
            p = subprocess.run([python, "-I", WORKER, mode, req_path, reply_path], stdin=subprocess.DEVNULL,
                               capture_output=True, env=dict(env or os.environ), timeout=timeout, check=False)
        except FileNotFoundError:
            raise HostCodeError(f"{python}: no such interpreter") from None
        except PermissionError:
            raise HostCodeError(f"{python}: not executable") from None
        except subprocess.TimeoutExpired:
            raise HostCodeError(f"building host code under {python} took over {timeout:.0f} s") from None
        try:
            with open(reply_path, encoding="utf-8") as f:
                reply = json.load(f)
        except (OSError, ValueError):
            tail = (p.stderr.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
            raise HostCodeError(f"{python} could not run the host-code worker (exit {p.returncode}): "
                                f"{one_line(tail)}") from None
    if "error" in reply:
        raise HostCodeError(one_line(f"{reply['error']} (under {python})"))
    return reply


def probe_python(python: str) -> dict[str, Any]:
    """``python``'s version, ``EXT_SUFFIX``, ABI tag, platform, headers and
    Triton (``triton_version`` is ``None`` when it has none)."""
    return _run_worker(python, "probe", {}, timeout=120.0)


_VERSION_RE = re.compile(r"(?:python)?(3\.\d{1,2})t?")


def _candidates(version: str | None = None) -> list[str]:
    """Interpreters on this machine: this one, ``python3.X`` on PATH, pyenv's."""
    out = [sys.executable]
    versions = [version] if version else [f"3.{m}" for m in range(8, 16)]
    for v in versions:
        p = shutil.which(f"python{v}")
        if p:
            out.append(p)
    root = os.environ.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")
    vdir = os.path.join(root, "versions")
    try:
        names = sorted(os.listdir(vdir), key=lambda n: [int(x) if x.isdigit() else -1 for x in re.split(r"[.]", n)],
                       reverse=True)
    except OSError:
        names = []
    for n in names:
        for v in versions:
            if n == v or n.startswith(v + "."):
                exe = os.path.join(vdir, n, "bin", f"python{v}")
                if os.access(exe, os.X_OK):
                    out.append(exe)
    return list(dict.fromkeys(out))


def _with_helper(python: str, target: HostTarget, probed: Mapping[str, Any] | None = None) -> str:
    if not target.triton_version:
        return python
    info = probed or probe_python(python)
    if info.get("triton_version") == target.triton_version:
        return python
    return helper_venv(python, target.triton_version)


def resolve_python(target: HostTarget | None = None) -> str:
    """The interpreter :func:`build_host_code` runs for ``target``: see
    :class:`HostTarget`. Raises :class:`HostCodeError` when none fits."""
    target = target or HostTarget()
    if target.python and target.python_abi:
        raise HostCodeError("give the target Python either as an interpreter or as an ABI tag, not both")
    if target.python:
        p = target.python
        m = _VERSION_RE.fullmatch(p)
        if m and os.sep not in p:
            here = f"{sys.version_info[0]}.{sys.version_info[1]}" == m.group(1)
            found = _candidates(m.group(1))[(0 if here else 1):]
            probes = []
            for c in found:  # those that run (a pyenv shim of a version not selected does not)
                try:
                    probes.append((c, probe_python(c)))
                except HostCodeError:
                    continue
            if not probes:
                raise HostCodeError(f"no python{m.group(1)} found on PATH or in pyenv; pass the interpreter's path")
            if target.triton_version:
                return _with_helper(probes[0][0], target, probes[0][1])
            with_triton = [c for c, info in probes if info.get("triton_version")]
            if not with_triton:
                raise HostCodeError(f"{probes[0][0]} has no Triton: make a venv of it with the GPU machine's Triton "
                                    "(pip install triton==X.Y.Z) and pass its python, or give the Triton version")
            return with_triton[0]
        if os.sep not in p:
            p = shutil.which(p) or p
        p = os.path.abspath(p)  # not realpath: a venv's python is a symlink that makes it the venv's
        if not os.access(p, os.X_OK) or os.path.isdir(p):
            raise HostCodeError(f"{target.python}: not an executable Python interpreter")
        return _with_helper(p, target)
    if target.python_abi:
        found = []
        for c in _candidates():
            try:
                info = probe_python(c)
            except HostCodeError:
                continue
            if info.get("abi") == target.python_abi:
                if target.triton_version:
                    return _with_helper(c, target, info)
                if info.get("triton_version"):
                    return c
                found.append(c)
        if found:
            raise HostCodeError(f"{found[0]} is {target.python_abi} but has no Triton: make a venv of it with the "
                                "GPU machine's Triton and pass its python, or give the Triton version")
        raise HostCodeError(f"no {target.python_abi} interpreter found (this one, python3.X on PATH, pyenv); "
                            "pass its path")
    return _with_helper(sys.executable, target)


def helper_venv(base_python: str, triton_version: str, root: str | None = None) -> str:
    """The python of a venv of ``base_python`` with ``triton==triton_version``
    (made once under ``root``, default ``$XDG_CACHE_HOME/pyruntime/host-venvs``;
    needs the package index the first time)."""
    if not re.fullmatch(r"[0-9]+(\.[0-9]+){1,3}([a-z0-9.+]*)", triton_version):
        raise HostCodeError(f"Triton version {triton_version!r} is not like 3.6.0")
    info = probe_python(base_python)
    root = root or os.path.join(_cache_home(), "pyruntime", "host-venvs")
    os.makedirs(root, exist_ok=True)
    venv = os.path.join(root, f"{info['abi']}-triton-{triton_version}")
    python = os.path.join(venv, "bin", "python")
    ready = os.path.join(venv, ".pyruntime-ready")
    with open(os.path.join(root, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(ready):
            return python
        shutil.rmtree(venv, ignore_errors=True)  # a half-made one
        for cmd, what in (([base_python, "-m", "venv", venv], "making the venv"),
                          ([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            f"triton=={triton_version}"], f"installing triton=={triton_version}")):
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               check=False)
            if p.returncode != 0:
                tail = (p.stdout.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
                raise HostCodeError(f"helper venv {venv}: {what} failed (exit {p.returncode}): {one_line(tail)}")
        with open(ready, "w") as f:
            f.write(f"{base_python}\ntriton=={triton_version}\n")
    return python


# ------------------------------------------------------------------ launch signatures

_SCALARS = {"i1": "i1", "i8": "i8", "i16": "i16", "i32": "i32", "i64": "i64",
            "f16": "fp16", "bf16": "bf16", "f32": "fp32", "f64": "fp64"}
_LOC_RE = re.compile(r'^#loc[0-9]* = loc\("((?:[^"\\]|\\.)*)":([0-9]+):[0-9]+\)', re.M)


class _NoSignature(Exception):
    pass


def _split_args(text: str) -> list[str]:
    args, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        args.append("".join(cur).strip())
    return args


def _ttir_args(ttir: str, name: str) -> list[tuple[str, str]]:
    """``(argument name, signature type)`` of the kernel function's runtime
    arguments, in order, from its TTIR."""
    head = f"@{name}("
    start = ttir.find(head)
    if start < 0:
        raise _NoSignature(f"no function @{name} in its TTIR")
    i = start + len(head)
    depth = 1
    j = i
    while j < len(ttir) and depth:
        depth += {"(": 1, ")": -1}.get(ttir[j], 0)
        j += 1
    out = []
    for arg in _split_args(ttir[i:j - 1]):
        m = re.match(r"%([A-Za-z0-9_$.\-]+)\s*:\s*(!tt\.ptr<[^>]*>|[A-Za-z0-9_.]+)", arg)
        if not m:
            raise _NoSignature(f"unreadable TTIR argument {arg[:40]!r}")
        ssa, ty = m.groups()
        loc = re.search(r'loc\("([^"]+)"', arg)
        argname = loc.group(1) if loc and re.fullmatch(r"arg[0-9]+", ssa) else ssa
        if ty.startswith("!tt.ptr<"):
            elem = ty[len("!tt.ptr<"):-1].split(",")[0].strip()
            out.append((argname, "*" + _SCALARS.get(elem, elem)))
        elif ty in _SCALARS:
            out.append((argname, _SCALARS[ty]))
        else:
            raise _NoSignature(f"argument {argname} has type {ty}, which a TTIR does not map back to a signature")
    return out


def _jit_params(ttir: str, name: str) -> list[str]:
    """The ``@jit`` function's parameter names, from the source file its TTIR's location names."""
    m = _LOC_RE.search(ttir)
    if not m:
        raise _NoSignature("its TTIR names no source location")
    path, line = m.group(1).encode().decode("unicode_escape"), int(m.group(2))
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError) as e:
        raise _NoSignature(f"its source {path} does not read ({type(e).__name__})") from None
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
    exact = [f for f in funcs if f.lineno == line or any(d.lineno == line for d in f.decorator_list)]
    pick = exact or (funcs if len(funcs) == 1 else [])
    if not pick:
        raise _NoSignature(f"no function {name} at {path}:{line}")
    a = pick[0].args
    if a.vararg or a.kwarg or a.kwonlyargs:
        raise _NoSignature(f"{name} takes *args, **kwargs or keyword-only arguments")
    return [p.arg for p in (*a.posonlyargs, *a.args)]


def launch_signature(kernel_dir: str) -> tuple[str, dict[str, Any], Any]:
    """``(kernel name, signature, tensordesc_meta)`` Triton 3.6's launcher
    is made from for the kernel in ``kernel_dir``: the signature maps every
    parameter to its type or ``"constexpr"``. Raises :class:`HostCodeError`
    naming why it cannot be known."""
    try:
        names = os.listdir(kernel_dir)
    except OSError as e:
        raise HostCodeError(f"{kernel_dir}: {e.strerror}") from None
    groups = sorted(n[7:-5] for n in names if n.startswith("__grp__") and n.endswith(".json"))
    if not groups:
        raise HostCodeError(f"{kernel_dir}: not a complete kernel directory (no __grp__*.json)")
    name = groups[0]
    try:
        with open(os.path.join(kernel_dir, f"{name}.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise HostCodeError(f"{kernel_dir}/{name}.json does not read: {e}") from None
    tensordesc_meta = meta.get("tensordesc_meta")
    try:
        with open(os.path.join(kernel_dir, SPEC_FILE), encoding="utf-8") as f:
            spec = json.load(f)
        sig = spec.get("signature")
        if spec.get("complete", True) and isinstance(sig, dict) and sig and \
                all(isinstance(v, str) and not v.startswith("(") for v in sig.values()):
            return name, dict(sig), tensordesc_meta
    except (OSError, ValueError, AttributeError):
        pass
    try:
        with open(os.path.join(kernel_dir, f"{name}.ttir"), encoding="utf-8") as f:
            ttir = f.read()
        args = _ttir_args(ttir, name)
        params = _jit_params(ttir, name)
    except OSError:
        raise HostCodeError(f"{kernel_dir}: no {SPEC_FILE} and no {name}.ttir to read its launch signature from") \
            from None
    except _NoSignature as e:
        raise HostCodeError(f"{name} ({os.path.basename(kernel_dir)}): launch signature unknown: {e}") from None
    runtime = dict(args)
    if len(runtime) != len(args) or not set(runtime) <= set(params):
        raise HostCodeError(f"{name} ({os.path.basename(kernel_dir)}): launch signature unknown: its TTIR arguments "
                            f"{', '.join(runtime)} are not parameters of the function ({', '.join(params)})")
    return name, {p: runtime.get(p, "constexpr") for p in params}, tensordesc_meta


# ------------------------------------------------------------------ building


def _kernel_info(cache_dir: str, h: str) -> dict[str, Any] | None:
    d = os.path.join(cache_dir, h)
    try:
        names = os.listdir(d)
    except OSError:
        return None
    for n in sorted(names):
        if n.startswith("__grp__") and n.endswith(".json"):
            try:
                with open(os.path.join(d, n[7:]), encoding="utf-8") as f:
                    return json.load(f)
            except (OSError, ValueError):
                return None
    return None


def build_host_code(
    cache_dir: str | os.PathLike[str],
    kernel_hashes: Iterable[str] | None = None,
    *,
    target: HostTarget | None = None,
    build_dir: str | os.PathLike[str] | None = None,
    timeout: float = 600.0,
) -> HostBuild:
    """Build the host code the CUDA kernels ``kernel_hashes`` of ``cache_dir``
    (default: every complete kernel directory there) need on a machine of
    ``target`` (default: this interpreter and its Triton), into
    ``cache_dir`` in Triton's layout. Modules already there are kept.

    Kernels whose launch signature cannot be known are ``skipped`` (with
    the reason; Triton builds their launcher on the GPU machine as before);
    anything else that goes wrong raises :class:`HostCodeError` (one line)."""
    cache = os.path.abspath(os.fspath(cache_dir))
    if not os.path.isdir(cache):
        raise HostCodeError(f"cache directory {cache} does not exist")
    target = target or HostTarget()
    if kernel_hashes is None:
        hashes = sorted(e.name for e in os.scandir(cache) if e.is_dir(follow_symlinks=False)
                        and not e.name.startswith("tmp."))
    else:
        hashes = list(dict.fromkeys(kernel_hashes))
    launchers: dict[str, dict[str, Any]] = {}
    skipped: list[tuple[str, str]] = []
    versions: set[str] = set()
    cuda = 0
    for h in hashes:
        meta = _kernel_info(cache, h)
        if meta is None:
            continue  # not a complete kernel directory (a host directory, say)
        tgt = meta.get("target")
        if not (isinstance(tgt, dict) and tgt.get("backend") == "cuda"):
            continue
        cuda += 1
        if isinstance(meta.get("triton_version"), str):
            versions.add(meta["triton_version"])
        try:
            _name, sig, tdm = launch_signature(os.path.join(cache, h))
        except HostCodeError as e:
            skipped.append((h, str(e)))
            continue
        k = json.dumps([sig, tdm], sort_keys=False)
        launchers.setdefault(k, {"signature": sig, "tensordesc_meta": tdm, "kernels": []})["kernels"].append(h)
    python = resolve_python(target)
    if not cuda:
        return HostBuild(modules=(), python=python, python_version="", triton_version="", triton_abi="", platform="")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_CACHE_MANAGER", "TRITON_REMOTE_CACHE_BACKEND")}
    env["TRITON_CACHE_DIR"] = cache
    request = {
        "cache_dir": cache,
        "build_dir": os.path.abspath(os.fspath(build_dir)) if build_dir is not None else default_build_dir(),
        "marker": HOST_MARKER,
        "launchers": list(launchers.values()),
        "triton_dir": target.triton_dir,
        "libcuda_dirs": list(target.libcuda_dirs) or None,
        "cc": target.cc,
        "built_by": f"pyruntime {__version__}",
    }
    reply = _run_worker(python, "build", request, env=env, timeout=timeout)
    all_kernels = tuple(h for item in launchers.values() for h in item["kernels"])
    modules = tuple(
        HostModule(key=m["key"], module=m["module"], file=m["file"], triton_version=reply["triton_version"],
                   triton_abi=reply["abi"], platform=reply["platform"],
                   kernels=all_kernels if m["module"] == "cuda_utils" else tuple(m["kernels"]),
                   built=m["built"], glibc=m.get("glibc"))
        for m in reply["modules"])
    warnings: list[str] = []
    notes: list[str] = []
    other = sorted(v for v in versions if v != reply["triton_version"])
    if other:
        warnings.append(f"the kernels were built by Triton {', '.join(other)} but the host code by Triton "
                        f"{reply['triton_version']} ({python}): a GPU machine runs one of them")
    if reply.get("assumed"):
        kp = reply["key_paths"]
        notes.append(f"Triton {reply['triton_version']} keys cuda_utils by the GPU machine's paths: assumed "
                        f"Triton at {kp['triton_dir']} and libcuda in {', '.join(kp['libcuda_dirs'])} "
                        "(give the GPU machine's if they differ)")
    if skipped and reply.get("per_signature"):
        warnings.append(f"{len(skipped)} kernels have no launcher stub (Triton builds it on first launch): "
                        + "; ".join(r for _, r in skipped[:3]) + ("; ..." if len(skipped) > 3 else ""))
    return HostBuild(modules=modules, python=python, python_version=reply["python_version"],
                     triton_version=reply["triton_version"], triton_abi=reply["abi"], platform=reply["platform"],
                     skipped=tuple(skipped) if reply.get("per_signature") else (), warnings=tuple(warnings),
                     notes=tuple(notes),
                     key_paths=reply.get("key_paths") or {})


def host_target_from_args(python: str | None, python_abi: str | None, triton_version: str | None,
                          triton_dir: str | None, libcuda_dirs: Sequence[str] | None) -> HostTarget:
    """A :class:`HostTarget` from command-line values."""
    return HostTarget(python=python, python_abi=python_abi, triton_version=triton_version, triton_dir=triton_dir,
                      libcuda_dirs=tuple(libcuda_dirs or ()))
