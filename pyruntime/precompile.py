"""Build many Triton kernels ahead of time, in parallel, for a named GPU target.

``precompile(specs, workers=N)`` (or ``pool=executor``) sends one job per
:class:`~pyruntime.kernels.KernelSpec` to a pool of worker processes and
returns one :class:`PrecompileResult` per spec, in the order given. Each job
runs :func:`compile_spec` in a worker, which wraps
:func:`pyruntime.compile_tasks.worker_compile_triton` around a
:class:`TritonBuild` (import or load the function, then ``triton.compile``
of an ``ASTSource`` for the spec's ``GPUTarget``) with ``TRITON_CACHE_DIR``
set to the chosen cache. Named targets need no GPU.

Failure isolation. A job never raises for a bad kernel: the worker catches
the exception and returns a result whose ``error`` is Triton's own
diagnostic (source line, caret, message; ptxas output for assembler
failures) and whose ``traceback`` holds the worker traceback. A worker that
*dies* (segfault, ``os._exit``, OOM kill) is the pool's business: the
project's SubprocPool fails only that job (``WorkerDiedError``); a
``ProcessPoolExecutor`` breaks as a whole, so when precompile owns the pool
it re-runs the jobs caught in the breakage in single-worker "lanes", where
a crash can only take down the kernel that caused it.

"Already cached" means Triton found the kernel complete in the cache and
did not build it: the kernel directory and its metadata group existed before
this compile (an empty directory left by a failed compile does not count).
It is read from Triton's compilation listener, which reports exactly that.
The cache key is the kernel's directory name under the cache directory (the
base32 form of ``CompiledKernel.hash``), the name Triton and the bundler use.

Recording. When ``pyruntime.bundle`` is importable and its
``TritonBundler.is_enabled()``, every kernel that built (or was found in the
cache) is reported with ``TritonBundler.put(cache_key, 0, cache_dir=...)`` as its result
arrives in the calling process, so a bundle being recorded around this call
picks the kernels up. Kernels built for a named target are not tied to a
device; they are recorded as device 0.

The pool. With ``workers=N`` precompile makes one with
:func:`create_compile_pool` (SubprocPool when ``pyruntime.pool`` is
importable, else a spawn-context ``ProcessPoolExecutor``; never a fork of
this process, which may have imported triton and started threads) and shuts
it down afterwards. A ``pool`` passed in is used as is and left running, so
a launcher can keep one warm across calls. Workers pay Triton's start-up
costs (imports, the libtriton hash, a probe build: about a second) before
their first job (:func:`warm_worker`); SubprocPool's sidecar pays them once
before forking, so its workers start warm for free.

Scale (:mod:`pyruntime.executors`, :mod:`pyruntime.kernel_imports`). The
modules a list names are imported once: SubprocPool's sidecar imports them
before it forks the workers, which share them (a module that fails there is
imported by each worker instead); ``import_s`` on a result is the import
its build paid in its process (0 when the module was already there) and
``compile_time_s`` the build alone; the returned list's ``imports`` says
where each module was imported and what it cost. At most ``max_in_flight``
jobs are submitted at a time. ``executor=`` runs the builds on any
``concurrent.futures.Executor``, another machine's included (a Dask
cluster's): the job returns the kernel packed and the caller writes it into
the cache atomically. ``resume=`` skips specs an earlier run built
(:class:`pyruntime.precompile_report.Journal`); ``on_result`` sees every
result as it arrives.

Supported Triton: 3.6 to 3.9 (``ASTSource(fn, signature, constexprs,
attrs)``, ``GPUTarget``, ``knobs.compilation.listener`` and the file cache
layout are the same across that range).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import importlib
import logging
import os
import sys
import time
import traceback
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, TextIO

from . import config
from .compile_tasks import set_triton_ptxas_path, warm_triton, worker_compile_triton
from .executors import default_window, executor_slots, packed_job, restore_packed, run_windowed, shutdown_now
from .kernel_imports import import_kernel, kernel_source_file, preload_env, preload_report, summarize
from .kernels import KernelSpec, resolve_target
from .specialize import compile_inputs, record_compiled

__all__ = [
    "PrecompileResult",
    "PrecompileResults",
    "ProgressBar",
    "TritonBuild",
    "compile_spec",
    "create_compile_pool",
    "default_cache_dir",
    "precompile",
    "warm_worker",
]

log = logging.getLogger(__name__)

# Modules a worker needs for every build.
TRITON_MODULES = ("triton", "triton.language", "triton.compiler.compiler",
                  "triton.backends.nvidia.compiler", "triton.backends.amd.compiler")
# What SubprocPool's sidecar imports before forking workers: the module warms
# Triton (imports, libtriton hash, one probe build) without starting threads,
# so every forked worker starts warm.
PRELOAD = ("pyruntime._triton_preload",)
# Imported by the sidecar first when a run names kernel modules: it imports
# them once, before the fork (pyruntime.kernel_imports).
KERNEL_PRELOAD = "pyruntime._kernel_preload"
# A worker of precompile's own SubprocPool is replaced (a fresh fork of the
# sidecar: nothing to import again) after this many builds, which bounds
# what long runs accumulate in it.
JOBS_PER_WORKER = 256


@dataclass
class PrecompileResult:
    """The outcome of one spec. ``ok`` when ``error`` is None."""

    spec: KernelSpec
    target: str
    name: str | None = None  # the Triton kernel's name
    cache_key: str | None = None  # kernel directory name under cache_dir
    hash: str | None = None  # CompiledKernel.hash (hex)
    path: str | None = None  # the kernel directory
    compile_time_s: float = 0.0  # in the worker: the build (or cache hit), not the module's import
    cached: bool = False
    error: str | None = None
    traceback: str | None = None
    warnings: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)  # num_warps, num_stages, shared
    worker_pid: int | None = None
    # the host-code directories a launch of this kernel looks up (pyruntime.host_code)
    host_keys: tuple[str, ...] = ()
    import_s: float = 0.0  # importing the kernel's module in this worker process (0: already there)
    source_file: str | None = None  # the file defining the kernel (resume checks it has not changed)
    resumed: bool = False  # not built: an earlier run did (precompile(resume=...))

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def status(self) -> str:
        return "failed" if self.error is not None else ("cached" if self.cached else "compiled")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spec"] = self.spec.to_dict()
        d["label"] = self.label
        d["status"] = self.status
        d["warnings"] = list(self.warnings)
        return d


# ------------------------------------------------------------ worker side


class TritonBuild:
    """One spec's build, as :func:`worker_compile_triton` expects: ``precompile()`` then
    ``prepare_for_pickle()`` (which drops the CompiledKernel; only plain fields travel)."""

    def __init__(self, spec: KernelSpec) -> None:
        self.spec = spec
        self.label = spec.label
        self.compiled: Any = None
        self.cached = False
        self.warnings: list[str] = []
        self.name: str | None = None
        self.hash: str | None = None
        self.path: str | None = None
        self.cache_key: str | None = None
        self.metadata: dict[str, Any] = {}

    def precompile(self) -> None:
        import triton
        from triton import knobs

        seen: dict[str, bool] = {}
        previous = getattr(knobs.compilation, "listener", None)

        def listener(**kw: Any) -> None:
            seen["cache_hit"] = bool(kw.get("cache_hit"))
            if previous is not None:
                previous(**kw)

        # Triton's warnings (deprecations, option defaults) go into the result
        # instead of every worker's stderr.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn = self.spec.load_function()
            src, target, options = compile_inputs(self.spec, fn)
            knobs.compilation.listener = listener
            try:
                self.compiled = triton.compile(src, target=target, options=options)
            finally:
                knobs.compilation.listener = previous
            # what freeze() compares a launch that misses with (pyruntime.spec.json in the kernel dir)
            record_compiled(self.compiled, src, target, options)
        self.cached = seen.get("cache_hit", False)
        self.warnings = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))

    def prepare_for_pickle(self) -> None:
        c = self.compiled
        self.compiled = None
        if c is None:
            return
        group = dict(getattr(c, "metadata_group", {}) or {})
        some = next(iter(group.values()), None)
        self.path = os.path.dirname(some) if some else None
        self.cache_key = os.path.basename(self.path) if self.path else None
        self.hash = c.hash
        self.name = c.name
        md = c.metadata
        self.metadata = {k: getattr(md, k) for k in ("num_warps", "num_stages", "shared") if hasattr(md, k)}


def compile_spec(spec: KernelSpec, extra_env: Mapping[str, str], extra_config: Mapping[str, Any]) -> PrecompileResult:
    """The pool job: build ``spec``; never raises for a kernel that fails to build.
    The kernel's module is imported first, once per process
    (:func:`~pyruntime.kernel_imports.import_kernel`): ``import_s`` is what
    that cost this job, ``compile_time_s`` the build alone."""
    target = spec.target
    start = time.perf_counter()
    import_s = 0.0
    try:
        os.environ.update(extra_env)  # the import sees the environment the build does
        import_s = import_kernel(spec)
        build, elapsed_us = worker_compile_triton(lambda: TritonBuild(spec), extra_env, extra_config)
    except Exception as e:
        return PrecompileResult(
            spec=spec, target=target, name=spec.function_name,
            compile_time_s=max(0.0, time.perf_counter() - start - import_s), import_s=import_s,
            error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(), worker_pid=os.getpid(),
        )
    return PrecompileResult(
        spec=spec, target=target, name=build.name, cache_key=build.cache_key, hash=build.hash, path=build.path,
        compile_time_s=elapsed_us / 1e6, cached=build.cached, warnings=tuple(build.warnings),
        metadata=build.metadata, worker_pid=os.getpid(), import_s=import_s, source_file=kernel_source_file(spec),
    )


def warm_worker() -> None:
    """Pool initializer: import triton and its backends and pay Triton's
    start-up costs (:func:`~pyruntime.compile_tasks.warm_triton`) before the
    first job. A no-op in workers forked from a sidecar that already did it."""
    set_triton_ptxas_path()
    for name in TRITON_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # a Triton build without one backend still compiles for the other
            pass
    warm_triton()


# ------------------------------------------------------------ the pool


def create_compile_pool(workers: int, *, kind: str = "auto", preload_specs: Iterable[KernelSpec] = (),
                        env: Mapping[str, str] | None = None) -> cf.Executor:
    """The hook that makes precompile's own pool.

    ``kind="auto"`` uses the project's ``SubprocPool`` (workers forked from a
    clean sidecar that preloaded triton) when ``pyruntime.pool`` imports, else
    ``"process"``: a ``ProcessPoolExecutor`` with the spawn start method. Either way workers
    start warm (:func:`warm_worker`; SubprocPool's sidecar warms once, before
    forking, via ``pyruntime._triton_preload``). With ``preload_specs`` the
    sidecar also imports their modules once, before forking
    (``pyruntime._kernel_preload``), with ``env`` (the builds' environment)
    set; ProcessPoolExecutor workers import them on their first build.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if kind not in ("auto", "subproc", "process"):
        raise ValueError(f"pool kind must be auto, subproc or process, not {kind!r}")
    if kind in ("auto", "subproc"):
        try:
            from .pool import SubprocPool
        except ImportError:
            if kind == "subproc":
                raise
        else:
            kernel_env = preload_env(preload_specs)
            return SubprocPool(workers, initializer=warm_worker,
                               preload=((KERNEL_PRELOAD,) if kernel_env else ()) + PRELOAD,
                               env={**(env or {}), **kernel_env}, max_jobs_per_worker=JOBS_PER_WORKER)
    import multiprocessing

    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=warm_worker)


# ------------------------------------------------------------ progress


class ProgressBar:
    """Progress on a stream: one rewritten ``\\r`` line on a terminal, else a
    line every ``every_s`` seconds (and at the end). No dependencies."""

    def __init__(self, stream: TextIO | None = None, *, every_s: float = 5.0, width: int = 24,
                 tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = every_s
        self.width = width
        self.total = 0
        self.counts = {"compiled": 0, "cached": 0, "failed": 0}
        self.start_t = time.perf_counter()
        self._last_line = 0.0
        self._last_label = ""

    def start(self, total: int) -> None:
        self.total = total
        self.start_t = time.perf_counter()
        self._last_line = self.start_t
        if self.tty:
            self._write("\r" + self._line(0, self.start_t)[: self._columns() - 1] + "\x1b[K")
        else:
            self._write(f"precompile: {total} kernels\n")

    def update(self, result: PrecompileResult) -> None:
        self.counts[result.status] += 1
        self._last_label = result.label
        now = time.perf_counter()
        done = sum(self.counts.values())
        if self.tty:
            self._write("\r" + self._line(done, now)[: self._columns() - 1] + "\x1b[K")
        elif now - self._last_line >= self.every_s:
            self._last_line = now
            self._write(self._line(done, now) + "\n")

    def close(self) -> None:
        done = sum(self.counts.values())
        line = self._line(done, time.perf_counter())
        if self.tty:
            self._write("\r" + line[: self._columns() - 1] + "\x1b[K\n")
        else:
            self._write(line + "\n")

    def _line(self, done: int, now: float) -> str:
        total = max(self.total, 1)
        filled = int(self.width * done / total)
        bar = "#" * filled + "-" * (self.width - filled)
        c = self.counts
        text = (f"[{bar}] {done}/{self.total}  {now - self.start_t:.1f}s  compiled {c['compiled']}  "
                f"cached {self._cached_shown()}  failed {c['failed']}") + self._extra(done, now)
        if self.tty and self._last_label and done < self.total:
            text += f"  {self._last_label}"
        return text

    def _cached_shown(self) -> int:
        return self.counts["cached"]

    def _extra(self, done: int, now: float) -> str:
        """What a subclass shows after the counts (before the last kernel's label)."""
        return ""

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 100

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


# ------------------------------------------------------------ precompile


def default_cache_dir() -> str:
    """Triton's cache directory: ``TRITON_CACHE_DIR``, else ``$TRITON_HOME/.triton/cache``."""
    d = os.environ.get("TRITON_CACHE_DIR")
    if d:
        return d
    home = os.environ.get("TRITON_HOME") or os.path.expanduser("~")
    return os.path.join(home, ".triton", "cache")


class _BundlerHook:
    """Report built kernels to :class:`pyruntime.bundle.TritonBundler` while it records."""

    def __init__(self, cache_dir: str) -> None:
        from .bundle import TritonBundler

        self.bundler = TritonBundler if TritonBundler.is_enabled() else None
        self.cache_dir = cache_dir  # the bundler reads kernels from where they were built

    def __call__(self, result: PrecompileResult) -> None:
        if self.bundler is None or result.cache_key is None:
            return
        try:
            self.bundler.put(result.cache_key, 0, cache_dir=self.cache_dir)
        except Exception:  # recording is best effort; the kernel itself built fine
            log.warning("TritonBundler.put failed for %s", result.cache_key, exc_info=True)


def _failed(spec: KernelSpec, error: str) -> PrecompileResult:
    return PrecompileResult(spec=spec, target=spec.target, name=spec.function_name, error=error)


def _job_error(e: BaseException) -> str:
    # SubprocPool's WorkerDiedError/SubprocException already say what happened.
    return f"{type(e).__name__}: {e}"


class PrecompileResults(list[PrecompileResult]):
    """What :func:`precompile` returns: the results in spec order, and
    ``imports``, one record per kernel module and process that imported it
    (:func:`pyruntime.kernel_imports.summarize`: ``module``, ``seconds``,
    ``pid``, ``where`` = ``"sidecar"`` (once, before the workers were
    forked) or ``"worker"``, and ``error`` for a sidecar import that failed)."""

    def __init__(self, results: Iterable[PrecompileResult] = (), imports: list[dict[str, Any]] | None = None) -> None:
        super().__init__(results)
        self.imports: list[dict[str, Any]] = imports or []


def _unpacked(value: Any, cache: str) -> PrecompileResult:
    """An executor job's (result, packed kernel): the kernel written into ``cache``."""
    r, data = value
    if data is not None:
        try:
            restore_packed(r, data, cache)
        except Exception as e:
            return dataclasses.replace(r, path=None, error=(
                f"the kernel built by the executor could not be written into {cache}: {type(e).__name__}: {e}"))
    return r


def precompile(
    specs: Iterable[KernelSpec],
    *,
    workers: int | None = None,
    pool: cf.Executor | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | ProgressBar | Any = False,
    extra_env: Mapping[str, str] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    pool_kind: str = "auto",
    host_code: bool | None = None,
    host_target: Any = None,
    executor: cf.Executor | None = None,
    resume: Callable[[KernelSpec], PrecompileResult | None] | None = None,
    on_result: Callable[[PrecompileResult], None] | None = None,
    max_in_flight: int | None = None,
) -> PrecompileResults:
    """Build every spec in a pool of workers; one result per spec, in order.

    ``workers`` (default: ``PYRUNTIME_WORKERS`` or the CPU count) sizes a
    pool made with :func:`create_compile_pool` (``pool_kind``) and shut down
    at the end; ``pool`` uses a caller's executor instead. ``cache_dir``
    defaults to Triton's (:func:`default_cache_dir`). ``progress`` is True for
    a :class:`ProgressBar` on stderr, or any object with ``start(total)``,
    ``update(result)`` and ``close()``. ``extra_env`` is set in the workers;
    ``extra_config`` patches ``triton.knobs`` there for each build.

    ``executor`` runs the builds on any ``concurrent.futures.Executor``,
    wherever its workers are (a Dask ``client.get_executor()``, say): each
    job returns its kernel packed and the kernel is written into
    ``cache_dir`` here (:mod:`pyruntime.executors`). ``resume(spec)`` returns
    the result of a spec an earlier run built (``resumed=True``; not built
    again) or None. ``on_result(result)`` is called in this thread for every
    result as it arrives (resumed ones first). At most ``max_in_flight`` jobs
    (default: 4 per worker, at least 16) are submitted at a time.

    Raises before building anything when a spec is not a KernelSpec or a
    target is unusable (``local`` without a GPU: :class:`~pyruntime.kernels.TargetError`);
    kernel build failures are results, never exceptions. Ctrl-C stops the
    pool without waiting for running builds and propagates.

    Host code (:mod:`pyruntime.host_code`): after the kernels, the launcher
    stubs and ``cuda_utils`` the CUDA kernels that built need are built
    into the cache for ``host_target`` (a :class:`~pyruntime.host_code.HostTarget`;
    default: this Python and Triton), and each result's ``host_keys`` names
    their directories (a recording bundler is not given them: bundle them
    with ``collect_dir(cache, kernel_keys + host_keys)``). ``host_code=None`` (the default) does so for CUDA
    targets and warns when it cannot; ``True`` raises
    :class:`~pyruntime.host_code.HostCodeError` then; ``False`` skips it.
    """
    given = [n for n, v in (("workers", workers), ("pool", pool), ("executor", executor)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give either workers or pool or executor, not {' and '.join(given)}")
    specs = list(specs)
    for i, s in enumerate(specs):
        if not isinstance(s, KernelSpec):
            raise TypeError(f"specs[{i}] is a {type(s).__name__}, not a KernelSpec")
    # Resolve 'local' here, once, so every worker builds for the same GPU and
    # results name the concrete target.
    local = {str(resolve_target(s.target)) for s in specs if s.target == "local"}
    if local:
        concrete = local.pop()
        specs = [s.with_target(concrete) if s.target == "local" else s for s in specs]
    cache = os.path.abspath(os.fspath(cache_dir) if cache_dir is not None else default_cache_dir())
    os.makedirs(cache, exist_ok=True)
    env = {"TRITON_CACHE_DIR": cache, **(extra_env or {})}
    cfg = dict(extra_config or {})

    if not specs:
        return PrecompileResults()
    bar: Any = ProgressBar() if progress is True else (progress or None)
    record = _BundlerHook(cache)
    results: list[PrecompileResult | None] = [None] * len(specs)

    def finish(i: int, r: PrecompileResult) -> None:
        results[i] = r
        if r.ok:
            record(r)
        if bar is not None:
            bar.update(r)
        if on_result is not None:
            on_result(r)

    if bar is not None:
        bar.start(len(specs))
    todo: list[int] = []
    for i, spec in enumerate(specs):
        earlier = resume(spec) if resume is not None else None
        if earlier is None:
            todo.append(i)
        else:
            finish(i, earlier)
    own = pool is None and executor is None
    nworkers = workers if workers is not None else config.default_workers()
    preloaded: cf.Future[Any] | None = None
    stopped = True  # until the loop ends normally: Ctrl-C or an error stops the pool at once
    try:
        if own and todo:
            pool = create_compile_pool(max(1, min(nworkers, len(todo))), kind=pool_kind,
                                       preload_specs=[specs[i] for i in todo], env=env)
            preloaded = pool.submit(preload_report)  # what the sidecar imported before forking
        runner = executor if executor is not None else pool
        if executor is not None and todo:
            # what the process the executor's workers forked from imported (a Dask LocalCluster's fork server)
            try:
                preloaded = executor.submit(preload_report)
            except Exception:  # a broken executor: every build's own submit says so
                preloaded = None
        window = max_in_flight or default_window(executor_slots(runner))

        def submit(k: int) -> cf.Future[Any]:
            assert runner is not None
            if executor is not None:
                return executor.submit(packed_job, compile_spec, specs[todo[k]], env, cfg)
            return runner.submit(compile_spec, specs[todo[k]], env, cfg)

        broken: list[int] = []
        for k, fut in run_windowed(len(todo), submit, window):
            i = todo[k]
            try:
                value = fut.result()
                finish(i, _unpacked(value, cache) if executor is not None else value)
            except cf.BrokenExecutor as e:
                if own:
                    broken.append(i)
                else:
                    finish(i, _failed(specs[i], _job_error(e)))
            except Exception as e:
                finish(i, _failed(specs[i], _job_error(e)))
        if broken:
            assert pool is not None
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
            log.warning("a compile worker died; re-running %d kernels one per worker", len(broken))
            _run_in_lanes(sorted(broken), specs, env, cfg, nworkers, pool_kind, finish)
        stopped = False
    finally:
        imported = None
        if preloaded is not None and not stopped:
            try:
                imported = preloaded.result(timeout=5)
            except Exception:  # the pool broke: the workers' own imports still show in the results
                imported = None
        if own and pool is not None:
            if stopped:
                shutdown_now(pool)
            else:
                # every job is done: the processes exit in the background (a sidecar that imported
                # torch takes ~1 s to finalize) while the caller goes on; interpreter exit waits for them
                pool.shutdown(wait=False, cancel_futures=True)
        if bar is not None:
            bar.close()
    done = PrecompileResults([r for r in results if r is not None])
    done.imports = summarize(imported, done)
    if host_code is not False:
        _add_host_code(done, cache, bool(host_code), host_target)
    return done


def _add_host_code(results: list[PrecompileResult], cache: str, required: bool, target: Any) -> None:
    """Build the host code of the CUDA kernels that built and note its
    directories on their results."""
    from .host_code import HostCodeError, build_host_code  # not needed by the workers that import this module

    cuda = [r for r in results if r.ok and r.cache_key and r.target.startswith("cuda")]
    if not cuda:
        return
    try:
        built = build_host_code(cache, [r.cache_key for r in cuda], target=target)
    except HostCodeError as e:
        if required:
            raise
        warnings.warn(f"pyruntime: no host code built: {e}", RuntimeWarning, stacklevel=3)
        return
    for w in built.warnings:
        warnings.warn(f"pyruntime: {w}", RuntimeWarning, stacklevel=3)
    for note in built.notes:
        log.info("host code: %s", note)
    for r in cuda:
        r.host_keys = tuple(built.keys_for(r.cache_key or ""))


def _run_in_lanes(indices: list[int], specs: list[KernelSpec], env: Mapping[str, str], cfg: Mapping[str, Any],
                  nworkers: int, pool_kind: str, finish: Callable[[int, PrecompileResult], None]) -> None:
    """Run jobs one at a time on each of up to ``nworkers`` single-worker pools,
    so a job that kills its worker fails alone; a broken lane is replaced."""
    queue = deque(indices)
    idle: list[cf.Executor] = []
    running: dict[cf.Future[PrecompileResult], tuple[int, cf.Executor]] = {}
    try:
        while queue or running:
            while queue and len(running) < max(1, nworkers):
                lane = idle.pop() if idle else create_compile_pool(1, kind=pool_kind)
                i = queue.popleft()
                running[lane.submit(compile_spec, specs[i], env, cfg)] = (i, lane)
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                i, lane = running.pop(fut)
                try:
                    finish(i, fut.result())
                    idle.append(lane)
                except cf.BrokenExecutor as e:
                    finish(i, _failed(specs[i], f"the compile worker died while building this kernel ({e})"))
                    lane.shutdown(wait=True, cancel_futures=True)
                except Exception as e:
                    finish(i, _failed(specs[i], _job_error(e)))
                    idle.append(lane)
    finally:
        for lane in idle + [lane for _, lane in running.values()]:
            lane.shutdown(wait=True, cancel_futures=True)
