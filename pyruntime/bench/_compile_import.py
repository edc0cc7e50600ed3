"""compile suite, import-once rows: N kernels whose module costs ~2 s of
CPU to import (:mod:`pyruntime.bench.heavy_kernels`, as a kernel package
that imports torch does), built by ``precompile()`` with W workers.

Peers, each run in a fresh child interpreter with a fresh, empty Triton cache:

- pyruntime: ``precompile(specs, workers=W)``, the clock around the whole
  call (pool start-up included): the sidecar imports the module once and
  forks the W workers, which share it.
- Dask LocalCluster: ``precompile(specs, executor=...)`` on a LocalCluster
  of W worker processes (one thread each) forked from a fork server that
  imported the module once (as ``--executor dask-local:W`` starts it); every
  kernel travels back packed and is written into the cache by the caller.
  The wall is a running cluster's: the clock runs from the cluster's start,
  minus the start-up of its scheduler and nannies (reported apart, with
  the total), so the fork server's import is in it.
- serial (full runs): one process imports the module and builds every
  kernel in turn, what a JIT would do (W = 1 row).

The model is the issue's: ``one import + sum of compile times / W``, from
the same run (the import as the sidecar measured it, triton's own import
included since the module imports triton; for Dask the fork server's, plus
one worker process's when a worker had to import it too); the goal is pyruntime's wall at most 1.1x the model, and the Dask
cluster's wall within 15% of pyruntime's.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from . import _common as C

IMPLS = ("pyruntime", "Dask LocalCluster")
SERIAL = "serial (one process)"
TARGET = "cuda:90"
IMPORT_CPU_S = 2.0
HEAVY = "pyruntime.bench.heavy_kernels"


def heavy_specs(n: int, target: str = TARGET) -> list[Any]:
    """``n`` distinct sample specs, without the matmul family (one matmul
    builds for seconds and would decide a short run's wall time alone),
    each naming its function through :mod:`pyruntime.bench.heavy_kernels`
    (this does not import that module)."""
    from .kernels import sample_specs

    out = []
    for s in sample_specs(3 * n + 8, target):
        if s.fn is None or s.fn.endswith(":matmul_kernel"):
            continue
        out.append(dataclasses.replace(s, fn=s.fn.replace("pyruntime.bench.kernels:", f"{HEAVY}:")))
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} sample kernels without matmul; asked for {n}")


def measure(impl: str, workers: int, n: int, cache_dir: str, import_cpu_s: float) -> dict[str, Any]:
    """One timed run (in a child interpreter)."""
    os.environ["PYRUNTIME_BENCH_IMPORT_CPU_S"] = str(import_cpu_s)  # the sidecar and Dask workers inherit it
    from .. import precompile as P

    specs = heavy_specs(n)
    ready = None
    if impl == SERIAL:
        os.environ["TRITON_CACHE_DIR"] = cache_dir
        start = time.perf_counter()
        importlib.import_module(HEAVY)
        import_s = time.perf_counter() - start
        results = [P.compile_spec(s, {"TRITON_CACHE_DIR": cache_dir}, {}) for s in specs]
        wall = time.perf_counter() - start
    elif impl == "pyruntime":
        start = time.perf_counter()
        results = P.precompile(specs, workers=workers, cache_dir=cache_dir, host_code=False)
        wall = time.perf_counter() - start
        import_s = sum(m["seconds"] for m in results.imports if m["where"] == "sidecar" and not m["error"])
    else:
        from ..executors import open_executor
        from ..kernel_imports import preload_env

        start = time.perf_counter()  # as the CLI's --executor dask-local:W does it
        with open_executor(f"dask-local:{workers}", preload=preload_env(specs, where="forkserver")) as ex:
            ready = time.perf_counter() - start
            results = P.precompile(specs, executor=ex.executor, cache_dir=cache_dir, host_code=False)
            total = time.perf_counter() - start
        once = sum(m["seconds"] for m in results.imports if m["where"] == "forkserver" and not m["error"])
        per_proc: dict[Any, float] = {}
        for r in results:
            per_proc[r.worker_pid] = per_proc.get(r.worker_pid, 0.0) + r.import_s
        import_s = once + statistics.median(per_proc.values())
        # a running cluster's figure: the start-up of the scheduler and nannies is left out, the fork
        # server's import of the module (during the start-up) is kept
        wall = total - (ready - once)
    failed = [f"{r.label}: {r.error}" for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} kernels failed, first: {failed[0][:500]}")
    if any(r.cached for r in results):
        raise RuntimeError("kernels came from the cache; the run must build every one")
    compile_sum = sum(r.compile_time_s for r in results)
    w = 1 if impl == SERIAL else workers
    model = import_s + compile_sum / w
    out = {"wall_s": wall, "import_s": import_s, "compile_sum_s": compile_sum, "model_s": model,
           "ratio": wall / model, "ready_s": ready, "pids": len({r.worker_pid for r in results})}
    if ready is not None:
        out["total_s"] = total
    return out


def rows(settings: C.Settings, ws: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The metrics and the extra record of the import-once row set."""
    prog = C.progress_of(settings)
    n = 8 if settings.quick else max(16, settings.compile_kernels // 2)
    rounds = 1 if settings.quick else min(3, settings.compile_rounds)
    impls = list(IMPLS) if C.have_module("distributed") else ["pyruntime"]
    errors: dict[str, str] = {}
    if "Dask LocalCluster" not in impls:
        errors["Dask LocalCluster"] = "n/a (distributed not installed: pip install 'pyruntime[dask]')"
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    scratch = tempfile.mkdtemp(prefix="prt-bench-import-")
    try:
        for r in range(rounds):
            order = impls if r % 2 == 0 else list(reversed(impls))
            plan = ([] if settings.quick else [(SERIAL, 1)]) + [(i, w) for w in ws for i in order]
            for impl, w in plan:
                if impl in errors:
                    continue
                prog.step("compile", f"import-once: {n} kernels, {impl} W={w}, round {r + 1}/{rounds}")
                try:
                    runs.setdefault((impl, w), []).append(C.run_compile_child(
                        "pyruntime.bench._compile_import:measure",
                        {"impl": impl, "workers": w, "n": n, "import_cpu_s": IMPORT_CPU_S},
                        scratch=scratch, timeout=settings.child_timeout))
                except C.ChildError as e:
                    errors[impl] = f"error: {e}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    metrics = []
    for w in ws:
        model_vals: dict[str, Any] = {}
        wall_vals: dict[str, Any] = {}
        for impl in IMPLS:
            rs = runs.get((impl, w))
            if not rs:
                model_vals[impl] = wall_vals[impl] = C.na(errors.get(impl, "no result"))
                continue
            model_vals[impl] = C.summarize([x["ratio"] for x in rs])
            wall_vals[impl] = C.summarize([x["wall_s"] for x in rs])
        if w == 1 and runs.get((SERIAL, 1)):
            wall_vals[SERIAL] = C.summarize([x["wall_s"] for x in runs[(SERIAL, 1)]])
        metrics.append(C.metric(
            f"import_once_model[W={w}]",
            f"{n} kernels, module import ~{IMPORT_CPU_S:g} s CPU, W={w}: wall / (one import + sum(compile)/W)",
            "x", "lower", "pyruntime", model_vals,
            goal={"kind": "max", "value": 1.1, "text": "wall at most 1.1 x (one import + sum of compile times / W)"}))
        metrics.append(C.metric(
            f"import_once_wall[W={w}]",
            f"{n} kernels, module import ~{IMPORT_CPU_S:g} s CPU, W={w}: wall, Dask LocalCluster vs the local pool",
            "s", "lower", "Dask LocalCluster", wall_vals,
            goal={"kind": "ratio", "peer": "pyruntime", "min": 1 / 1.15,
                  "text": "Dask LocalCluster (running) within 15% of the local pool"}))
    notes = []
    for (impl, w), rs in sorted(runs.items()):
        x = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "import_s", "compile_sum_s", "model_s")}
        text = (f"import-once {impl} W={w}: wall {x['wall_s']:.2f} s = model {x['model_s']:.2f} s (import "
                f"{x['import_s']:.2f} s + {x['compile_sum_s']:.2f} s of compiles / {1 if impl == SERIAL else w})")
        if impl == "Dask LocalCluster":
            text += (f"; cluster start {statistics.median(r['ready_s'] for r in rs):.2f} s, of which the fork "
                     "server's import of the module is in the wall and the rest is not (a running cluster); "
                     f"with all of it {statistics.median(r.get('total_s', 0.0) for r in rs):.2f} s")
        notes.append(text)
    for impl, why in errors.items():
        notes.append(f"import-once {impl}: {why}")
    extra = {"kernels": n, "rounds": rounds, "import_cpu_s": IMPORT_CPU_S, "workers": ws, "notes": notes,
             "runs": {f"{i} W={w}": rs for (i, w), rs in runs.items()}, "errors": errors}
    return metrics, extra
