"""Kernel modules imported once per process, and what that cost.

A kernel list names the modules that define its ``@triton.jit`` functions
(``fn = "pkg.ops:kernel"``) or the files that do (``source = "gen/k.py"``).
Importing one can cost far more than building a kernel (a module that
imports torch: seconds), so precompile imports each once per process and
reports the time apart from the compile time:

- :func:`import_kernel` (called by :func:`pyruntime.precompile.compile_spec`
  before every build) imports the spec's module unless this process already
  did, and returns the seconds spent now: the full import for the first spec
  of a module, ``0.0`` for every later one.
- The SubprocPool sidecar goes further: precompile names
  ``pyruntime._kernel_preload`` in ``preload=``, which runs
  :func:`preload_from_env` there *before* the sidecar forks its workers.
  Every worker inherits the imported modules (and this module's record of
  them), so a list of two thousand kernels imports its modules once, not
  once per worker. Importing torch there is fine; CUDA is never initialised
  by this module (``PYTORCH_NVML_BASED_CUDA_CHECK=1`` keeps
  ``torch.cuda.is_available()`` from doing it), and :func:`preload` notes
  when a kernel module did so itself.
- A module that fails to import in the sidecar is not fatal: the failure is
  recorded (:func:`preload_report`) and each worker imports it itself on its
  first build of it (the fallback), where a real failure becomes that
  kernel's error.
- Elsewhere (ProcessPoolExecutor workers, Dask workers) the first build of a
  module in each process pays the import; the results say so through their
  ``import_s``.

:func:`summarize` turns a run's results and the sidecar's report into the
"imports" section of precompile's report: one record per (module, process).

Nothing here imports triton or torch at module level.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from .kernels import KernelSpec, KernelSpecError

__all__ = [
    "ENV_VAR",
    "WHERE_VAR",
    "ImportRecord",
    "import_kernel",
    "import_triton_packages",
    "kernel_source_file",
    "module_key",
    "preload",
    "preload_env",
    "preload_from_env",
    "preload_report",
    "summarize",
]

#: The sidecar reads the modules to preload from this variable (JSON).
ENV_VAR = "PYRUNTIME_PRELOAD_KERNELS"
WHERE_VAR = "PYRUNTIME_PRELOAD_WHERE"  # the process that preloads, for reports: sidecar or forkserver


@dataclass
class ImportRecord:
    """One module imported in one process: where (``"sidecar"``: before the
    workers were forked, shared by all; ``"worker"``: by the worker that
    built the kernel), how long it took and, for a failed sidecar import,
    the error (the workers then import it themselves)."""

    module: str
    seconds: float
    pid: int
    where: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# This process's imports (inherited by workers forked after a preload).
_IMPORTED: dict[str, ImportRecord] = {}
# The sidecar's preload, as preload_report() returns it; None where none ran.
_PRELOAD: dict[str, Any] | None = None


def module_key(spec: KernelSpec) -> str:
    """What one import covers: the module of ``fn`` specs, the file of ``source`` ones."""
    if spec.fn is not None:
        return spec.fn.split(":", 1)[0]
    assert spec.source is not None
    return os.fspath(spec.source)


def import_kernel(spec: KernelSpec, where: str = "worker") -> float:
    """Import ``spec``'s module in this process unless it already was; return
    the seconds spent now (0.0 when it was). Raises what
    :meth:`KernelSpec.load_function` raises for a module that cannot be
    imported (``RuntimeError: Failed to import ...``).

    The first import in a process also imports Triton's packages
    (:func:`import_triton_packages`) and, while the module imports, hashes
    libtriton for ``triton_key()`` on a thread (most of Triton's start-up,
    ~0.7 s, and hashlib lets go of the GIL); the thread is joined before
    this returns (a sidecar forks right after), and the seconds returned
    include all of it."""
    key = module_key(spec)
    if key in _IMPORTED:
        return 0.0
    start = time.perf_counter()
    hashing = None
    if "triton" not in _IMPORTED and import_triton_packages(where) is not None:
        hashing = threading.Thread(target=_triton_key, name="pyruntime-triton-key", daemon=True)
        hashing.start()
    try:
        _import_module(spec)
    finally:
        if hashing is not None:
            hashing.join()
    spent = time.perf_counter() - start
    done = _IMPORTED.get("triton")
    own = spent - (done.seconds if hashing is not None and done is not None else 0.0)
    _IMPORTED[key] = ImportRecord(key, own, os.getpid(), where)
    return spent


def _triton_key() -> None:
    try:
        from triton.runtime.cache import triton_key  # every package it walks is imported already

        triton_key()  # cached in this process (and in the workers a sidecar forks)
    except Exception:  # warming is an optimisation; a build reports real problems
        pass


def _import_module(spec: KernelSpec) -> None:
    key = module_key(spec)
    if spec.fn is not None:
        for p in spec.python_path:
            if p not in sys.path:
                sys.path.insert(0, p)
        try:
            importlib.import_module(key)
        except Exception as e:
            raise RuntimeError(f"Failed to import {key}\n{type(e).__name__}: {e}") from None
    else:
        try:
            spec.load_function()  # executes the file once (kernels' own per-content cache)
        except KernelSpecError as e:
            if str(e).startswith("source:"):  # the file itself: unreadable
                raise
            # the file ran; the spec's function is what is wrong, and its build says so


def kernel_source_file(spec: KernelSpec) -> str | None:
    """The file that defines ``spec``'s jitted function (after :func:`import_kernel`), or None."""
    try:
        fn = spec.load_function()
    except Exception:
        return None
    code = getattr(getattr(fn, "fn", None), "__code__", None)
    return os.path.abspath(code.co_filename) if code is not None else None


# ------------------------------------------------------------ the sidecar


def _representatives(specs: Iterable[KernelSpec]) -> dict[str, list[KernelSpec]]:
    """Specs by module, at most a few per module (a first one whose function
    is wrong must not hide a module that imports fine)."""
    out: dict[str, list[KernelSpec]] = {}
    for s in specs:
        group = out.setdefault(module_key(s), [])
        if len(group) < 3:
            group.append(s)
    return out


def preload_env(specs: Iterable[KernelSpec], where: str = "sidecar") -> dict[str, str]:
    """The environment that tells ``pyruntime._kernel_preload`` (in a
    sidecar, or the fork server of a Dask LocalCluster: ``where``) which
    modules to import: a few specs per module, as JSON."""
    wanted = []
    for group in _representatives(specs).values():
        for s in group:
            d: dict[str, Any] = {"fn": s.fn} if s.fn is not None else {"source": s.source, "function": s.function}
            if s.python_path:
                d["python_path"] = list(s.python_path)
            wanted.append(d)
    if not wanted:
        return {}
    # keep torch.cuda.is_available() (which a kernel module may call at
    # import) from initialising CUDA in a process that forks
    return {ENV_VAR: json.dumps(wanted), WHERE_VAR: where, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}


def import_triton_packages(where: str = "worker") -> ImportRecord | None:
    """Import triton and every package ``triton_key()`` walks (its compiler,
    backends and language packages) in this thread, so that computing the
    key in another thread afterwards imports nothing (two threads importing
    the same packages at once can deadlock on the import locks). Recorded as
    the import of module ``triton``; None when triton is not installed."""
    if "triton" in _IMPORTED:
        return _IMPORTED["triton"]
    start = time.perf_counter()
    try:
        import triton  # the kernels' own dependency, imported where it is needed

        importlib.import_module("triton.runtime.cache")  # where triton_key lives
        root = os.path.dirname(os.path.abspath(triton.__file__))
        for sub in ("compiler", "backends", "language"):
            for _ in pkgutil.walk_packages([os.path.join(root, sub)], prefix=f"triton.{sub}.",
                                           onerror=lambda name: None):
                pass  # walking imports every package on the way
    except Exception:  # no triton, or a backend that does not import here: the builds will say
        return None
    _IMPORTED["triton"] = ImportRecord("triton", time.perf_counter() - start, os.getpid(), where)
    return _IMPORTED["triton"]


def preload(specs: Sequence[KernelSpec], where: str = "sidecar") -> dict[str, Any]:
    """Import every module ``specs`` name, now, in this process; never raises
    for a module (its error is recorded and workers fall back to importing it
    themselves). Returns the report :func:`preload_report` gives later
    (triton's packages first when this imported them)."""
    global _PRELOAD
    start = time.perf_counter()
    had_triton = "triton" in _IMPORTED
    records: list[ImportRecord] = []
    for key, group in _representatives(specs).items():
        error = None
        t0 = time.perf_counter()
        for s in group:
            try:
                import_kernel(s, where)
                error = None
                break
            except BaseException as e:  # SystemExit from a module body too: it must not stop the sidecar
                if isinstance(e, KeyboardInterrupt):
                    raise
                error = f"{type(e).__name__}: {e}"
        rec = _IMPORTED.get(key)
        if rec is None:
            rec = ImportRecord(key, time.perf_counter() - t0, os.getpid(), where, error)
        records.append(rec)
    if not had_triton and "triton" in _IMPORTED:
        records.insert(0, _IMPORTED["triton"])
    notes = []
    torch = sys.modules.get("torch")
    try:
        cuda_on = bool(torch is not None and torch.cuda.is_initialized())
    except Exception:
        cuda_on = False
    if cuda_on:
        notes.append("a kernel module initialised CUDA in the sidecar at import; the forked workers "
                     "never use CUDA (builds for a named target need no GPU), but such a module is "
                     "not fork-safe for launching")
    failed = [r for r in records if r.error]
    if failed:
        notes.append(f"{len(failed)} module(s) failed to import in the sidecar; each worker imports them "
                     "itself instead: " + "; ".join(f"{r.module}: {r.error.splitlines()[-1]}" for r in failed))
    _PRELOAD = {"pid": os.getpid(), "where": where, "seconds": time.perf_counter() - start,
                "modules": [r.to_dict() for r in records], "notes": notes}
    return _PRELOAD


def preload_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Preload the modules :func:`preload_env` put in the environment (the
    sidecar's ``pyruntime._kernel_preload``). A bad value is reported, never raised."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_VAR)
    if not text:
        return None
    try:
        specs = [KernelSpec(**d) for d in json.loads(text)]
    except Exception as e:
        print(f"pyruntime: warning: {ENV_VAR} is not a list of kernel specs ({type(e).__name__}: {e}); "
              "workers import kernel modules themselves", file=sys.stderr, flush=True)
        return None
    return preload(specs, env.get(WHERE_VAR) or "sidecar")


def preload_report() -> dict[str, Any] | None:
    """A pool job: the sidecar's preload as a forked worker inherited it (None when none ran)."""
    return _PRELOAD


def summarize(preloaded: Mapping[str, Any] | None, results: Iterable[Any]) -> list[dict[str, Any]]:
    """The imports of a run: the sidecar's (once, before forking) and every
    import a build paid in a worker (``import_s`` > 0), one record per
    (module, process), sidecar first."""
    out: list[dict[str, Any]] = []
    if preloaded:
        out.extend(dict(m) for m in preloaded.get("modules", ()))
    seen: set[tuple[str, int | None]] = set()
    for r in results:
        secs = getattr(r, "import_s", 0.0) or 0.0
        if secs <= 0:
            continue
        key = (module_key(r.spec), getattr(r, "worker_pid", None))
        if key in seen:
            continue
        seen.add(key)
        out.append(ImportRecord(key[0], secs, key[1] or 0, "worker").to_dict())
    return out
