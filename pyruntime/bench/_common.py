"""Shared pieces of the bench runner: settings, statistics, metric records,
child processes, progress and machine information.

How figures are made stable on a noisy machine. Every measurement is taken
in several *rounds*; within a round the implementations being compared run
one after the other (interleaved), so a burst of load from something else
hits every peer about equally instead of one of them. A round of a
throughput figure repeats the operation until ``round_time`` seconds have
passed and yields one rate; the reported value is the median over rounds,
with the spread (max - min) / median beside it. Latency figures keep every
sample of every round: p50 and p99 come from the pooled samples, the spread
from the per-round medians.

Peers that need torch (or that might hang or crash) run in a fresh child
interpreter (:func:`run_child`), so the bench process never imports torch
and one peer's import cost or threads do not leak into another's figures.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

SCHEMA_VERSION = 1


# ------------------------------------------------------------------ settings
@dataclass
class Settings:
    """Knobs every suite reads; ``quick`` scales them all down."""

    quick: bool = False
    rounds: int = 5
    round_time: float = 0.3          # seconds per throughput round
    pool_rounds: int = 5             # fresh pools per implementation
    latency_samples: int = 2000      # no-op round trips per pool round
    payload_samples: int = 40        # 1 MiB round trips per pool round
    compile_kernels: int = 48
    compile_rounds: int = 5
    compile_workers: list[int] = field(default_factory=list)
    corpus_dir: str | None = None
    corpus_kernels: int = 500
    child_timeout: float = 600.0
    progress: Any = None             # Progress

    @classmethod
    def make(cls, quick: bool, **overrides: Any) -> "Settings":
        cores = usable_cpus()
        if quick:
            s = cls(quick=True, rounds=3, round_time=0.08, pool_rounds=1, latency_samples=300,
                    payload_samples=10, compile_kernels=8, compile_rounds=1,
                    compile_workers=sorted({1, cores}))
        else:
            s = cls(compile_workers=list(range(1, cores + 1)))
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s

    def describe(self) -> str:
        return (f"{self.rounds} rounds per figure (peers interleaved within each round), "
                f"{self.round_time:g} s per throughput round; {self.pool_rounds} fresh pool(s) per "
                f"peer with {self.latency_samples} no-op and {self.payload_samples} 1 MiB round trips "
                f"each; compile: {self.compile_kernels} kernels x {self.compile_rounds} round(s); "
                "reported: median over rounds, spread = (max-min)/median, p50/p99 over all samples")


@contextlib.contextmanager
def use_backend(be: Any) -> Iterator[None]:
    """Point the public API (framing, hashing, packing) at one backend for
    a measurement, so both backends are timed through the same wrappers."""
    from .. import core

    saved = core.backend
    core.backend = be
    try:
        yield
    finally:
        core.backend = saved


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---------------------------------------------------------------- statistics
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation."""
    if not values:
        return math.nan
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = (len(s) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def summarize(rounds: Sequence[float], samples: Sequence[float] | None = None) -> dict[str, Any]:
    """Median, spread and extremes over per-round values; with ``samples``
    (every single observation) also pooled p50/p99 (median := pooled p50)."""
    vals = [float(v) for v in rounds]
    med = statistics.median(vals)
    out: dict[str, Any] = {
        "median": med,
        "min": min(vals),
        "max": max(vals),
        "spread": (max(vals) - min(vals)) / med if med else 0.0,
        "rounds": vals,
    }
    if samples is not None and len(samples):
        out["median"] = percentile(samples, 50)
        out["p50"] = out["median"]
        out["p90"] = percentile(samples, 90)
        out["p99"] = percentile(samples, 99)
        out["n"] = len(samples)
        out["spread"] = (max(vals) - min(vals)) / out["median"] if out["median"] else 0.0
    return out


def log_edges(samples: Iterable[float], bins: int = 60) -> list[float]:
    """``bins + 1`` log-spaced edges covering every positive sample."""
    pos = [x for x in samples if x > 0]
    if not pos:
        return []
    lo, hi = math.log10(min(pos)), math.log10(max(pos))
    if hi - lo < 1e-9:
        hi = lo + 1e-3
    return [10 ** (lo + (hi - lo) * i / bins) for i in range(bins + 1)]


def histogram(samples: Sequence[float], edges: Sequence[float]) -> dict[str, list[float]]:
    """Counts of ``samples`` in the bins ``edges`` (kept in the JSON, where
    the plots are drawn from)."""
    counts = [0] * max(0, len(edges) - 1)
    if not counts:
        return {"edges": list(edges), "counts": counts}
    import bisect

    for x in samples:
        i = bisect.bisect_right(edges, x) - 1
        counts[min(max(i, 0), len(counts) - 1)] += 1
    return {"edges": list(edges), "counts": counts}


def timed_rate(fn: Callable[[], Any], round_time: float, work: float = 1.0,
               min_calls: int = 1) -> float:
    """Call ``fn`` until ``round_time`` seconds pass; returns work units per
    second (``work`` units per call)."""
    calls = 0
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        el = time.perf_counter() - start
        if el >= round_time and calls >= min_calls:
            return calls * work / el


def time_once(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------ metric records
def metric(mid: str, title: str, unit: str, better: str, ours: str | None,
           values: dict[str, dict[str, Any]], goal: dict[str, Any] | None = None,
           label: str | None = None, note: str | None = None) -> dict[str, Any]:
    """One figure measured for several implementations.

    ``unit``: "s" (time), "B/s", "1/s" (with ``label`` such as "frames/s"),
    "B" (size) or "x" (plain ratio). ``better``: "higher" or "lower".
    ``values[impl]`` is a :func:`summarize` dict or ``{"status": "n/a",
    "reason": ...}``. ``ratios[peer]`` says how many times better ``ours``
    is than that peer (above 1: ours wins)."""
    m: dict[str, Any] = {"id": mid, "title": title, "unit": unit, "label": label or unit,
                         "better": better, "ours": ours, "values": values, "ratios": {}}
    if note:
        m["note"] = note
    base = values.get(ours or "", {})
    if ours and "median" in base:
        for impl, v in values.items():
            if impl == ours or "median" not in v or not v["median"] or not base["median"]:
                continue
            r = base["median"] / v["median"] if better == "higher" else v["median"] / base["median"]
            m["ratios"][impl] = r
    if goal is not None:
        m["goal"] = dict(goal)
        m["goal"]["met"] = goal_met(m, goal)
    return m


def goal_met(m: dict[str, Any], goal: dict[str, Any]) -> bool | None:
    """``goal``: {"kind": "ratio", "peer": P, "min": x} (ours at least x
    times better than P), {"kind": "max", "value": v} / {"kind": "min",
    "value": v} (ours' median), always with "text"."""
    ours = m["values"].get(m["ours"] or "", {})
    if "median" not in ours:
        return None
    kind = goal["kind"]
    if kind == "ratio":
        r = m["ratios"].get(goal["peer"])
        return None if r is None else r >= goal["min"]
    if kind == "max":
        return ours["median"] <= goal["value"]
    if kind == "min":
        return ours["median"] >= goal["value"]
    raise ValueError(f"unknown goal kind {kind!r}")


def na(reason: str) -> dict[str, Any]:
    return {"status": "n/a", "reason": reason}


def suite_result(name: str, *, method: str, metrics: list[dict[str, Any]],
                 extra: dict[str, Any] | None = None, status: str = "ok",
                 reason: str | None = None) -> dict[str, Any]:
    return {"suite": name, "status": status, "reason": reason, "method": method,
            "metrics": metrics, "extra": extra or {}}


def suite_na(name: str, reason: str) -> dict[str, Any]:
    return suite_result(name, method="", metrics=[], status="n/a", reason=reason)


# ----------------------------------------------------------------- progress
class Progress:
    """One status line on stderr: rewritten in place on a terminal, one
    line per step otherwise (so logs show where a long run is)."""

    def __init__(self, enabled: bool = True, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self._width = 0

    def step(self, suite: str, text: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.monotonic() - self.start:6.1f}s] {suite}: {text}"
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def progress_of(settings: Settings) -> Progress:
    return settings.progress if settings.progress is not None else Progress(False)


# ------------------------------------------------------------ child processes
class ChildError(RuntimeError):
    pass


def run_child(target: str, kwargs: dict[str, Any], *, timeout: float,
              env: dict[str, str] | None = None) -> Any:
    """Run ``module:function(**kwargs)`` in a fresh interpreter and return
    its JSON-able result. Raises ChildError (with the child's stderr tail)
    on a failure or time-out, so a broken peer becomes "error", never a
    crash of the whole run."""
    with tempfile.TemporaryDirectory(prefix="prt-bench-") as tmp:
        inp, outp = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(inp, "w") as f:
            json.dump(kwargs, f)
        full_env = dict(os.environ)
        # the child must import this very package (tests run from a checkout)
        paths = [os.getcwd() if p == "" else p for p in sys.path]
        full_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "pyruntime.bench._child", target, inp, outp]
        try:
            proc = subprocess.run(cmd, env=full_env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as e:
            raise ChildError(f"{target} timed out after {timeout:g} s") from e
        if proc.returncode != 0 or not os.path.exists(outp):
            tail = (proc.stderr or b"").decode("utf-8", "replace").strip().splitlines()[-6:]
            raise ChildError(f"{target} exited with status {proc.returncode}: " + " | ".join(tail))
        with open(outp) as f:
            return json.load(f)


def run_compile_child(target: str, kwargs: dict[str, Any], *, scratch: str, timeout: float) -> Any:
    """:func:`run_child` of a compile measurement: ``kwargs`` plus a fresh,
    empty Triton cache under ``scratch`` (``cache_dir``, removed afterwards),
    with ``others_cores`` (:class:`CpuMeter`) added to the result."""
    cache = tempfile.mkdtemp(prefix="cache-", dir=scratch)
    meter = CpuMeter()
    try:
        res = run_child(target, {**kwargs, "cache_dir": cache}, timeout=timeout)
        res["others_cores"] = meter.stop().get("others_cores")
        return res
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# ------------------------------------------------------------- other load
class CpuMeter:
    """How busy the machine was with *other* work while a suite ran.

    Machine-wide busy time comes from /proc/stat; this process's own CPU
    time, including every child it has waited for (bench children, and
    through them their pools' workers), from os.times(). The difference over
    the wall time is the average number of cores other processes took: the
    noise indicator printed with each suite. None where /proc is missing."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._busy0 = self._busy()
        self._own0 = self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        v = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        busy1 = self._busy()
        own = self._own() - self._own0
        out: dict[str, Any] = {"wall_s": wall, "ours_cores": own / wall if wall else None}
        if busy1 is not None and self._busy0 is not None and wall > 0:
            out["machine_cores"] = (busy1 - self._busy0) / wall
            out["others_cores"] = max(0.0, out["machine_cores"] - out["ours_cores"])
        return out


# --------------------------------------------------------------- environment
def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (no torch/triton import needed)."""
    from .. import __version__, core

    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cpus(),
        "memory_bytes": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "versions": {
            "pyruntime": __version__,
            "triton": _version("triton"),
            "torch": _version("torch"),
            "lz4": _version("lz4"),
            "xxhash": _version("xxhash"),
            "cffi": _version("cffi"),
            "matplotlib": _version("matplotlib"),
        },
        "backend": core.BACKEND,
        "backends_available": [b.name for b in core.backends()],
        "loadavg_start": list(os.getloadavg()),
    }


def have_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def first_missing(modules: Iterable[str]) -> str | None:
    for m in modules:
        if not have_module(m):
            return m
    return None
