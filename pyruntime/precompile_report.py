"""What a long precompile run leaves behind as it goes: a journal to resume
from, a report streamed kernel by kernel, progress with a rate and an ETA.

Journal (resume). ``<cache>/.pyruntime-precompile.jsonl`` gets one JSON
line per kernel built into that cache, appended (one ``write``, flushed) as
its result arrives, so it survives Ctrl-C and a crash of the run (not a
crash of the machine: it is not fsynced line by line). A later run skips a
spec (:meth:`Journal.lookup`, passed to ``precompile(resume=...)``; the
CLI's default, ``--no-resume`` turns it off) when the journal has it and

- its kernel directory is still complete in the cache (Triton's
  ``__grp__*.json`` is there, written last),
- the Triton version and the Python (``sys.implementation.cache_tag``) are
  the ones that built it (Triton's keys depend on both),
- the file that defines the kernel function has the size and modification
  time it had then.

Other files a kernel calls into are not checked: after editing one, run
with ``--no-resume`` (Triton's own cache then finds the kernels that did not
change, at the price of importing their modules). Failed kernels are never
journaled, so a rerun retries them. Several runs may append to one journal
at once (each line is one ``O_APPEND`` write).

Report. :class:`ReportStream` writes ``--json OUT.jsonl``: a header line,
one line per result as it arrives (``tail -f`` it), a summary line at the
end (also after Ctrl-C, with ``"interrupted": true``).
:func:`write_json_report` writes ``--json OUT.json`` at the end, atomically,
results in list order.

Progress. :class:`ScaleProgress` is :class:`~pyruntime.precompile.ProgressBar`
plus the resumed count, the build rate over the last minute and an ETA from it.

:func:`run_build` puts these together for ``python -m pyruntime precompile``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import IO, Any, Iterable, Mapping, Sequence, TextIO

from ._atomic import write_atomic
from .executors import ExecutorChoice, open_executor, parse_executor
from .kernel_imports import preload_env, summarize
from .kernels import KernelSpec
from .precompile import PrecompileResult, PrecompileResults, ProgressBar, precompile

__all__ = [
    "BuildRun",
    "JOURNAL_NAME",
    "Journal",
    "ReportStream",
    "ScaleProgress",
    "counts",
    "imports_line",
    "result_dict",
    "run_build",
    "write_json_report",
]

JOURNAL_NAME = ".pyruntime-precompile.jsonl"
JOURNAL_VERSION = 1
RATE_WINDOW_S = 60.0


def _triton_version() -> str | None:
    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return None


def _stat(path: str | None) -> list[Any] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [path, st.st_size, st.st_mtime_ns]


def _complete(kernel_dir: str) -> bool:
    try:
        return any(n.startswith("__grp__") and n.endswith(".json") for n in os.listdir(kernel_dir))
    except OSError:
        return False


class Journal:
    """The kernels built into one cache directory (see the module docstring)."""

    def __init__(self, cache_dir: str | os.PathLike[str], *, read: bool = True) -> None:
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        self.path = os.path.join(self.cache_dir, JOURNAL_NAME)
        self.triton = _triton_version()
        self.python = sys.implementation.cache_tag
        self.entries: dict[str, dict[str, Any]] = self._read() if read else {}
        self.resumed = 0
        self.written = 0
        self._fd: int | None = None
        self._broken: str | None = None

    def _read(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        try:
            f = open(self.path, encoding="utf-8", errors="replace")
        except OSError:
            return out
        with f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if isinstance(e, dict) and e.get("v") == JOURNAL_VERSION and isinstance(e.get("key"), str):
                    out[e["key"]] = e  # later lines win
        return out

    def lookup(self, spec: KernelSpec) -> PrecompileResult | None:
        """The earlier result of ``spec`` when it can be trusted (see the module docstring), else None."""
        e = self.entries.get(spec.key())
        if e is None or e.get("triton") != self.triton or e.get("python") != self.python:
            return None
        key = e.get("cache_key")
        if not isinstance(key, str) or "/" in key or key.startswith("."):
            return None
        kdir = os.path.join(self.cache_dir, key)
        src = e.get("source")
        if not _complete(kdir) or not isinstance(src, list) or _stat(src[0]) != src:
            return None
        self.resumed += 1
        return PrecompileResult(
            spec=spec, target=spec.target, name=e.get("name"), cache_key=key, hash=e.get("hash"), path=kdir,
            cached=True, metadata=dict(e.get("metadata") or {}), source_file=src[0], resumed=True)

    def record(self, r: PrecompileResult) -> None:
        """Append ``r`` when it built (or was found in the cache); never raises
        (a journal that cannot be written is reported once and dropped)."""
        if not r.ok or r.resumed or not r.cache_key or self._broken is not None:
            return
        line = json.dumps({
            "v": JOURNAL_VERSION, "key": r.spec.key(), "label": r.label, "name": r.name,
            "cache_key": r.cache_key, "hash": r.hash, "metadata": r.metadata, "source": _stat(r.source_file),
            "triton": self.triton, "python": self.python, "time": round(time.time(), 3),
        }, default=str, separators=(",", ":")) + "\n"
        try:
            if self._fd is None:
                os.makedirs(self.cache_dir, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.write(self._fd, line.encode("utf-8"))
            self.written += 1
        except OSError as e:
            self._broken = f"{self.path}: {e.strerror or e}"
            print(f"precompile: warning: cannot write the journal ({self._broken}); "
                  "a rerun will not skip what this one builds", file=sys.stderr)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------ reports


def result_dict(r: PrecompileResult) -> dict[str, Any]:
    """One result as the reports write it (``status`` is ``"resumed"`` for a skipped one)."""
    d = r.to_dict()
    if r.resumed:
        d["status"] = "resumed"
    if r.ok:
        d.pop("traceback", None)
    return d


def counts(results: Iterable[PrecompileResult]) -> dict[str, int]:
    c = {"compiled": 0, "cached": 0, "resumed": 0, "failed": 0}
    for r in results:
        c["resumed" if r.resumed else r.status] += 1
    return c


class ReportStream:
    """``--json OUT.jsonl``: JSON Lines written as the run goes."""

    def __init__(self, path: str, header: Mapping[str, Any]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._f: IO[str] | None = open(path, "w", encoding="utf-8")
        self._write({"kind": "header", **header})

    def _write(self, obj: Mapping[str, Any]) -> None:
        if self._f is not None:
            self._f.write(json.dumps(obj, default=str) + "\n")
            self._f.flush()

    def result(self, r: PrecompileResult) -> None:
        self._write({"kind": "result", **result_dict(r)})

    def close(self, summary: Mapping[str, Any]) -> None:
        self._write({"kind": "summary", **summary})
        if self._f is not None:
            self._f.close()
            self._f = None


def write_json_report(path: str, summary: Mapping[str, Any], results: Sequence[PrecompileResult]) -> None:
    """``--json OUT.json``: one document, written atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    doc = {**summary, "results": [result_dict(r) for r in results]}
    write_atomic(path, (json.dumps(doc, indent=2, default=str) + "\n").encode("utf-8"))


# where a module imported once before the workers forked (kernel_imports' WHERE_VAR) -> how it reads
PRELOADERS = {"sidecar": "sidecar", "forkserver": "Dask fork server"}


def imports_line(imports: Sequence[Mapping[str, Any]]) -> str | None:
    """One line on where the kernel modules were imported and what it cost."""
    if not imports:
        return None
    side = [m for m in imports if m.get("where") in PRELOADERS]
    workers = [m for m in imports if m.get("where") not in PRELOADERS]
    def names(ms: Iterable[Mapping[str, Any]]) -> str:
        mods = list(dict.fromkeys(os.path.basename(str(m["module"])) for m in ms))
        return ", ".join(mods) if len(mods) <= 3 else f"{len(mods)} modules"

    parts = []
    if side:
        ok = [m for m in side if not m.get("error")]
        where = PRELOADERS[side[0]["where"]]
        parts.append(f"{names(ok)} once in the {where} before the workers forked "
                     f"({sum(m['seconds'] for m in ok):.2f} s)")
        bad = [m for m in side if m.get("error")]
        if bad:
            parts.append(f"{names(bad)} failed there and fell back to the workers")
    if workers:
        procs = {m.get("pid") for m in workers}
        parts.append(f"{names(workers)} in {len(procs)} worker process(es) "
                     f"({sum(m['seconds'] for m in workers):.2f} s in all)")
    return "imports: " + "; ".join(parts)


# ------------------------------------------------------------ progress


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class ScaleProgress(ProgressBar):
    """:class:`ProgressBar` with the resumed count, and, while the run goes,
    the rate of the last minute's builds and the ETA it gives."""

    def __init__(self, stream: TextIO | None = None, **kw: Any) -> None:
        super().__init__(stream, **kw)
        self.resumed = 0
        self._built: collections.deque[float] = collections.deque()

    def start(self, total: int) -> None:
        self.resumed = 0
        self._built.clear()
        super().start(total)

    def update(self, result: PrecompileResult) -> None:
        if result.resumed:
            self.resumed += 1
        else:
            self._built.append(time.perf_counter())
        super().update(result)

    def rate(self, now: float) -> float | None:
        """Builds per second over the last minute (since the first build when sooner)."""
        while len(self._built) > 1 and now - self._built[0] > RATE_WINDOW_S:
            self._built.popleft()
        if not self._built:
            return None
        span = now - min(self._built[0], max(self.start_t, now - RATE_WINDOW_S))
        return len(self._built) / span if span > 0 else None

    def _cached_shown(self) -> int:
        return self.counts["cached"] - self.resumed

    def _extra(self, done: int, now: float) -> str:
        text = f"  resumed {self.resumed}" if self.resumed else ""
        if done < self.total:
            rate = self.rate(now)
            if rate:
                text += f"  {rate:.2f}/s  ETA {_duration((self.total - done) / rate)}"
        return text


# ------------------------------------------------------------ one CLI run


@dataclass
class BuildRun:
    """What :func:`run_build` did: the results (in list order, or in arrival
    order when interrupted), the wall time, where the builds ran and how many
    at once, whether Ctrl-C stopped it, and its journal."""

    results: PrecompileResults
    wall_s: float
    where: str
    workers: int | None
    interrupted: bool
    journal: Journal

    def summary(self, cache_dir: str) -> dict[str, Any]:
        """The report's fields besides the results."""
        imports = self.results.imports
        return {
            "cache_dir": cache_dir, "wall_s": self.wall_s, "workers": self.workers, "executor": self.where,
            "interrupted": self.interrupted, "counts": counts(self.results),
            "import_s": sum(m["seconds"] for m in imports),
            "compile_s": sum(r.compile_time_s for r in self.results),
            "imports": imports, "journal": self.journal.path,
        }


def run_build(specs: Sequence[KernelSpec], *, cache_dir: str, workers: int, executor: str | None = None,
              resume: bool = True, json_out: str | None = None, progress: Any = None,
              **precompile_kw: Any) -> BuildRun:
    """``python -m pyruntime precompile``'s build: :func:`~pyruntime.precompile.precompile`
    on the local pool (``workers``) or on ``executor`` (``dask://HOST:PORT``,
    ``dask-local:N``), resuming from and writing to the cache's journal, and
    streaming ``json_out`` when it ends in ``.jsonl``. Ctrl-C ends it with
    ``interrupted`` set and the results that arrived; the journal and the
    stream are complete up to them. Raises ExecutorError for a bad executor."""
    choice = parse_executor(executor) if executor else ExecutorChoice("local")
    journal = Journal(cache_dir, read=resume)
    arrived: list[PrecompileResult] = []
    stream: ReportStream | None = None
    where = str(choice)
    nworkers: int | None = min(workers, len(specs)) if choice.kind == "local" else None
    start = time.perf_counter()
    results: PrecompileResults | None = None
    interrupted = False

    def on_result(r: PrecompileResult) -> None:
        arrived.append(r)
        journal.record(r)
        if stream is not None:
            stream.result(r)

    try:
        with contextlib.ExitStack() as stack:
            kw: dict[str, Any] = dict(precompile_kw)
            if choice.kind == "local":
                kw["workers"] = workers
            else:
                preload = {}
                if choice.kind == "dask-local":  # its workers fork from a server that imports these once
                    preload = preload_env([s for s in specs if journal.lookup(s) is None], where="forkserver")
                opened = stack.enter_context(open_executor(choice, preload=preload))
                kw["executor"] = opened.executor
                nworkers = opened.slots
                kw.pop("pool_kind", None)
            if json_out and json_out.endswith(".jsonl"):
                stream = ReportStream(json_out, {
                    "cache_dir": cache_dir, "kernels": len(specs), "executor": where, "workers": nworkers,
                    "targets": sorted({s.target for s in specs}), "started": time.time()})
            results = precompile(specs, cache_dir=cache_dir, progress=progress, resume=journal.lookup,
                                 on_result=on_result, **kw)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        journal.close()
    if results is None:
        results = PrecompileResults(arrived, summarize(None, arrived))
    run = BuildRun(results, time.perf_counter() - start, where, nworkers, interrupted, journal)
    if stream is not None:
        stream.close(run.summary(cache_dir))
    return run
