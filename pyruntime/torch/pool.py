"""Inductor's async compile on a pyruntime :class:`~pyruntime.pool.SubprocPool`.

The seam. Inductor gets its compile-worker pool from one place,
``AsyncCompile.process_pool()``, a ``functools.lru_cache``'d static method;
``AsyncCompile.triton()`` (and the CuteDSL / NV GEMM paths) submit
``_worker_compile_triton(load_kernel, extra_env, extra_config)`` there, and
``use_process_pool()`` submits a no-op to learn when the pool is ready. The
pool is used through ``submit``, ``shutdown`` and, for torch's own
SubprocPool, ``wakeup``/``quiesce``. :func:`use_pyruntime_pool` swaps that
static method for one that builds an :class:`InductorPool` (the same
interface over a pyruntime pool), and puts the original back on
``restore()``. Nothing else in torch changes, so every Inductor code path
(and torch's ``shutdown_compile_workers``/``after_fork``) keeps working:
the replacement is itself an ``lru_cache(1)`` function and the pool is
registered in Inductor's ``_pool_set``.

What the pool does like Inductor's: the sidecar imports torch, Inductor and
Triton, adopts the caller's ``torch_key`` and caches device properties
before it forks workers (``_sidecar_preload``); each worker runs Inductor's
worker initializer; jobs are serialised with Inductor's SubprocPickler; a
job's exception comes back as Inductor's ``SubprocException`` so its
``with_name`` error path works unchanged. What it adds: direct pipes to the
workers, crash isolation per job, per-job timeouts, memory limits, worker
recycling and ``status()`` (see :mod:`pyruntime.pool`).

C++ builds (``cpp=True``). Inductor compiles C++ kernels on a thread pool
(``AsyncCompile.pool()``, each thread running the compiler as a subprocess).
With ``cpp=True`` those jobs go to the same pyruntime pool when they pickle
(Inductor's C++ build jobs are ``functools.partial`` objects of a
module-level function and do); anything that does not pickle still runs on
threads. Off by default: it moves work Inductor never put in its process
pool.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping

import torch  # noqa: F401  (this package is the torch extra)
from torch._inductor import async_compile as _ac
from torch._inductor import config as _iconfig

from ..pool import SubprocException, SubprocKind, SubprocPool
from ._inductor_worker import InductorPickler, init_worker

__all__ = ["InductorPool", "InductorPoolPatch", "use_pyruntime_pool", "restore_inductor_pool",
           "active_patch"]

log = logging.getLogger("pyruntime.torch")

_PRELOAD = "pyruntime.torch._sidecar_preload"


def _torch_subproc_exception(exc: SubprocException) -> BaseException:
    """Inductor's SubprocException for a job error, so Inductor's own
    ``except SubprocException: raise e.with_name(kernel)`` applies."""
    try:
        from torch._inductor.compile_worker.subproc_pool import SubprocException as TorchExc

        details = exc.remote_traceback or f"{exc.exc_type}: {exc.message}"
        err = TorchExc(details)
    except Exception:  # a torch whose class takes other arguments: keep ours
        return exc
    err.__cause__ = exc
    return err


def _worker_env() -> dict[str, str]:
    env = {"TORCH_WARM_POOL": "0"}
    try:
        from torch._inductor.codecache import torch_key

        env["PYRUNTIME_TORCH_KEY"] = base64.b64encode(torch_key()).decode("ascii")
    except Exception:  # workers compute it themselves (slower, same value)
        log.debug("torch_key unavailable; workers will compute it", exc_info=True)
    try:
        from torch._inductor.utils import get_ld_library_path

        env["LD_LIBRARY_PATH"] = get_ld_library_path()
    except (ImportError, AttributeError):
        pass
    return env


def _worker_log_file() -> str | None:
    if getattr(_iconfig, "worker_suppress_logging", False):
        return os.devnull
    path = getattr(_iconfig, "torchinductor_worker_logpath", None)
    if not path:
        get = getattr(_iconfig, "get_worker_log_path", None)
        path = get() if callable(get) else None
    return path or None


class InductorPool(Executor):
    """A pyruntime SubprocPool with the interface Inductor expects of its
    compile-worker pool: ``submit(fn, *args, **kwargs)``, ``shutdown()``,
    ``wakeup()``, ``quiesce()``.

    ``nprocs``: workers (default: Inductor's ``compile_threads``).
    ``quiesce``/``idle_timeout``: default from Inductor's
    ``quiesce_async_compile_pool``/``quiesce_async_compile_time``.
    ``preload``: extra modules the sidecar imports before forking.
    Other keyword arguments go to :class:`~pyruntime.pool.SubprocPool`
    (``timeout``, ``memory_limit``, ``max_jobs_per_worker``, ...).
    ``jobs`` counts the jobs submitted."""

    def __init__(self, nprocs: int | None = None, *, quiesce: bool | None = None,
                 idle_timeout: float | None = None, preload: Iterable[str] = (),
                 env: Mapping[str, str] | None = None, **pool_kwargs: Any) -> None:
        if nprocs is None:
            nprocs = max(1, _ac.get_compile_threads())
        if quiesce is None:
            quiesce = bool(getattr(_iconfig, "quiesce_async_compile_pool", False))
        if idle_timeout is None:
            idle_timeout = float(getattr(_iconfig, "quiesce_async_compile_time", 60.0))
        pool_kwargs.setdefault("log_file", _worker_log_file())
        self.jobs = 0
        self._pool = SubprocPool(
            nprocs, pickler=InductorPickler(), kind=SubprocKind.FORK, quiesce=quiesce,
            idle_timeout=idle_timeout, initializer=init_worker,
            preload=(_PRELOAD, *preload), env={**_worker_env(), **(env or {})}, **pool_kwargs)

    @property
    def pool(self) -> SubprocPool:
        """The underlying pyruntime pool (``status()``, ``restarts``, ...)."""
        return self._pool

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> "Future[Any]":
        if isinstance(fn, functools.partial) and "timeout" not in fn.keywords and "timeout" not in kwargs:
            # same call, but the pool names the job after the real function
            args = (*fn.args, *args)
            kwargs = {**fn.keywords, **kwargs}
            fn = fn.func
        if "timeout" in kwargs:  # SubprocPool.submit owns that keyword
            fn = functools.partial(fn, *args, **kwargs)
            args, kwargs = (), {}
        inner = self._pool.submit(fn, *args, **kwargs)
        self.jobs += 1
        outer: Future[Any] = Future()
        outer.set_running_or_notify_cancel()  # as Inductor's pool: running once queued

        def settle(f: Future[Any]) -> None:
            if f.cancelled():
                outer.set_exception(RuntimeError("SubprocPool closed"))
                return
            exc = f.exception()
            if exc is None:
                outer.set_result(f.result())
            elif isinstance(exc, SubprocException):
                outer.set_exception(_torch_subproc_exception(exc))
            else:
                outer.set_exception(exc)

        inner.add_done_callback(settle)
        return outer

    def wakeup(self) -> None:
        self._pool.wakeup()

    def quiesce(self) -> None:
        self._pool.quiesce()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As Inductor's own pool: stop now, never wait on queued work.

        Inductor submits a readiness probe when it first looks at the pool and
        compiles in-process until the probe returns; at exit (or restore())
        that probe may still be queued behind a sidecar that is importing
        torch, so waiting for it could hang. Queued jobs are cancelled,
        running ones get the pool's shutdown grace."""
        self._pool.shutdown(wait=wait, cancel_futures=True, timeout=0.0)


class _CppRouter(Executor):
    """Stands in for Inductor's C++ build thread pool: jobs that pickle run
    on the pyruntime pool, the rest on threads."""

    def __init__(self, threads: int, pool_of: Callable[[], Any]) -> None:
        self._threads = ThreadPoolExecutor(max(1, threads), thread_name_prefix="pyruntime-inductor")
        self._pool_of = pool_of
        self.routed = 0
        self.threaded = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> "Future[Any]":
        pool = self._pool_of()
        if isinstance(pool, InductorPool):
            try:
                fut = pool.submit(fn, *args, **kwargs)
                self.routed += 1
                return fut
            except Exception as e:  # does not pickle (a closure), or the pool is closed
                log.debug("running %r on a thread: %s", fn, e)
        self.threaded += 1
        return self._threads.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._threads.shutdown(wait=wait, cancel_futures=cancel_futures)


class InductorPoolPatch:
    """An installed :func:`use_pyruntime_pool`; ``restore()`` (or leaving
    the ``with`` block) puts Inductor's own pool back."""

    def __init__(self, factory_kwargs: dict[str, Any], cpp: bool) -> None:
        self._kwargs = factory_kwargs
        self._cpp = cpp
        self.pools: list[InductorPool] = []
        self.router: _CppRouter | None = None
        self._saved: dict[str, Any] = {}
        self.active = False

    # the replacement for AsyncCompile.process_pool (lru_cache'd like the original)
    def _make_pool(self) -> InductorPool:
        pool = InductorPool(**self._kwargs)
        self.pools.append(pool)
        _ac.AsyncCompile._ready_future = None
        _ac._pool_set.add(pool)  # torch's shutdown_compile_workers() shuts it down too
        log.info("Inductor async compile uses a pyruntime pool of %d workers", pool.pool._nprocs)
        return pool

    def _make_router(self) -> _CppRouter:
        self.router = _CppRouter(_ac.get_compile_threads(), lambda: _ac.AsyncCompile.process_pool())
        return self.router

    def install(self) -> "InductorPoolPatch":
        cls = _ac.AsyncCompile
        self._saved = {"process_pool": cls.__dict__["process_pool"], "pool": cls.__dict__["pool"],
                       "_ready_future": cls._ready_future}
        cls.process_pool = staticmethod(functools.lru_cache(1)(self._make_pool))
        if self._cpp:
            cls.pool = staticmethod(functools.lru_cache(1)(self._make_router))
        cls._ready_future = None  # the readiness probe must ask the new pool
        self.active = True
        return self

    def restore(self, shutdown: bool = True) -> None:
        """Put Inductor's pool back; with ``shutdown`` stop the pyruntime
        pools this patch created (running jobs finish first)."""
        global _active
        with _lock:
            if not self.active:
                return
            cls = _ac.AsyncCompile
            cls.process_pool = self._saved["process_pool"]
            cls.pool = self._saved["pool"]
            cls._ready_future = None
            self.active = False
            if _active is self:
                _active = None
        if shutdown:
            for pool in self.pools:
                _ac._pool_set.discard(pool)
                pool.shutdown(wait=True)
            if self.router is not None:
                self.router.shutdown(wait=True)

    @property
    def jobs(self) -> int:
        """Jobs submitted to the pyruntime pools of this patch."""
        return sum(p.jobs for p in self.pools)

    def __enter__(self) -> "InductorPoolPatch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


_lock = threading.Lock()
_active: InductorPoolPatch | None = None


def use_pyruntime_pool(nprocs: int | None = None, *, cpp: bool = False, **pool_kwargs: Any) -> InductorPoolPatch:
    """Make Inductor's async compile use a pyruntime pool in place of its own.

    The pool is created when Inductor first asks for one, with ``nprocs``
    workers (default: Inductor's ``compile_threads``); ``pool_kwargs`` go to
    :class:`InductorPool`. ``cpp=True`` also runs Inductor's C++ builds on
    it. Returns the patch: call ``restore()`` or use it as a context
    manager. Inductor uses a process pool only when ``compile_threads > 1``.
    Raises RuntimeError if already installed."""
    global _active
    with _lock:
        if _active is not None:
            raise RuntimeError("use_pyruntime_pool() is already in effect; restore() it first")
        _active = InductorPoolPatch({"nprocs": nprocs, **pool_kwargs}, cpp).install()
        return _active


def restore_inductor_pool(shutdown: bool = True) -> bool:
    """Undo :func:`use_pyruntime_pool` if in effect; returns whether it was."""
    patch = _active
    if patch is None:
        return False
    patch.restore(shutdown=shutdown)
    return True


def active_patch() -> InductorPoolPatch | None:
    """The patch in effect, if any."""
    return _active
