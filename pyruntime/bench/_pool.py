"""pool suite: pyruntime's SubprocPool vs torch's SubprocPool vs
concurrent.futures.ProcessPoolExecutor, 2 workers each.

Each round runs every peer in its own fresh child interpreter (one after
the other, so load drifts hit all of them), which:

1. imports what the peer needs (torch for torch's pool) *before* the clock
   starts, then times construction -> first no-op result (start-up);
2. times ``latency_samples`` sequential no-op round trips
   (``submit(noop).result()``), after 50 warm-up ones;
3. times bursts of no-op jobs submitted at once and waited for (jobs/s;
   the burst is sized to take about ``round_time`` seconds);
4. times ``payload_samples`` sequential round trips of a 1 MiB bytes payload
   echoed back (after 3 warm-up ones); "each way" = 1 MiB / (rtt / 2);
5. shuts the pool down (timed, reported in the JSON).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from typing import Any, Callable

from . import _common as C
from . import _jobs

PEERS = ("pyruntime", "torch", "ProcessPoolExecutor")
WORKERS = 2
PAYLOAD = 1 << 20


def _make(impl: str) -> Callable[[], Any]:
    """The pool constructor of a peer; its imports happen here, outside the
    timed start-up."""
    if impl == "pyruntime":
        from ..pool import SubprocPool

        return lambda: SubprocPool(WORKERS)
    if impl == "torch":
        from torch._inductor.compile_worker.subproc_pool import SubprocPool as TorchPool

        return lambda: TorchPool(WORKERS)
    if impl == "ProcessPoolExecutor":
        return lambda: cf.ProcessPoolExecutor(max_workers=WORKERS)
    raise ValueError(f"unknown pool peer {impl!r}")


def measure(impl: str, latency_samples: int, payload_samples: int, round_time: float) -> dict[str, Any]:
    """One round for one peer (runs in a child interpreter)."""
    make = _make(impl)
    t0 = time.perf_counter()
    pool = make()
    pool.submit(_jobs.noop).result()
    startup = time.perf_counter() - t0
    try:
        for _ in range(50):
            pool.submit(_jobs.noop).result()
        lat = []
        for _ in range(latency_samples):
            t = time.perf_counter()
            pool.submit(_jobs.noop).result()
            lat.append(time.perf_counter() - t)

        def burst(m: int) -> float:
            t = time.perf_counter()
            futs = [pool.submit(_jobs.noop) for _ in range(m)]
            for f in futs:
                f.result()
            return m / (time.perf_counter() - t)
        probe = burst(200)
        m = int(min(200_000, max(200, probe * round_time)))
        bursts = [burst(m) for _ in range(3)]

        data = os.urandom(PAYLOAD)
        for _ in range(3):
            assert len(pool.submit(_jobs.echo, data).result()) == PAYLOAD
        pay = []
        for _ in range(payload_samples):
            t = time.perf_counter()
            out = pool.submit(_jobs.echo, data).result()
            pay.append(time.perf_counter() - t)
        if out != data:
            raise RuntimeError(f"{impl}: 1 MiB payload came back changed")
    finally:
        t = time.perf_counter()
        pool.shutdown()
        shutdown = time.perf_counter() - t
    return {"startup_s": startup, "latency_s": lat, "jobs_per_s": sorted(bursts)[1],
            "burst_jobs": m, "payload_rtt_s": pay, "shutdown_s": shutdown}


def _available(impl: str) -> str | None:
    if impl == "torch" and not C.have_module("torch"):
        return "torch not installed"
    return None


def run(settings: C.Settings) -> dict[str, Any]:
    prog = C.progress_of(settings)
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in PEERS}
    errors: dict[str, str] = {}
    for p in PEERS:
        why = _available(p)
        if why:
            errors[p] = why
    for r in range(settings.pool_rounds):
        for p in PEERS:
            if p in errors:
                continue
            prog.step("pool", f"{p}: fresh pool, round {r + 1}/{settings.pool_rounds}")
            try:
                results[p].append(C.run_child(
                    "pyruntime.bench._pool:measure",
                    {"impl": p, "latency_samples": settings.latency_samples,
                     "payload_samples": settings.payload_samples, "round_time": settings.round_time},
                    timeout=settings.child_timeout))
            except C.ChildError as e:
                errors[p] = f"error: {e}"

    def collect(fn: Any, samples: Any = None) -> dict[str, Any]:
        out = {}
        for p in PEERS:
            if p in errors or not results[p]:
                out[p] = C.na(errors.get(p, "no result"))
                continue
            rs = results[p]
            out[p] = C.summarize([fn(x) for x in rs],
                                 [s for x in rs for s in samples(x)] if samples else None)
        return out

    import statistics

    lat_samples = {p: [s for x in results[p] for s in x["latency_s"]] for p in PEERS
                   if p not in errors and results[p]}
    each_way = {}
    for p in PEERS:
        if p in errors or not results[p]:
            each_way[p] = C.na(errors.get(p, "no result"))
            continue
        rts = [s for x in results[p] for s in x["payload_rtt_s"]]
        per_round = [2 * PAYLOAD / statistics.median(x["payload_rtt_s"]) for x in results[p]]
        each_way[p] = C.summarize(per_round)
        each_way[p]["median"] = 2 * PAYLOAD / C.percentile(rts, 50)
    metrics = [
        C.metric("startup", "start-up (construction to first result)", "s", "lower", "pyruntime",
                 collect(lambda x: x["startup_s"]),
                 goal={"kind": "max", "value": 0.150, "text": "first result under 150 ms"}),
        C.metric("noop_rtt", "no-op round trip", "s", "lower", "pyruntime",
                 collect(lambda x: statistics.median(x["latency_s"]), lambda x: x["latency_s"]),
                 goal={"kind": "max", "value": 100e-6, "text": "p50 at most 100 us"}),
        C.metric("noop_throughput", "no-op throughput (burst)", "1/s", "higher", "pyruntime",
                 collect(lambda x: x["jobs_per_s"]), label="jobs/s",
                 goal={"kind": "min", "value": 20000, "text": "at least 20,000 jobs/s"}),
        C.metric("payload_rtt", "1 MiB payload round trip", "s", "lower", "pyruntime",
                 collect(lambda x: statistics.median(x["payload_rtt_s"]), lambda x: x["payload_rtt_s"])),
        C.metric("payload_each_way", "1 MiB payload, each way", "B/s", "higher", "pyruntime",
                 each_way, goal={"kind": "min", "value": 1e9, "text": "at least 1 GB/s each way"}),
    ]
    shutdown = collect(lambda x: x["shutdown_s"])
    edges = C.log_edges(x for v in lat_samples.values() for x in v)
    hist = {p: C.histogram(v, edges) for p, v in lat_samples.items()}
    return C.suite_result(
        "pool", metrics=metrics,
        method=(f"{WORKERS} workers each; every round runs each peer in a fresh interpreter "
                "(imports done before the clock starts), peers interleaved; "
                f"{settings.pool_rounds} round(s) x ({settings.latency_samples} sequential no-op "
                f"round trips, 3 bursts of no-op jobs sized to ~{settings.round_time:g} s, "
                f"{settings.payload_samples} sequential 1 MiB echo round trips); "
                "ProcessPoolExecutor uses the platform's default start method ("
                f"{__import__('multiprocessing').get_context().get_start_method()})"),
        extra={"shutdown_s": shutdown, "latency_histogram_s": hist,
               "burst_jobs": {p: [x["burst_jobs"] for x in results[p]] for p in PEERS},
               "ppe_start_method": __import__("multiprocessing").get_context().get_start_method()})
