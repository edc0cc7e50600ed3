"""compile suite: N distinct Triton kernels for cuda:90 with W = 1..cores
workers, pyruntime's pool vs ``ProcessPoolExecutor.map`` of the same compile
function, plus a serial baseline.

The compile function is :func:`pyruntime.precompile.compile_spec` (the
precompile job: load the ``@triton.jit`` function, ``triton.compile`` for
the spec's ``GPUTarget``, into the ``TRITON_CACHE_DIR`` it is given); the
kernels are :func:`pyruntime.bench.kernels.sample_specs` ``(N, "cuda:90")``.

Each run is a fresh child interpreter with a fresh, empty Triton cache:

- serial: warm Triton in the process (``precompile.warm_worker``), then
  ``compile_spec`` for every spec in a loop;
- pyruntime: ``precompile.create_compile_pool(W, kind="subproc")`` (the
  SubprocPool precompile uses: the sidecar warms Triton before forking);
- ProcessPoolExecutor: ``create_compile_pool(W, kind="process")`` (spawn
  start method, ``warm_worker`` as initializer: forking a process that has
  imported triton is not safe).

Pools are warmed first (no-op jobs until every one of the W workers has
answered, so start-up and Triton's per-process warm-up are outside the
clock), then ``pool.map(compile_spec, specs, ...)`` is timed to the last
result. Every kernel must build and none may come from the cache. Runs are
interleaved: the serial run opens each round, then for each W both pools,
in alternating order from round to round. The overhead is reported both as
the ratio of medians and as the median of per-round ratios.

The import-once rows (:mod:`pyruntime.bench._compile_import`) follow: kernels
whose module costs ~2 s of CPU to import, ``precompile()`` with W workers
against the model ``one import + sum of compile times / W``, and a Dask
LocalCluster of W processes against the local pool.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from . import _common as C
from . import _compile_import, _jobs

IMPLS = ("pyruntime", "ProcessPoolExecutor")
TARGET = "cuda:90"
MODULES = ("pyruntime.precompile", "pyruntime.kernels", "pyruntime.bench.kernels", "triton")


def _warm(pool: Any, workers: int, timeout: float = 120.0) -> None:
    """Run short jobs until every worker has answered once."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {workers} workers came up")
        futs = [pool.submit(_jobs.warm, 0.2) for _ in range(workers)]
        seen.update(f.result() for f in futs)


def measure(impl: str, workers: int, n: int, cache_dir: str) -> dict[str, Any]:
    """One timed compile of ``n`` kernels (runs in a child interpreter)."""
    from .. import precompile
    from .kernels import sample_specs

    specs = sample_specs(n, TARGET)
    env = {"TRITON_CACHE_DIR": cache_dir}
    cfg: dict[str, Any] = {}
    pool = None
    if impl == "serial":
        precompile.warm_worker()
        os.environ["TRITON_CACHE_DIR"] = cache_dir
        start = time.perf_counter()
        results = [precompile.compile_spec(s, env, cfg) for s in specs]
        wall = time.perf_counter() - start
    else:
        kind = {"pyruntime": "subproc", "ProcessPoolExecutor": "process"}[impl]
        t0 = time.perf_counter()
        pool = precompile.create_compile_pool(workers, kind=kind)
        try:
            _warm(pool, workers)
            ready = time.perf_counter() - t0
            start = time.perf_counter()
            results = list(pool.map(precompile.compile_spec, specs, [env] * n, [cfg] * n))
            wall = time.perf_counter() - start
        finally:
            pool.shutdown(wait=True)
    failed = [f"{r.label}: {r.error}" for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} kernels failed, first: {failed[0][:500]}")
    cached = sum(1 for r in results if r.cached)
    if cached:
        raise RuntimeError(f"{cached} kernels came from the cache; the run must compile every one")
    return {"wall_s": wall, "kernel_s": [r.compile_time_s for r in results],
            "ready_s": None if pool is None else ready,
            "pids": len({r.worker_pid for r in results})}


def run(settings: C.Settings) -> dict[str, Any]:
    missing = C.first_missing(MODULES)
    if missing:
        return C.suite_na("compile", f"n/a (module missing: {missing})")
    prog = C.progress_of(settings)
    n = settings.compile_kernels
    ws = sorted(set(settings.compile_workers)) or [1]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    scratch = tempfile.mkdtemp(prefix="prt-bench-compile-")
    # quick runs take the serial baseline from ProcessPoolExecutor W=1 (saves a run)
    quick_serial = settings.quick and 1 in ws
    try:
        for r in range(settings.compile_rounds):
            # alternate which pool goes first, so order effects cancel out
            order = IMPLS if r % 2 == 0 else tuple(reversed(IMPLS))
            plan = ([] if quick_serial else [("serial", 1)]) + [(impl, w) for w in ws for impl in order]
            for impl, w in plan:
                if impl in errors:
                    continue
                prog.step("compile", f"{n} kernels, {impl} W={w}, round {r + 1}/{settings.compile_rounds}")
                try:
                    runs.setdefault((impl, w), []).append(C.run_compile_child(
                        "pyruntime.bench._compile:measure", {"impl": impl, "workers": w, "n": n},
                        scratch=scratch, timeout=settings.child_timeout))
                except C.ChildError as e:
                    errors[impl] = f"error: {e}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if "serial" in errors and all(i in errors for i in IMPLS):
        return C.suite_result("compile", method="", metrics=[], status="error",
                              reason=errors["serial"])

    serial_key = ("ProcessPoolExecutor", 1) if quick_serial else ("serial", 1)
    serial = [x["wall_s"] for x in runs.get(serial_key, [])]
    serial_med = statistics.median(serial) if serial else None
    metrics = []
    curve: dict[str, list[dict[str, Any]]] = {i: [] for i in IMPLS}
    for w in ws:
        rate_vals: dict[str, Any] = {}
        eff_vals: dict[str, Any] = {}
        for impl in IMPLS:
            rs = runs.get((impl, w))
            if not rs:
                rate_vals[impl] = eff_vals[impl] = C.na(errors.get(impl, "no result"))
                continue
            walls = [x["wall_s"] for x in rs]
            rate_vals[impl] = C.summarize([n / t for t in walls])
            rate_vals[impl]["wall_s"] = C.summarize(walls)
            curve[impl].append({"workers": w, "kernels_per_s": rate_vals[impl]["median"],
                                "wall_s": statistics.median(walls)})
            if serial:
                # per round: this round's serial time / (W x this round's wall)
                effs = [s / (w * t) for s, t in zip(serial, walls)]
                eff_vals[impl] = C.summarize(effs)
            else:
                eff_vals[impl] = C.na("no serial baseline")
        if w == 1 and serial and not quick_serial:
            rate_vals["serial (no pool)"] = C.summarize([n / t for t in serial])
        metrics.append(C.metric(
            f"kernels_per_s[W={w}]", f"{n} kernels, W={w}: throughput", "1/s", "higher", "pyruntime",
            rate_vals, label="kernels/s",
            goal={"kind": "ratio", "peer": "ProcessPoolExecutor", "min": 0.98,
                  "text": "pool overhead over ProcessPoolExecutor.map under 2% (ratio >= 0.98)"}))
        metrics.append(C.metric(
            f"efficiency[W={w}]", f"{n} kernels, W={w}: serial / (W x wall)", "x", "higher",
            "pyruntime", eff_vals,
            goal={"kind": "min", "value": 1 / 1.1,
                  "text": "wall at most 1.1 x serial / W (efficiency >= 0.909)"}))
    overhead: dict[str, float] = {}
    paired: dict[str, float] = {}
    for w in ws:
        a, b = runs.get(("pyruntime", w)), runs.get(("ProcessPoolExecutor", w))
        if a and b:
            ma = statistics.median(x["wall_s"] for x in a)
            mb = statistics.median(x["wall_s"] for x in b)
            overhead[str(w)] = (ma - mb) / mb * 100
            # the same round's two runs side by side: drift over the run cancels
            paired[str(w)] = (statistics.median(x["wall_s"] / y["wall_s"] for x, y in zip(a, b)) - 1) * 100
    notes = [f"pool overhead vs ProcessPoolExecutor.map: "
             + ", ".join(f"W={w}: {overhead[w]:+.1f}% (medians), {paired[w]:+.1f}% (median of "
                         "per-round ratios)" for w in overhead)] if overhead else []
    if serial_med:
        per_kernel = [k for x in runs[serial_key] for k in x["kernel_s"]]
        what = "ProcessPoolExecutor W=1 (quick run)" if quick_serial else "in one process, no pool"
        notes.append(f"serial ({what}): {serial_med:.2f} s for {n} kernels "
                     f"({statistics.median(per_kernel) * 1e3:.0f} ms median per kernel)")
    if settings.quick:
        notes.append("quick run: one round of a few kernels, where one slow kernel decides the "
                     "wall time; the scaling and overhead goals are judged on the full run")
    noise = [x["others_cores"] for rs in runs.values() for x in rs if x.get("others_cores") is not None]
    if noise:
        notes.append(f"other processes' CPU during the compile runs: median {statistics.median(noise):.2f}, "
                     f"max {max(noise):.2f} cores")
    for impl, why in errors.items():
        notes.append(f"{impl}: {why}")
    ready = {f"{i} W={w}": statistics.median(x["ready_s"] for x in runs[(i, w)])
             for i in IMPLS for w in ws if runs.get((i, w))}
    import_metrics, import_once = _compile_import.rows(settings, ws)
    notes += import_once["notes"]
    return C.suite_result(
        "compile", metrics=metrics + import_metrics,
        method=(f"{n} distinct sample_specs({n}, '{TARGET}') kernels, compile_spec as the job; "
                f"{settings.compile_rounds} round(s); every run in a fresh interpreter with an empty "
                "Triton cache, pools warmed (every worker answered) before the clock; "
                "W = " + ", ".join(map(str, ws)) + f"; import-once rows: {import_once['kernels']} "
                "kernels of a module burning ~2 s of CPU at import, precompile() timed whole (pool start "
                "included), Dask LocalCluster timed from its start minus its scheduler and nannies start-up "
                f"(the fork server's import kept), {import_once['rounds']} round(s)"),
        extra={"kernels": n, "target": TARGET, "curve": curve, "workers": ws,
               "runs": {f"{i} W={w}": [{k: v for k, v in x.items() if k != "kernel_s"} for x in rs]
                        for (i, w), rs in runs.items()},
               "serial_wall_s": serial, "serial_kernels_per_s": n / serial_med if serial_med else None,
               "overhead_pct": overhead, "overhead_paired_pct": paired, "ready_s": ready, "notes": notes,
               "errors": errors, "import_once": import_once})
