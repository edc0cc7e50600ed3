"""SubprocPool: a concurrent.futures.Executor whose workers live under a
sidecar process and talk to the caller over their own framed pipes.

Data flow::

  submit() --> call queue --dispatch--> job pipe ---------> worker (run fn)
                  |                                             |
  Future <-- result handler thread <-- result pipe <-------- result item
                  |
                  +<-- control socket <-- sidecar (worker_up / worker_exit)

Why this shape. The seed design puts a ProcessPoolExecutor behind the
sidecar, so every job is pickled by the caller, unpickled and re-pickled by
the sidecar, and crosses two pipes each way; that caps it near a thousand
jobs/s and a millisecond per round trip. Here the sidecar only manages
processes: it forks each worker, then hands the caller the worker's pipe ends
over an AF_UNIX socket (SCM_RIGHTS). Call items are pickled once by the
caller and written straight to a worker with the C framing (one writev);
result items come straight back and are unpickled once. The sidecar stays
off the data path, so a job costs two pipe hops and two pickles.

Dispatch. A call item goes to the idle worker first. For tiny, quick jobs
(payload under 64 KiB, no timeout, recent jobs shorter than 2 ms) up to
PIPELINE_DEPTH items may wait in a worker's pipe so the worker never idles
between a result and the next call. Long jobs (Triton compiles) are never
queued behind each other, so a free worker always gets the next one.

Failure handling:
- A job's exception arrives as SubprocException with the remote traceback.
- A worker that dies fails only the job it was running (WorkerDiedError
  naming the exit code or signal); call items queued in its pipe go back to
  the call queue; the sidecar starts a replacement.
- A dead sidecar fails every pending future at once with BrokenPoolError;
  restart policy: the pool is not rebuilt eagerly, the next submit() (or
  wakeup()) starts a new sidecar, every time, with no limit.
- The caller dying closes the control socket: the sidecar kills its workers
  and exits; workers also have PR_SET_PDEATHSIG so none outlives it.
"""

from __future__ import annotations

import atexit
import collections
import functools
import itertools
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from . import _protocol as P
from . import config
from ._protocol import SubprocKind, SubprocPickler
from .errors import (
    BrokenPoolError,
    JobTimeoutError,
    PyRuntimeError,
    WorkerDiedError,
    WorkerMemoryError,
)
from .framing import read_frame, write_frame

__all__ = ["SubprocPool", "SubprocKind", "SubprocPickler", "SubprocException"]

log = logging.getLogger("pyruntime.pool")

PIPELINE_DEPTH = 8
PIPELINE_MAX_PAYLOAD = 64 << 10
PIPELINE_MAX_JOB_S = 0.002


class SubprocException(PyRuntimeError, RuntimeError):
    """A job raised in a worker. ``remote_traceback`` holds the worker's
    traceback text, ``job_name`` the job's qualified name, ``exc_type`` the
    remote exception's type name; ``__cause__`` is the original exception
    when it could be pickled."""

    def __init__(self, message: str, remote_traceback: str = "", job_name: str = "<unknown>",
                 exc_type: str = "Exception") -> None:
        super().__init__(message, remote_traceback, job_name, exc_type)
        self.message = message
        self.remote_traceback = remote_traceback
        self.job_name = job_name
        self.exc_type = exc_type

    def with_name(self, name: str) -> "SubprocException":
        copy = SubprocException(self.message, self.remote_traceback, name, self.exc_type)
        copy.__cause__ = self.__cause__
        return copy

    def __str__(self) -> str:
        text = f"{self.exc_type}: {self.message} (in job {self.job_name})"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


@dataclass
class _CallItem:
    job_id: int
    payload: bytes
    future: Future[Any]
    name: str
    timeout: float | None
    started: float = 0.0
    long_reported: bool = False


@dataclass
class _WorkerHandle:
    wid: int
    pid: int
    job_fd: int
    result_fd: int
    inflight: collections.deque[_CallItem] = field(default_factory=collections.deque)
    dispatched: int = 0
    closed: bool = False      # job pipe closed by us (quiesce, recycle, shutdown)
    eof: bool = False         # result pipe reached EOF
    kill_reason: str | None = None


class _Sidecar:
    """One running sidecar process and its control socket."""

    def __init__(self, pool: "SubprocPool") -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env.update(pool._env)
        paths = [os.getcwd() if p == "" else p for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        fd = theirs.fileno()
        cmd = [
            sys.executable, "-m", "pyruntime.compile_worker",
            f"--pickler={P.pickler_qualname(pool._pickler)}", f"--kind={pool._kind.value}",
            f"--workers={pool._nprocs}", f"--parent={os.getpid()}",
            f"--read-fd={fd}", f"--write-fd={fd}", f"--grace={pool._grace}",
            f"--preload={','.join(pool._preload)}",
            f"--memory-limit={pool._memory_limit or 0}",
        ]
        out: Any = None
        if pool._log_file is not None:
            out = open(pool._log_file, "ab")
        try:
            self.popen = subprocess.Popen(
                cmd, pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL,
                stdout=out if out is not None else 2, stderr=out if out is not None else 2,
                start_new_session=True,  # terminal Ctrl-C reaches the caller only
            )
        finally:
            theirs.close()
            if out is not None:
                out.close()
        self.sock = ours
        self.dead = False

    def send(self, op: str, **fields: Any) -> None:
        if self.dead:
            return
        try:
            P.send_control(self.sock, op, **fields)
        except OSError:
            pass  # it died; the handler thread sees EOF and fails the futures

    def exit_text(self) -> str:
        try:
            code = self.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "an unknown status (still running)"
        return P.describe_exit(code)


_live_pools: "weakref.WeakSet[SubprocPool]" = weakref.WeakSet()


class SubprocPool(Executor):
    """A pool of ``nprocs`` worker processes under a sidecar.

    Parameters beyond the Executor basics:

    ``pickler``: a SubprocPickler (default: pickle, highest protocol).
    ``kind``: SubprocKind.FORK (default) or SPAWN.
    ``quiesce`` / ``idle_timeout``: stop the workers after this many idle
    seconds (the sidecar stays; the next job starts them again).
    ``initializer`` / ``initargs``: run in every worker before its first job.
    ``preload``: modules the sidecar imports before forking workers (e.g.
    ``("triton",)``), so a respawned worker does not pay for them again.
    ``env``: extra environment variables for the sidecar and workers.
    ``log_file``: where worker stdout/stderr go (default: the caller's stderr).
    ``timeout``: default per-job timeout in seconds (``submit(timeout=)``
    overrides it); a job over it fails with JobTimeoutError and its worker is
    killed and replaced.
    ``memory_limit``: per-worker resident set size limit in bytes, polled
    every 50 ms by the sidecar; a worker over it is killed and its job fails
    with WorkerMemoryError.
    ``max_jobs_per_worker``: replace a worker after this many jobs.
    ``long_job_threshold`` / ``on_long_job``: call ``on_long_job(status)``
    (default: a log warning) once for each job running longer than this.
    ``shutdown_grace``: seconds workers get after SIGTERM at shutdown before
    SIGKILL (default PYRUNTIME_SHUTDOWN_GRACE, 2 s).
    """

    def __init__(
        self,
        nprocs: int | None = None,
        pickler: SubprocPickler | None = None,
        kind: SubprocKind = SubprocKind.FORK,
        quiesce: bool = False,
        *,
        idle_timeout: float = 60.0,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        preload: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        memory_limit: int | None = None,
        max_jobs_per_worker: int | None = None,
        long_job_threshold: float | None = None,
        on_long_job: Callable[[dict[str, Any]], None] | None = None,
        shutdown_grace: float | None = None,
    ) -> None:
        self._nprocs = config.default_workers() if nprocs is None else int(nprocs)
        if self._nprocs < 1:
            raise ValueError(f"nprocs must be at least 1, got {nprocs}")
        self._pickler = pickler if pickler is not None else SubprocPickler()
        P.pickler_qualname(self._pickler)  # fail early on an unimportable pickler
        self._kind = SubprocKind(kind)
        self._quiesce_idle = idle_timeout if quiesce else None
        self._init_payload = self._pickler.dumps((initializer, tuple(initargs)))
        self._preload = [m for m in preload if m]
        self._env = {str(k): str(v) for k, v in (env or {}).items()}
        self._log_file = os.fspath(log_file) if log_file is not None else None
        self._default_timeout = timeout
        self._memory_limit = memory_limit
        self._max_jobs = max_jobs_per_worker
        self._long_threshold = long_job_threshold
        self._on_long_job = on_long_job
        self._grace = config.shutdown_grace_s() if shutdown_grace is None else shutdown_grace

        self._lock = threading.RLock()
        self._idle_cv = threading.Condition(self._lock)
        self._queue: collections.deque[_CallItem] = collections.deque()
        self._workers: dict[int, _WorkerHandle] = {}
        self._by_fd: dict[int, _WorkerHandle] = {}
        self._job_ids = itertools.count(1)
        self._pending = 0
        self._ewma_job_s: float | None = None
        self._last_active = time.monotonic()
        self._quiesced = False
        self._quiesce_when_drained = False
        self._shutdown = False
        self._sidecar: _Sidecar | None = None
        self._thread: threading.Thread | None = None
        self.restarts = -1  # sidecars started after the first

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._poll = select.epoll()
        self._poll.register(self._wake_r, select.EPOLLIN)
        with self._lock:
            self._start_sidecar_locked()
        _live_pools.add(self)

    # ---------------------------------------------------------------- public
    def submit(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None,
               **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` in a worker. ``timeout`` (seconds)
        overrides the pool's default per-job timeout. Raises at once if the
        call item cannot be pickled."""
        name = _job_name(fn)
        payload = self._pickler.dumps((fn, args, kwargs))
        fut: Future[Any] = Future()
        item = _CallItem(0, payload, fut, name, timeout if timeout is not None else self._default_timeout)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            item.job_id = next(self._job_ids)
            self._pending += 1
            self._last_active = time.monotonic()
            fut.add_done_callback(self._job_done)
            self._queue.append(item)
            if self._sidecar is None:
                self._start_sidecar_locked()
            elif self._quiesced:
                self._wakeup_locked()
            self._dispatch_locked()
        return fut

    def quiesce(self) -> None:
        """Stop the workers (their memory returns to the system); the sidecar
        stays. Jobs in flight finish first. The next job or wakeup() starts
        the workers again. Jobs still queued are not stranded: the workers
        stop once the queue has drained."""
        with self._lock:
            if self._shutdown or self._sidecar is None or self._quiesced:
                return
            if self._queue:  # e.g. workers still starting: stop them after this work
                self._quiesce_when_drained = True
                return
            self._quiesce_when_drained = False
            self._quiesced = True
            self._sidecar.send("quiesce")
            for w in self._workers.values():
                self._close_job_pipe_locked(w)

    def wakeup(self) -> None:
        """Start the workers again after quiesce() (or a dead sidecar)."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot wake up a pool after shutdown")
            if self._sidecar is None:
                self._start_sidecar_locked()
            else:
                self._wakeup_locked()

    def status(self) -> list[dict[str, Any]]:
        """One entry per running job: job id, name, worker pid, elapsed seconds."""
        now = time.monotonic()
        with self._lock:
            return [self._status_of(w, w.inflight[0], now)
                    for w in self._workers.values() if w.inflight]

    @property
    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers.values() if not w.eof]

    @property
    def sidecar_pid(self) -> int | None:
        with self._lock:
            return self._sidecar.popen.pid if self._sidecar is not None else None

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until every worker is up (mostly for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len([w for w in self._workers.values() if not w.closed]) < self._nprocs:
                left = deadline - time.monotonic()
                if left <= 0 or self._sidecar is None:
                    return False
                self._idle_cv.wait(left)
        return True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: float | None = None) -> None:
        """Stop the pool. ``cancel_futures`` cancels queued jobs. With
        ``wait`` the call waits for running jobs, at most ``timeout`` seconds
        when given; jobs still running then fail with BrokenPoolError. Then
        workers get SIGTERM and, ``shutdown_grace`` seconds later, SIGKILL:
        the teardown itself is bounded by grace + 1 s whatever the worker
        count. Without ``wait`` the same happens on a background thread."""
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    item = self._queue.popleft()
                    item.future.cancel()
        if not first:
            if wait and self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()
            return
        if wait:
            self._finish(timeout)
        else:
            threading.Thread(target=self._finish, args=(timeout,), name="pyruntime-pool-shutdown",
                             daemon=True).start()

    def __enter__(self) -> "SubprocPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(wait=True)

    # --------------------------------------------------------------- sidecar
    def _start_sidecar_locked(self) -> None:
        self._sidecar = _Sidecar(self)
        self.restarts += 1
        self._quiesced = False
        self._poll.register(self._sidecar.sock.fileno(), select.EPOLLIN)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._handler_loop, name="pyruntime-pool-results",
                                            daemon=True)
            self._thread.start()

    def _wakeup_locked(self) -> None:
        if self._quiesced and self._sidecar is not None:
            self._quiesced = False
            self._sidecar.send("start", n=self._nprocs)

    def _sidecar_died_locked(self) -> list[tuple[Future[Any], BaseException]]:
        side = self._sidecar
        assert side is not None
        side.dead = True
        self._sidecar = None
        try:
            self._poll.unregister(side.sock.fileno())
        except (OSError, ValueError):
            pass
        side.sock.close()
        why = "the pool was shut down" if self._shutdown else f"the pool's sidecar died with {side.exit_text()}"
        failures: list[tuple[Future[Any], BaseException]] = []
        for w in list(self._workers.values()):
            for item in w.inflight:
                failures.append((item.future, BrokenPoolError(f"job {item.name} lost: {why}")))
            w.inflight.clear()
            self._drop_worker_locked(w)
        while self._queue:
            item = self._queue.popleft()
            failures.append((item.future, BrokenPoolError(f"job {item.name} not run: {why}")))
        self._idle_cv.notify_all()
        return failures

    # --------------------------------------------------------------- workers
    def _add_worker_locked(self, msg: dict[str, Any], fds: list[int]) -> None:
        job_fd, result_fd = fds
        w = _WorkerHandle(int(msg["wid"]), int(msg["pid"]), job_fd, result_fd)
        self._workers[w.wid] = w
        self._by_fd[result_fd] = w
        self._poll.register(result_fd, select.EPOLLIN)
        try:
            write_frame(job_fd, P.INIT, 0, self._init_payload)
        except OSError:
            self._close_job_pipe_locked(w)
        if self._quiesced or self._shutdown:
            self._close_job_pipe_locked(w)
        self._idle_cv.notify_all()

    def _close_job_pipe_locked(self, w: _WorkerHandle) -> None:
        if not w.closed:
            w.closed = True
            os.close(w.job_fd)

    def _drop_worker_locked(self, w: _WorkerHandle) -> None:
        self._workers.pop(w.wid, None)
        self._by_fd.pop(w.result_fd, None)
        self._close_job_pipe_locked(w)
        if not w.eof:
            try:
                self._poll.unregister(w.result_fd)
            except (OSError, ValueError):
                pass
        os.close(w.result_fd)

    def _worker_exited_locked(self, msg: dict[str, Any]) -> list[tuple[Future[Any], BaseException]]:
        w = self._workers.get(int(msg["wid"]))
        if w is None:
            return []
        outcomes: list[tuple[Future[Any], Any]] = []
        if not w.eof:  # results it wrote before dying still count
            os.set_blocking(w.result_fd, True)
            while True:
                try:
                    frame = read_frame(w.result_fd)
                except (EOFError, OSError, PyRuntimeError):
                    break
                outcomes += self._result_locked(w, frame)
        code = msg.get("code")
        reason = msg.get("reason") or w.kill_reason
        if w.inflight:
            item = w.inflight.popleft()
            outcomes.append((item.future, self._death_error(item, w.pid, code, reason)))
            while w.inflight:  # queued behind the dead job: run them elsewhere
                self._queue.appendleft(w.inflight.pop())
        self._drop_worker_locked(w)
        self._dispatch_locked()
        return outcomes

    def _death_error(self, item: _CallItem, pid: int, code: int | None, reason: str | None) -> BaseException:
        if reason == "timeout":
            return JobTimeoutError(f"job {item.name} ran past its {item.timeout:g} s timeout; "
                                   f"its worker (pid {pid}) was killed and replaced")
        if reason and reason.startswith("memory:"):
            rss = int(reason.split(":", 1)[1])
            return WorkerMemoryError(
                f"job {item.name} went over the pool's memory limit ({rss >> 20} MiB resident > "
                f"{(self._memory_limit or 0) >> 20} MiB); its worker (pid {pid}) was killed and replaced")
        if reason == "shutdown":
            return BrokenPoolError(f"job {item.name} stopped: the pool was shut down")
        return WorkerDiedError(f"worker (pid {pid}) running job {item.name} died with {P.describe_exit(code)}")

    # -------------------------------------------------------------- dispatch
    def _dispatch_locked(self) -> None:
        while self._queue:
            w = self._pick_worker_locked(self._queue[0])
            if w is None:
                return
            item = self._queue.popleft()
            if item.future.cancelled():
                continue
            try:
                write_frame(w.job_fd, P.CALL, item.job_id, item.payload)
            except OSError:  # the worker is gone; its exit report will follow
                self._queue.appendleft(item)
                self._close_job_pipe_locked(w)
                continue
            if not item.future.running():  # a requeued item is already running
                item.future.set_running_or_notify_cancel()
            if not w.inflight:
                item.started = time.monotonic()
            w.inflight.append(item)
            w.dispatched += 1
            if self._max_jobs is not None and w.dispatched >= self._max_jobs:
                self._close_job_pipe_locked(w)  # it exits after these; the sidecar replaces it

    def _pick_worker_locked(self, item: _CallItem) -> _WorkerHandle | None:
        best = None
        for w in self._workers.values():
            if w.closed or w.eof:
                continue
            if not w.inflight:
                return w
            if best is None or len(w.inflight) < len(best.inflight):
                best = w
        if best is None or len(best.inflight) >= PIPELINE_DEPTH:
            return None
        quick = self._ewma_job_s is not None and self._ewma_job_s < PIPELINE_MAX_JOB_S
        if quick and item.timeout is None and len(item.payload) <= PIPELINE_MAX_PAYLOAD:
            return best
        return None

    # ---------------------------------------------------------------- results
    def _result_locked(self, w: _WorkerHandle, frame: Any) -> list[tuple[Future[Any], Any]]:
        kind, job_id, payload = frame
        view = memoryview(payload)
        if kind == P.INIT_FAILED:
            try:
                err = self._remote_error(self._pickler.loads(view)[1], "initializer")
            except BaseException as e:
                err = e
            err = BrokenPoolError(f"worker initializer failed:\n{err}")
            self._close_job_pipe_locked(w)
            out: list[tuple[Future[Any], Any]] = [(i.future, err) for i in w.inflight]
            w.inflight.clear()
            while self._queue:
                out.append((self._queue.popleft().future, err))
            return out
        if not w.inflight or w.inflight[0].job_id != job_id:
            log.error("worker %d sent a result for unknown job %d; ignored", w.pid, job_id)
            return []
        item = w.inflight.popleft()
        now = time.monotonic()
        if w.inflight:
            w.inflight[0].started = now
        try:
            elapsed, value = self._pickler.loads(view)
        except BaseException as e:
            return [(item.future, e)]
        self._ewma_job_s = elapsed if self._ewma_job_s is None else 0.8 * self._ewma_job_s + 0.2 * elapsed
        if kind == P.RESULT:
            return [(item.future, _Ok(value))]
        return [(item.future, self._remote_error(value, item.name))]

    def _remote_error(self, value: Any, name: str) -> BaseException:
        try:
            original, type_name, message, tb = value
        except (TypeError, ValueError) as e:
            return SubprocException(f"cannot read the remote exception: {e!r}", "", name)
        exc = SubprocException(message, tb, name, type_name)
        if original is not None:
            try:
                exc.__cause__ = self._pickler.loads(original)
            except BaseException:
                pass
        return exc

    def _job_done(self, fut: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1
            self._last_active = time.monotonic()
            if self._pending == 0:
                self._idle_cv.notify_all()

    # -------------------------------------------------------- handler thread
    def _handler_loop(self) -> None:
        while True:
            timeout = self._next_timer()
            try:
                events = self._poll.poll(timeout)
            except InterruptedError:
                continue
            except ValueError:  # epoll closed during teardown
                return
            outcomes: list[tuple[Future[Any], Any]] = []
            with self._lock:
                for fd, _ev in events:
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                        if self._finished:
                            return
                        continue
                    if self._sidecar is not None and fd == self._sidecar.sock.fileno():
                        outcomes += self._control_locked()
                        continue
                    w = self._by_fd.get(fd)
                    if w is None:
                        continue
                    try:
                        frame = read_frame(fd)
                    except (EOFError, OSError, PyRuntimeError):
                        w.eof = True  # the exit report does the bookkeeping
                        self._poll.unregister(fd)
                        continue
                    outcomes += self._result_locked(w, frame)
                self._dispatch_locked()
                if self._quiesce_when_drained and not self._queue:
                    self.quiesce()
                outcomes += self._timers_locked()
            _settle(outcomes)

    _finished = False

    def _control_locked(self) -> list[tuple[Future[Any], Any]]:
        side = self._sidecar
        assert side is not None
        try:
            msg, fds = P.recv_control(side.sock)
        except OSError:
            msg, fds = None, []
        if msg is None:
            return self._sidecar_died_locked()
        op = msg["op"]
        if op == "worker_up" and len(fds) == 2:
            self._add_worker_locked(msg, fds)
            return []
        for fd in fds:
            os.close(fd)
        if op == "worker_exit":
            return self._worker_exited_locked(msg)
        if op == "error":
            log.error("pyruntime sidecar: %s", msg.get("text"))
            if not self._workers:
                err = BrokenPoolError(f"pool has no workers: {msg.get('text')}")
                out = [(i.future, err) for i in self._queue]
                self._queue.clear()
                return out
        return []

    def _next_timer(self) -> float:
        """Seconds until the handler thread must look at timers (-1: never)."""
        with self._lock:
            waits = []
            now = time.monotonic()
            for w in self._workers.values():
                if w.inflight:
                    item = w.inflight[0]
                    if item.timeout is not None and w.kill_reason is None:
                        waits.append(item.started + item.timeout - now)
                    if self._long_threshold is not None and not item.long_reported:
                        waits.append(item.started + self._long_threshold - now)
            if self._quiesce_idle is not None and not self._quiesced and self._sidecar is not None:
                waits.append(self._last_active + self._quiesce_idle - now if self._pending == 0
                             else self._quiesce_idle)
        return max(0.0, min(waits)) + 0.001 if waits else -1

    def _timers_locked(self) -> list[tuple[Future[Any], Any]]:
        now = time.monotonic()
        for w in self._workers.values():
            if not w.inflight:
                continue
            item = w.inflight[0]
            if item.timeout is not None and w.kill_reason is None and now - item.started >= item.timeout:
                w.kill_reason = "timeout"
                self._close_job_pipe_locked(w)
                if self._sidecar is not None:
                    self._sidecar.send("kill", wid=w.wid, reason="timeout")
            if self._long_threshold is not None and not item.long_reported and \
                    now - item.started >= self._long_threshold:
                item.long_reported = True
                st = self._status_of(w, item, now)
                if self._on_long_job is not None:
                    threading.Thread(target=self._on_long_job, args=(st,), daemon=True).start()
                else:
                    log.warning("job %s (id %d) has run %.1f s in worker %d",
                                st["name"], st["job_id"], st["elapsed_s"], st["worker_pid"])
        if (self._quiesce_idle is not None and not self._quiesced and self._pending == 0
                and self._sidecar is not None and now - self._last_active >= self._quiesce_idle):
            self.quiesce()
        return []

    @staticmethod
    def _status_of(w: _WorkerHandle, item: _CallItem, now: float) -> dict[str, Any]:
        return {"job_id": item.job_id, "name": item.name, "worker_pid": w.pid,
                "elapsed_s": now - item.started}

    # ---------------------------------------------------------------- teardown
    def _finish(self, timeout: float | None) -> None:
        with self._lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._pending and self._sidecar is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._idle_cv.wait(left)
            side = self._sidecar
            if side is not None:
                side.send("shutdown")
                for w in self._workers.values():
                    self._close_job_pipe_locked(w)
        if side is not None:
            try:
                side.popen.wait(timeout=self._grace + 1.0)
            except subprocess.TimeoutExpired:
                side.popen.kill()  # workers follow it through PR_SET_PDEATHSIG
                side.popen.wait()
        with self._lock:
            outcomes = self._sidecar_died_locked() if self._sidecar is not None else []
            self._finished = True
        _settle(outcomes)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._poll.close()
        _live_pools.discard(self)


def _job_name(fn: Any) -> str:
    """The name a job goes by in errors and status(): partials are unwrapped."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or repr(fn)


class _Ok:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _settle(outcomes: list[tuple[Future[Any], Any]]) -> None:
    """Complete futures outside the pool lock (callbacks may call submit)."""
    for fut, outcome in outcomes:
        if fut.done():
            continue
        if isinstance(outcome, _Ok):
            fut.set_result(outcome.value)
        else:
            fut.set_exception(outcome)


@atexit.register
def _shutdown_all_pools() -> None:
    for pool in list(_live_pools):
        try:
            pool.shutdown(wait=True, cancel_futures=True, timeout=config.shutdown_grace_s())
        except Exception:  # interpreter exit: best effort, never raise
            pass
