"""Where precompile's builds run: this machine's pool, any
``concurrent.futures.Executor``, or a Dask cluster.

``precompile(specs, executor=ex)`` sends each build to ``ex`` as
:func:`packed_job`, which works wherever ``ex`` runs it, on this machine or
another: the build goes into a temporary Triton cache of the worker process,
the kernel directory is read back as a one-kernel bundle
(:func:`pyruntime.collect_dir` then ``to_bytes()``: checksummed, compressed)
and removed there, and the bytes travel back with the result. The caller
verifies them (``TritonBundle.from_bytes``) and writes the kernel into its
build cache with :func:`restore_packed`: into a temporary directory renamed
onto the kernel's name, so a kernel is there completely or not at all. A
kernel built by another Triton version or Python ABI than the caller's is
refused (it would never be found), and that kernel fails. The worker
process's Triton cache directory, knobs and environment belong to the build
while it runs, so builds in one process take turns (a lock) and the
environment is put back afterwards: run Dask workers with one thread each
and as many processes as cores.

Kernel modules are imported once per worker process there too
(:mod:`pyruntime.kernel_imports`: the first build of a module in a process
imports it; its ``import_s`` says so).

Dask (``pip install 'pyruntime[dask]'``), for the CLI's ``--executor``:

``dask://HOST:PORT``
    an existing ``distributed`` scheduler (``tcp://`` unless the address
    names another protocol: ``dask://tls://HOST:PORT``).
``dask-local:N``
    a ``LocalCluster`` of N worker processes, one thread each, started for
    the run and closed after it (workers get this interpreter's
    ``sys.path``), forked from a fork server that imported the kernel
    modules once (:func:`_start_local_cluster`).

Dask places the jobs, re-runs a job whose worker died (up to
``distributed.scheduler.allowed-failures`` times, 3 by default) and retries
one that raised (``retries=1``; a kernel that fails to build does not raise,
its result carries the error). Jobs are submitted with ``pure=False``, so
two equal specs are two jobs. Nothing here schedules.

:func:`run_windowed` keeps at most ``window`` jobs submitted at a time, so a
list of thousands of kernels never has thousands of futures (or their
packed kernels) alive in the caller.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from .errors import PyRuntimeError

__all__ = [
    "ExecutorChoice",
    "ExecutorError",
    "OpenExecutor",
    "default_window",
    "executor_slots",
    "open_executor",
    "pack_kernel",
    "packed_job",
    "parse_executor",
    "restore_packed",
    "run_windowed",
    "shutdown_now",
]

log = logging.getLogger(__name__)

DASK_HINT = "pip install 'pyruntime[dask]'"
CONNECT_TIMEOUT_S = 20.0


class ExecutorError(PyRuntimeError, ValueError):
    """A bad ``--executor`` value, or an executor that cannot be reached."""


# ------------------------------------------------------------ choosing


@dataclass(frozen=True)
class ExecutorChoice:
    """A parsed ``--executor``: ``kind`` is ``"local"``, ``"dask"`` (with
    ``address``) or ``"dask-local"`` (with ``workers``)."""

    kind: str
    address: str | None = None
    workers: int | None = None

    def __str__(self) -> str:
        if self.kind == "dask":
            address = self.address or ""
            return "dask://" + (address[len("tcp://"):] if address.startswith("tcp://") else address)
        if self.kind == "dask-local":
            return f"dask-local:{self.workers}"
        return "local"


def parse_executor(text: str) -> ExecutorChoice:
    """``local``, ``dask://HOST:PORT`` or ``dask-local:N``; ExecutorError otherwise."""
    t = text.strip()
    if t in ("", "local"):
        return ExecutorChoice("local")
    if t.startswith("dask://"):
        rest = t[len("dask://"):]
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ExecutorError(f"--executor {text!r}: expected dask://HOST:PORT (the scheduler's address)")
        return ExecutorChoice("dask", address=rest if "://" in rest else f"tcp://{rest}")
    if t.startswith("dask-local:"):
        n = t[len("dask-local:"):]
        if not n.isdigit() or int(n) < 1:
            raise ExecutorError(f"--executor {text!r}: expected dask-local:N with N >= 1 worker processes")
        return ExecutorChoice("dask-local", workers=int(n))
    raise ExecutorError(f"--executor {text!r}: expected local, dask://HOST:PORT or dask-local:N")


@dataclass
class OpenExecutor:
    """An executor ready for ``precompile(executor=...)``: what it is (for
    reports) and how many builds it runs at once (None when unknown)."""

    executor: cf.Executor
    description: str
    slots: int | None


def _dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise ExecutorError(f"Dask executors need the distributed package: {DASK_HINT}") from None
    return distributed


@contextlib.contextmanager
def open_executor(choice: ExecutorChoice | str, *, preload: Mapping[str, str] | None = None,
                  ) -> Iterator[OpenExecutor]:
    """Connect to (or start) the executor ``choice`` names for the length of
    the ``with`` block; closes what it started. ``local`` is not opened here
    (precompile makes its own pool): it raises ExecutorError.

    ``preload`` (:func:`pyruntime.kernel_imports.preload_env`'s variables)
    names the kernel modules a ``dask-local`` cluster's workers should have
    imported before their first build (see :func:`_start_local_cluster`)."""
    if isinstance(choice, str):
        choice = parse_executor(choice)
    if choice.kind == "local":
        raise ExecutorError("the local pool is precompile's own; pass workers=, not an executor")
    distributed = _dask()
    cluster = None
    if choice.kind == "dask-local":
        try:
            cluster = _start_local_cluster(distributed, choice.workers, preload or {})
        except Exception as e:
            raise ExecutorError(f"--executor {choice}: could not start a Dask LocalCluster: "
                                f"{type(e).__name__}: {e}") from None
        address = cluster.scheduler_address
    else:
        address = choice.address
    try:
        try:
            client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
        except Exception as e:
            raise ExecutorError(f"--executor {choice}: cannot reach the Dask scheduler at {address}: "
                                f"{type(e).__name__}: {e}") from None
        try:
            ex = client.get_executor(pure=False, retries=1)
            yield OpenExecutor(ex, str(choice), executor_slots(ex))
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


# Imported once by the fork server a LocalCluster's workers are forked from.
FORKSERVER_PRELOAD = ("distributed", "pyruntime.executors", "pyruntime._kernel_preload")


def _start_local_cluster(distributed: Any, workers: int, preload: Mapping[str, str]) -> Any:
    """A ``LocalCluster`` of ``workers`` processes with one thread each.

    Where the platform has a fork server, the workers are forked from it
    (Dask's ``multiprocessing-method`` set to ``forkserver`` for this
    cluster) and it imports Dask, pyruntime and, with ``preload`` in its
    environment, the kernel modules once before the first fork, as the
    local pool's sidecar does: N workers that each import a kernel package
    built on torch pay seconds of CPU N times over, on the cores the
    compiles need. The fork server is one per process and starts with the
    first cluster; a later cluster reuses it, and its workers import modules
    the first did not name themselves. Elsewhere, or when the fork server
    does not start (a kernel module that kills the process importing it),
    the workers are spawned and import the modules on their first build.
    Workers get this interpreter's ``sys.path`` either way."""
    import multiprocessing

    import dask

    paths = [os.getcwd() if p == "" else p for p in sys.path]
    kw = dict(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
              silence_logs=logging.ERROR, env={"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))})
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return distributed.LocalCluster(**kw)
    nanny_log = logging.getLogger("distributed.nanny")
    level = nanny_log.level
    try:
        # the nannies log a traceback per worker when the fork server dies: the fallback says it in one line
        nanny_log.setLevel(logging.CRITICAL if preload else level)
        with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}), \
                _environ_restored(preload):
            # Dask sets its own preload list on first use of the context: ours replaces it
            distributed.utils.get_mp_context().set_forkserver_preload(list(FORKSERVER_PRELOAD))
            os.environ.update(preload)  # the fork server starts with the first worker, inside LocalCluster()
            return distributed.LocalCluster(**kw)
    except Exception as e:
        if not preload:
            raise
        # a kernel module that kills the process importing it takes the fork server down with it:
        # spawned workers import the modules themselves, and such a kernel fails alone
        log.warning("pyruntime: the Dask fork server did not start with the kernel modules preloaded "
                    "(%s: %s); starting spawned workers, which import them themselves",
                    type(e).__name__, str(e)[:200])
        nanny_log.setLevel(level)
        return distributed.LocalCluster(**kw)
    finally:
        nanny_log.setLevel(level)


@contextlib.contextmanager
def _environ_restored(keys: Iterable[str]) -> Iterator[None]:
    """Put ``os.environ[k]`` for each of ``keys`` back as it was (or unset) on exit."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def executor_slots(executor: Any) -> int | None:
    """How many jobs ``executor`` runs at once, when it can tell."""
    client = getattr(executor, "_client", None)
    if client is not None and hasattr(client, "nthreads"):  # a Dask ClientExecutor
        try:
            return sum(client.nthreads().values()) or None
        except Exception:
            return None
    for attr in ("_nprocs", "_max_workers"):  # SubprocPool, ProcessPoolExecutor, ThreadPoolExecutor
        n = getattr(executor, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def default_window(slots: int | None) -> int:
    """Jobs in flight at once: enough to keep every slot busy (4 per slot),
    few enough that the caller holds little."""
    return max(16, 4 * slots) if slots else 64


# ------------------------------------------------------------ running


def run_windowed(count: int, submit: Callable[[int], "cf.Future[Any]"], window: int,
                 ) -> Iterator[tuple[int, "cf.Future[Any]"]]:
    """Submit jobs ``0..count-1`` with ``submit(i)``, at most ``window`` in
    flight, and yield ``(i, future)`` as each finishes. A ``submit`` that
    raises (a broken pool refuses at once) yields a future holding that
    exception. Leaving early (an exception, Ctrl-C) cancels the jobs not
    yet started."""
    pending: dict[cf.Future[Any], int] = {}
    nxt = 0
    window = max(1, window)
    try:
        while nxt < count or pending:
            while nxt < count and len(pending) < window:
                try:
                    fut = submit(nxt)
                except Exception as e:
                    fut = cf.Future()
                    fut.set_exception(e)
                pending[fut] = nxt
                nxt += 1
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut
    finally:
        for fut in pending:
            fut.cancel()


def shutdown_now(pool: cf.Executor) -> None:
    """Stop a pool without waiting for its running jobs (after Ctrl-C)."""
    try:
        from .pool import SubprocPool
    except ImportError:  # the pool module is optional
        SubprocPool = None  # type: ignore[assignment,misc]
    if SubprocPool is not None and isinstance(pool, SubprocPool):
        pool.shutdown(wait=True, cancel_futures=True, timeout=0)  # bounded: grace + 1 s
    else:
        pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------ remote builds

_JOB_LOCK = threading.Lock()
_BUILD_CACHE: dict[int, str] = {}  # pid -> this process's scratch Triton cache


def _scratch_cache() -> str:
    pid = os.getpid()
    d = _BUILD_CACHE.get(pid)
    if d is None or not os.path.isdir(d):
        d = tempfile.mkdtemp(prefix=f"pyruntime-build-{pid}-")
        atexit.register(shutil.rmtree, d, True)
        _BUILD_CACHE.clear()  # a forked child's parent entry is not its own
        _BUILD_CACHE[pid] = d
    return d


def pack_kernel(cache_dir: str, cache_key: str) -> bytes:
    """One kernel directory of ``cache_dir`` as bundle bytes (what
    :func:`restore_packed` takes)."""
    from .bundle import collect_dir  # the bundle package loads its C core: only where used

    bundle = collect_dir(cache_dir, [cache_key])
    if len(bundle) != 1:
        raise RuntimeError(f"the built kernel {cache_key} is not complete in {cache_dir}")
    return bundle.to_bytes()


def packed_job(job: Callable[..., Any], spec: Any, env: Mapping[str, str],
               config: Mapping[str, Any]) -> tuple[Any, bytes | None]:
    """The job an executor runs: ``job(spec, env, config)`` (precompile's
    ``compile_spec``) with ``TRITON_CACHE_DIR`` pointing at this process's
    scratch cache; returns ``(result, packed kernel)``, the kernel ``None``
    when the build failed. The kernel directory is removed once packed; the
    environment is as it was afterwards."""
    with _JOB_LOCK:
        cache = _scratch_cache()
        run_env = {**env, "TRITON_CACHE_DIR": cache}
        with _environ_restored(run_env):
            result = job(spec, run_env, config)
        key = getattr(result, "cache_key", None)
        if key is None or getattr(result, "error", None) is not None:
            return result, None
        try:
            return result, pack_kernel(cache, key)
        finally:
            shutil.rmtree(os.path.join(cache, key), ignore_errors=True)


def restore_packed(result: Any, data: bytes, cache_dir: str) -> None:
    """Verify ``data`` (from :func:`packed_job`) and write its kernel into
    ``cache_dir`` atomically; point ``result.path`` there. Raises, naming
    the problem, when the bytes are damaged or the kernel cannot be used
    here (another Triton or Python ABI) or written."""
    from .bundle import TritonBundle  # only where used, as above

    bundle = TritonBundle.from_bytes(data)  # checks every checksum first
    out = bundle.restore(cache_dir, on_mismatch="error")
    key = result.cache_key
    if key in out.blocked:
        raise RuntimeError(f"{os.path.join(cache_dir, key)}: {out.blocked[key]}")
    if key not in out.restored and key not in out.existing:
        raise RuntimeError(f"the packed kernel holds no {key}")
    result.path = os.path.join(cache_dir, key)
