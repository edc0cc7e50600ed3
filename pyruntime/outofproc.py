"""Run a whole compile job in another process: ``run_out_of_process``.

A compile that may crash, leak memory or hold the GIL for seconds (an
Inductor FX-graph compile, a large Triton autotune) can run in a separate
interpreter instead of the caller's. The jobs go to one lazily created
:class:`~pyruntime.pool.SubprocPool` of a single SPAWN worker (a fresh
interpreter that inherits nothing from the caller but its environment). The
worker is reused from job to job, so its imports and warm caches pay off;
the pool is shut down at interpreter exit.

Environment. ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` are read
from the caller's ``os.environ`` at every call and set (or unset) in the
child for that job, so a cache directory changed after the child started is
still honoured; ``env=`` adds more (a mapping of values, or names whose
current values are copied). The child's environment is put back after each
job, so one job's variables never leak into the next.

Stale per-process caches. A long-lived child keeps in-memory caches
(``functools`` caches, Inductor's code caches) that point at files the
caller may since have deleted, e.g. when it cleared its caches and removed
a temporary cache directory; the child would then fail, or worse, use stale
results. Clearing every cache before every job would throw away the warm
state that makes reusing the child worth it. Instead the caller keeps a
*cache generation*, a counter that :func:`bump_cache_generation` increments
whenever the caller's caches are cleared (``pyruntime.torch`` bumps it from
Inductor's own ``clear_caches``). Each job carries the counter; the child
clears its caches before a job only when the counter differs from the one
its previous job carried, or when the forwarded cache directories changed.
A fresh child has nothing to clear. The caches cleared are:

* hooks registered with :func:`register_clear_hook` (a callable, or a
  ``functools`` cache whose ``cache_clear`` is called), in the caller (sent
  with each job by reference, so they must be importable by name) and in
  the child (registered by modules the child imported);
* Inductor's registered caches (``torch._inductor.utils.clear_caches``)
  when the child has loaded Inductor; torch is never imported for this;
* ``importlib.invalidate_caches()`` and ``linecache.clearcache()``.

Crashes. A child that dies fails only the job it ran, with
:class:`~pyruntime.errors.WorkerDiedError` naming the signal or exit code;
the pool starts a fresh child for the next call, which clears nothing
because it has no state.
"""

from __future__ import annotations

import atexit
import importlib
import linecache
import logging
import os
import pickle
import sys
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Mapping, TypeVar, Union

from .errors import WorkerDiedError

__all__ = [
    "FORWARDED_ENV",
    "bump_cache_generation",
    "cache_generation",
    "out_of_process_pool",
    "register_clear_hook",
    "run_out_of_process",
    "shutdown_out_of_process",
    "submit_out_of_process",
    "unregister_clear_hook",
]

log = logging.getLogger("pyruntime.outofproc")

T = TypeVar("T")

#: Variables copied from the caller's environment into the child at every job.
FORWARDED_ENV: tuple[str, ...] = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")

EnvSpec = Union[Mapping[str, Union[str, None]], Iterable[str], None]
ClearHook = Callable[..., Any]

_lock = threading.Lock()
_generation = 0
_clear_hooks: list[ClearHook] = []
_pool: Any = None  # SubprocPool, created on first use
_atexit_registered = False


# ------------------------------------------------------------------ caller side
def bump_cache_generation() -> int:
    """Note that this process cleared its caches: the child clears its own
    before its next job. Returns the new generation. Cheap; call it freely."""
    global _generation
    with _lock:
        _generation += 1
        return _generation


def cache_generation() -> int:
    """The current cache generation of this process."""
    return _generation


def register_clear_hook(hook: ClearHook) -> ClearHook:
    """Register ``hook`` to run in the child when the cache generation
    changed: ``hook.cache_clear()`` if it has one (a ``functools`` cache),
    else ``hook()``. Usable as a decorator; returns ``hook``.

    Hooks registered in the caller travel with each job by reference, so
    they must be importable by name (a module-level function or cache);
    anything else raises ``ValueError`` here rather than failing later."""
    if not callable(hook) and not callable(getattr(hook, "cache_clear", None)):
        raise TypeError(f"clear hook {hook!r} is neither callable nor has a cache_clear() method")
    try:
        # by reference, so it is cheap to send and resolves to the child's copy
        pickle.loads(pickle.dumps(hook, pickle.HIGHEST_PROTOCOL))
    except Exception as e:
        raise ValueError(
            f"clear hook {hook!r} cannot be sent to the child: define it at module level of an "
            f"importable module ({e})") from e
    with _lock:
        if not any(h is hook for h in _clear_hooks):
            _clear_hooks.append(hook)
    return hook


def unregister_clear_hook(hook: ClearHook) -> None:
    """Remove a hook added by :func:`register_clear_hook` (no error if absent)."""
    with _lock:
        _clear_hooks[:] = [h for h in _clear_hooks if h is not hook]


def out_of_process_pool() -> Any:
    """The pool that runs out-of-process jobs, created on first use: a
    :class:`~pyruntime.pool.SubprocPool` of one SPAWN worker. Use it for
    ``status()``; jobs should go through :func:`run_out_of_process`."""
    global _pool, _atexit_registered
    with _lock:
        if _pool is not None and getattr(_pool, "_shutdown", False):
            _pool = None  # shut down behind our back (e.g. the pool module's own exit hook)
        if _pool is None:
            from .pool import SubprocKind, SubprocPool

            _pool = SubprocPool(1, kind=SubprocKind.SPAWN)
            if not _atexit_registered:
                atexit.register(_shutdown_at_exit)
                _atexit_registered = True
        return _pool


def shutdown_out_of_process(wait: bool = True, timeout: float | None = None) -> None:
    """Shut the child down now; the next job starts a new one. A running
    job may finish first (``wait``: here, else in the background), for at
    most ``timeout`` seconds when given; after that it fails with
    :class:`~pyruntime.errors.BrokenPoolError` and the child is stopped."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=wait, cancel_futures=True, timeout=timeout)


def _shutdown_at_exit() -> None:
    from . import config

    try:  # a job still running at exit gets the shutdown grace, not forever
        shutdown_out_of_process(wait=True, timeout=config.shutdown_grace_s())
    except Exception:
        pass


def _env_for_job(env: EnvSpec) -> dict[str, str | None]:
    """What the child sets (a value) or unsets (None) for one job."""
    out: dict[str, str | None] = {name: os.environ.get(name) for name in FORWARDED_ENV}
    if env is None:
        return out
    if isinstance(env, Mapping):
        items = env.items()
    elif isinstance(env, (str, bytes)):
        raise TypeError("env must be a mapping of names to values or an iterable of names, "
                        f"not a single string {env!r}")
    else:
        items = ((name, os.environ.get(name)) for name in env)
    for name, value in items:
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise ValueError(f"bad environment variable name {name!r}")
        if value is not None and not isinstance(value, str):
            raise TypeError(f"environment variable {name} must be a str or None, got {type(value).__name__}")
        if value is not None and "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL byte")
        out[name] = value
    return out


def submit_out_of_process(fn: Callable[..., T], /, *args: Any, env: EnvSpec = None,
                          **kwargs: Any) -> "Future[T]":
    """Schedule ``fn(*args, **kwargs)`` in the out-of-process child and
    return a Future. ``fn`` and the arguments must pickle (``fn`` by name).
    See :func:`run_out_of_process`."""
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    job = _Job(fn, _generation, _env_for_job(env), tuple(_clear_hooks))
    inner = out_of_process_pool().submit(job, *args, **kwargs)
    outer: Future[T] = Future()
    outer.set_running_or_notify_cancel()

    def settle(f: Future[Any]) -> None:
        exc = f.exception()
        if exc is None:
            outer.set_result(f.result())
        elif isinstance(exc, WorkerDiedError):
            # same type (timeouts and memory kills keep theirs), clearer message
            try:
                err: BaseException = type(exc)(
                    f"{exc}; the out-of-process child is gone and the next job runs in a fresh one")
                err.__cause__ = exc
            except Exception:
                err = exc
            outer.set_exception(err)
        else:
            outer.set_exception(exc)

    inner.add_done_callback(settle)
    return outer


def run_out_of_process(fn: Callable[..., T], /, *args: Any, env: EnvSpec = None,
                       **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in the out-of-process child and return
    its result.

    ``env``: extra environment for this job: a mapping (``None`` values
    unset a variable) or an iterable of names whose current values are
    copied. ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` are always
    forwarded. An exception in ``fn`` is raised here as
    :class:`~pyruntime.pool.SubprocException` (remote traceback attached,
    the original as ``__cause__`` when it pickles); a crash of the child as
    :class:`~pyruntime.errors.WorkerDiedError`."""
    return submit_out_of_process(fn, *args, env=env, **kwargs).result()


# ------------------------------------------------------------------- child side
class _ChildState:
    seen_generation: int | None = None  # None: no job yet, nothing to clear
    seen_dirs: tuple[str | None, ...] | None = None
    clears = 0  # times the caches were cleared in this process (tests read it)
    jobs = 0


def _clear_inductor_caches() -> None:
    # Only if the job already loaded Inductor: never import torch for this.
    utils = sys.modules.get("torch._inductor.utils")
    clear = getattr(utils, "clear_caches", None)
    if callable(clear):
        clear()


def _run_hook(hook: ClearHook) -> None:
    clear = getattr(hook, "cache_clear", None)
    if callable(clear):
        clear()
    else:
        hook()


def clear_child_caches(extra_hooks: Iterable[ClearHook] = ()) -> None:
    """Clear this process's per-process caches now (what a child does when
    the generation changed). Raises RuntimeError naming a hook that failed."""
    hooks: list[ClearHook] = []
    for h in (*_clear_hooks, *extra_hooks):
        if not any(h is k for k in hooks):
            hooks.append(h)
    for hook in (*hooks, _clear_inductor_caches):
        try:
            _run_hook(hook)
        except Exception as e:
            name = getattr(hook, "__qualname__", None) or repr(hook)
            raise RuntimeError(f"clearing per-process caches failed in hook {name}: {e!r}") from e
    importlib.invalidate_caches()
    linecache.clearcache()
    _ChildState.clears += 1


def child_state() -> dict[str, Any]:
    """This process's view as an out-of-process child (for tests and
    debugging): pid, last generation seen, clears done, jobs run."""
    return {"pid": os.getpid(), "seen_generation": _ChildState.seen_generation,
            "clears": _ChildState.clears, "jobs": _ChildState.jobs}


class _Job:
    """A call item for the child: the user's function plus what the child
    needs to decide on clearing caches and to set the job's environment.
    Its ``__qualname__`` is the user function's, so the pool's errors and
    status name the real job."""

    def __init__(self, fn: Callable[..., Any], generation: int, env: dict[str, str | None],
                 hooks: tuple[ClearHook, ...]) -> None:
        self.fn = fn
        self.generation = generation
        self.env = env
        self.hooks = hooks
        self.__qualname__ = getattr(fn, "__qualname__", None) or type(fn).__qualname__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dirs = tuple(self.env.get(name) for name in FORWARDED_ENV)
        st = _ChildState
        if st.seen_generation is not None and (st.seen_generation != self.generation
                                               or st.seen_dirs != dirs):
            clear_child_caches(self.hooks)  # raises: the job fails, we retry next time
        st.seen_generation = self.generation
        st.seen_dirs = dirs
        st.jobs += 1
        saved = {name: os.environ.get(name) for name in self.env}
        _apply_env(self.env)
        try:
            return self.fn(*args, **kwargs)
        finally:
            _apply_env(saved)


def _apply_env(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
