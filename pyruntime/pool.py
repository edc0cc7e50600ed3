"""SubprocPool: a concurrent.futures.Executor whose workers live under a
sidecar process and exchange call items and result items with the caller
over pipes of their own.

Words as in CPython's concurrent/futures/process.py: a *call item* is one
job, the pickled ``(fn, args, kwargs)``; a *result item* is its outcome,
the pickled ``(run time, value)`` or the job's exception with its *remote
traceback* (the worker's traceback text); a *broken pool* is one whose
sidecar died, and every pending future then fails with BrokenPoolError.

Data flow::

    caller process                                sidecar process
    ------------------------------------------    ---------------------------
    submit() --> call queue                       forks workers, hands their
                   | dispatch (under the lock)    pipe ends to the caller
                   v                              (SCM_RIGHTS), reaps, kills
                 job pipe k (non-blocking; what   and replaces them; never
                 does not fit waits in worker     sees job data
                 k's outgoing buffer)                    | fork
                   |                                     v
                   +----------- call item ------> worker k: runs it
                                                         |
    Future <-- result thread <-- result pipe k <-- result item (value, or
                   ^                               exception + remote traceback)
                   |
                   +-- control socket (SEQPACKET, JSON) <-- sidecar: worker_up
                       (+ the two pipe ends), worker_exit (status, kill reason)

Why this shape:

- The sidecar is started with exec (``python -m pyruntime.compile_worker``),
  never forked from the caller. A caller that initialised CUDA or runs
  threads cannot fork safely: the child inherits locks held by threads that
  do not exist in it and a CUDA context it must not touch. The sidecar is a
  fresh single-threaded interpreter, so forking workers from it is safe and
  cheap, and what it preloads (``preload=("triton",)``) is imported once,
  not again in every replacement worker.
- The sidecar creates each worker's two pipes when it forks the worker; the
  caller is not the worker's parent, so the only way for it to hold the
  other ends is to receive them over the AF_UNIX control socket with
  SCM_RIGHTS, once per worker. From then on caller and worker talk directly.
- Call items go straight to workers: relaying them through the sidecar would
  add a pickle, an unpickle and two pipe hops per job each way and make one
  process the bottleneck (a sidecar relaying to a ProcessPoolExecutor tops
  out near a thousand jobs/s and a millisecond per round trip). Here a job
  costs one pickle each way and two pipe hops.

Actors, what each owns, what guards it, what may block:

- *Caller threads* (``submit``, ``shutdown``, ``quiesce``, ``status``...).
  Pickle the call item and build its frame header before taking the pool
  lock; under it they queue the item, pick a worker and write the frame to
  its job pipe with a non-blocking ``writev``; what does not fit stays in
  that worker's outgoing buffer, which the result thread flushes when the
  pipe becomes writable. They block only on the pool lock, and in
  ``shutdown()`` / ``wait_ready()``, which wait on its condition.
- *Result thread* (``pyruntime-pool-results``, one per pool). Owns the epoll
  set, the read side of every result pipe (its FrameReader; only this thread
  closes a result pipe while it runs) and the reads of the control socket.
  It reads result items without the lock, non-blocking, reassembling frames
  across reads; then, under the lock, it matches them to call items, applies
  ``worker_up`` / ``worker_exit``, flushes outgoing buffers, dispatches and
  runs the timers (job timeout, long-job report, idle quiesce). It unpickles
  results and completes futures after releasing the lock (done callbacks
  may call ``submit``). It blocks only in ``epoll_wait`` and on the lock.
- *Sidecar* (a process). Owns the worker processes: forks or spawns them,
  reaps them through pidfds, kills them when the caller asks (timeout,
  malformed result item) or over the memory limit, SIGTERMs then SIGKILLs
  them at shutdown, and replaces the dead. Single-threaded; blocks in
  ``select``; sends only small control packets.
- *Worker* (a process). Owns the other ends of its two pipes and uses them
  blocking: reads a call item, runs it, writes the result item. It may block
  writing a large result item until the result thread drains it, and the
  caller may be writing the call items queued behind the running one; so
  nobody holds the pool lock across a read or write that waits for a
  worker, and the result thread never waits on a write.

The pool lock (an RLock, with one condition for idle and ready waits) guards
the call queue, the worker handles (in-flight call items, outgoing buffer,
job pipe end, flags), the pending count, the sidecar handle and the quiesce
and shutdown state. Outside it: each worker's FrameReader and the job
run-time average, both touched by the result thread only.

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
- A worker that breaks the framing of its result pipe (bad magic, version,
  length or checksum, or a result item for a job it is not running) is
  killed and replaced; its job fails with ProtocolError naming the problem.
- A dead sidecar breaks the pool: every pending future fails at once with
  BrokenPoolError; the pool is not rebuilt eagerly, the next ``submit()``
  (or ``wakeup()``) starts a new sidecar, every time, with no limit.
- The caller dying closes the control socket: the sidecar kills its workers
  and exits; workers also have PR_SET_PDEATHSIG so none outlives it.

Shutdown and its bounds:

- ``shutdown(wait=True)`` waits for running jobs with no bound unless
  ``timeout=`` is given (the Executor contract; a per-job ``timeout`` is
  what bounds a stuck job); jobs still running at ``timeout`` fail with
  BrokenPoolError. Then the teardown: workers get SIGTERM and, after
  ``shutdown_grace`` seconds, SIGKILL; it takes at most shutdown_grace + 1 s
  whatever the worker count. Ctrl-C during the wait ends the wait, and the
  teardown still runs before the KeyboardInterrupt goes on.
- Leaving a ``with`` block normally is ``shutdown(wait=True)``; leaving it
  by an exception (Ctrl-C included) cancels queued jobs and does not wait
  for running ones: at most shutdown_grace + 1 s.
- At interpreter exit a hook cancels queued jobs, gives running ones
  shutdown_grace seconds, then tears down: at most 2 x shutdown_grace + 1 s,
  also when an earlier ``shutdown(wait=False)`` is still waiting.
"""

from __future__ import annotations

import atexit
import collections
import functools
import itertools
import logging
import os
import select
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
    ProtocolError,
    PyRuntimeError,
    WorkerDiedError,
    WorkerMemoryError,
)

__all__ = ["SubprocPool", "SubprocKind", "SubprocPickler", "SubprocException"]

log = logging.getLogger("pyruntime.pool")

PIPELINE_DEPTH = 8
PIPELINE_MAX_PAYLOAD = 64 << 10
PIPELINE_MAX_JOB_S = 0.002
WRITEV_BUFFERS = 64  # buffers one flush hands to writev (IOV_MAX is 1024)


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
    frame: list[memoryview]  # header and payload, ready for writev
    future: Future[Any]
    name: str
    timeout: float | None
    started: float = 0.0
    long_reported: bool = False

    @property
    def size(self) -> int:
        return len(self.frame[-1])


@dataclass
class _WorkerHandle:
    wid: int
    pid: int
    job_fd: int
    result_fd: int
    reader: P.FrameReader
    inflight: collections.deque[_CallItem] = field(default_factory=collections.deque)
    out: collections.deque[memoryview] = field(default_factory=collections.deque)  # not yet in the pipe
    dispatched: int = 0
    closed: bool = False      # takes no more call items (quiesce, recycle, kill, shutdown)
    job_open: bool = True     # our end of the job pipe is open (closed once `out` is flushed)
    writable_wait: bool = False  # job pipe registered for EPOLLOUT
    eof: bool = False         # result pipe no longer read (EOF, or a malformed frame)
    kill_reason: str | None = None
    kill_detail: str = ""


class _Raw:
    """A result item matched to its call item, unpickled outside the lock."""

    __slots__ = ("kind", "payload", "name")

    def __init__(self, kind: int, payload: bytearray, name: str) -> None:
        self.kind = kind
        self.payload = payload
        self.name = name


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
    SIGKILL (default PYRUNTIME_SHUTDOWN_GRACE, 2 s). It bounds the teardown
    (at most grace + 1 s), not the wait for running jobs before it:
    ``shutdown(wait=True)`` waits for them with no bound unless given
    ``timeout=``. Leaving a ``with`` block by an exception does not wait for
    them (at most grace + 1 s); leaving it normally does. The interpreter-exit
    hook gives them ``grace`` seconds (at most 2 x grace + 1 s in all).
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
        self._max_frame = config.max_frame_bytes()

        self._lock = threading.RLock()
        self._idle_cv = threading.Condition(self._lock)
        self._queue: collections.deque[_CallItem] = collections.deque()
        self._workers: dict[int, _WorkerHandle] = {}
        self._by_result_fd: dict[int, _WorkerHandle] = {}
        self._by_job_fd: dict[int, _WorkerHandle] = {}  # job pipes waiting to be writable
        self._dead_fds: list[int] = []  # result pipes for the result thread to close
        self._job_ids = itertools.count(1)
        self._pending = 0
        self._ewma_job_s: float | None = None
        self._last_active = time.monotonic()
        self._quiesced = False
        self._quiesce_when_drained = False
        self._shutdown = False
        self._finish_deadline: float | None = None  # how long shutdown waits for running jobs
        self._finishing = False  # a shutdown is waiting or tearing down
        self._tearing_down = False
        self._finished = False
        self._done = threading.Event()
        self._sidecar: _Sidecar | None = None
        self._thread: threading.Thread | None = None
        self.restarts = -1  # sidecars started after the first

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
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
        job_id = next(self._job_ids)  # atomic: the frame is built before taking the lock
        fut: Future[Any] = Future()
        item = _CallItem(job_id, P.encode_frame(P.CALL, job_id, payload), fut, name,
                         timeout if timeout is not None else self._default_timeout)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
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
                self._close_job_pipe_locked(w, flush=True)

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
        """Stop the pool. ``cancel_futures`` cancels queued jobs.

        With ``wait`` the call first waits for running jobs: with no bound
        unless ``timeout`` seconds are given (the Executor contract; a
        per-job ``timeout`` bounds a stuck job); jobs still running then
        fail with BrokenPoolError. Then the teardown: workers get SIGTERM
        and, ``shutdown_grace`` seconds later, SIGKILL; it takes at most
        shutdown_grace + 1 s whatever the worker count. Ctrl-C during the
        wait ends it and the teardown still runs. Without ``wait`` all this
        happens on a background thread. A later call (the interpreter-exit
        hook, say) with a ``timeout`` shortens the wait of one in progress
        and, with ``wait``, returns once the pool is torn down."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    item = self._queue.popleft()
                    item.future.cancel()
            if timeout is not None:
                deadline = time.monotonic() + max(0.0, timeout)
                if self._finish_deadline is None or deadline < self._finish_deadline:
                    self._finish_deadline = deadline
                self._idle_cv.notify_all()
            start = not self._finishing and not self._finished
            if start:
                self._finishing = True
        in_result_thread = threading.current_thread() is self._thread  # a done callback
        if start:
            if wait and not in_result_thread:
                self._finish()
            else:  # the result thread cannot wait for the futures it completes
                threading.Thread(target=self._finish, name="pyruntime-pool-shutdown", daemon=True).start()
        elif wait and not in_result_thread:
            self._done.wait()  # bounded once a deadline is set: the teardown is

    def __enter__(self) -> "SubprocPool":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.shutdown(wait=True)
        else:  # nobody will read the results: do not wait for running jobs
            self.shutdown(wait=True, cancel_futures=True, timeout=0)

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

    def _sidecar_died_locked(self, why: str | None = None) -> list[tuple[Future[Any], BaseException]]:
        side = self._sidecar
        assert side is not None
        side.dead = True
        self._sidecar = None
        try:
            self._poll.unregister(side.sock.fileno())
        except (OSError, ValueError):
            pass
        side.sock.close()
        if why is None:
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
        os.set_blocking(job_fd, False)  # our own ends: the sidecar has closed its copies
        os.set_blocking(result_fd, False)
        w = _WorkerHandle(int(msg["wid"]), int(msg["pid"]), job_fd, result_fd,
                          P.FrameReader(result_fd, self._max_frame))
        self._workers[w.wid] = w
        self._by_result_fd[result_fd] = w
        self._poll.register(result_fd, select.EPOLLIN)
        if not self._send_locked(w, P.encode_frame(P.INIT, 0, self._init_payload)):
            self._close_job_pipe_locked(w)
        # a worker that comes up while shutdown() waits for jobs takes them:
        # queued jobs would wait forever otherwise (workers still starting)
        if self._quiesced or self._tearing_down:
            self._close_job_pipe_locked(w, flush=True)
        self._idle_cv.notify_all()

    def _send_locked(self, w: _WorkerHandle, frame: list[memoryview]) -> bool:
        """Put one frame on w's job pipe without blocking: write what fits,
        keep the rest for the result thread. False when nothing could be
        written because the worker is gone (the frame is not queued)."""
        if not w.job_open:
            return False
        if w.out:
            w.out.extend(frame)
            return True
        try:
            n = os.writev(w.job_fd, frame)
        except BlockingIOError:
            n = 0
        except OSError:  # EPIPE: the worker is gone; its exit report follows
            return False
        for buf in frame:
            if n >= len(buf):
                n -= len(buf)
                continue
            w.out.append(buf[n:])
            n = 0
        if w.out and not w.writable_wait:
            w.writable_wait = True
            self._by_job_fd[w.job_fd] = w
            self._poll.register(w.job_fd, select.EPOLLOUT)
        return True

    def _flush_locked(self, w: _WorkerHandle) -> None:
        """The job pipe polled writable: write what waits in w.out."""
        while w.out and w.job_open:
            bufs = list(itertools.islice(w.out, WRITEV_BUFFERS))
            try:
                n = os.writev(w.job_fd, bufs)
            except BlockingIOError:
                return
            except OSError:  # the worker is gone: its exit report does the bookkeeping
                self._close_job_pipe_locked(w)
                return
            full = n == sum(len(b) for b in bufs)
            while n and n >= len(w.out[0]):
                n -= len(w.out.popleft())
            if n:
                w.out[0] = w.out[0][n:]
            if not full:
                return  # the pipe is full again: wait for the next EPOLLOUT
        if not w.out:
            self._stop_writable_wait_locked(w)
            if w.closed and w.job_open:  # closing waited for this flush
                self._close_job_pipe_locked(w)

    def _stop_writable_wait_locked(self, w: _WorkerHandle) -> None:
        if w.writable_wait:
            w.writable_wait = False
            self._by_job_fd.pop(w.job_fd, None)
            try:
                self._poll.unregister(w.job_fd)
            except (OSError, ValueError):
                pass

    def _close_job_pipe_locked(self, w: _WorkerHandle, flush: bool = False) -> None:
        """No more call items for w; its job pipe reaching EOF makes it exit.
        With ``flush`` the call items already dispatched to it still go
        through first (quiesce, recycling); without, they are dropped (the
        worker is being killed or the pool torn down)."""
        w.closed = True
        if not w.job_open or (flush and w.out):
            return
        w.out.clear()
        self._stop_writable_wait_locked(w)
        w.job_open = False
        os.close(w.job_fd)

    def _drop_worker_locked(self, w: _WorkerHandle) -> None:
        self._workers.pop(w.wid, None)
        self._by_result_fd.pop(w.result_fd, None)
        self._close_job_pipe_locked(w)
        if not w.eof:
            w.eof = True
            try:
                self._poll.unregister(w.result_fd)
            except (OSError, ValueError):
                pass
        if threading.current_thread() is self._thread or self._thread is None or not self._thread.is_alive():
            os.close(w.result_fd)
        else:  # the result thread may be reading it right now, without the lock
            self._dead_fds.append(w.result_fd)
            self._wake()

    def _stop_reading_locked(self, w: _WorkerHandle) -> None:
        if not w.eof:
            w.eof = True
            try:
                self._poll.unregister(w.result_fd)
            except (OSError, ValueError):
                pass

    def _malformed_locked(self, w: _WorkerHandle, detail: str) -> None:
        """w broke the framing of its result pipe: nothing more it sends can
        be trusted. Stop reading it and have it killed; its exit report fails
        its job with ProtocolError and the sidecar replaces it."""
        log.error("worker %d sent %s; killing it", w.pid, detail)
        self._stop_reading_locked(w)
        if w.kill_reason is None:
            w.kill_reason = "protocol"
            w.kill_detail = detail
        self._close_job_pipe_locked(w)
        if self._sidecar is not None:
            self._sidecar.send("kill", wid=w.wid, reason="protocol")

    def _worker_exited_locked(self, msg: dict[str, Any]) -> list[tuple[Future[Any], Any]]:
        w = self._workers.get(int(msg["wid"]))
        if w is None:
            return []
        outcomes: list[tuple[Future[Any], Any]] = []
        # results it wrote before dying still count; it is dead, so the pipe
        # holds all it will ever hold (a frame cut short by its death is dropped)
        for _ in range(64):
            if w.eof:
                break
            frames, stop = w.reader.read()
            outcomes += self._results_locked(w, frames)
            if stop is not None:
                if isinstance(stop, ProtocolError):
                    self._malformed_locked(w, f"a malformed result item: {stop}")
                break
            if not frames:
                break
        code = msg.get("code")
        reason = msg.get("reason") or w.kill_reason
        if w.inflight:
            item = w.inflight.popleft()
            outcomes.append((item.future, self._death_error(item, w, code, reason)))
            while w.inflight:  # queued behind the dead job: run them elsewhere
                self._queue.appendleft(w.inflight.pop())
        self._drop_worker_locked(w)
        self._dispatch_locked()
        return outcomes

    def _death_error(self, item: _CallItem, w: _WorkerHandle, code: int | None,
                     reason: str | None) -> BaseException:
        pid = w.pid
        if reason == "timeout":
            return JobTimeoutError(f"job {item.name} ran past its {item.timeout:g} s timeout; "
                                   f"its worker (pid {pid}) was killed and replaced")
        if reason and reason.startswith("memory:"):
            rss = int(reason.split(":", 1)[1])
            return WorkerMemoryError(
                f"job {item.name} went over the pool's memory limit ({rss >> 20} MiB resident > "
                f"{(self._memory_limit or 0) >> 20} MiB); its worker (pid {pid}) was killed and replaced")
        if reason == "protocol":
            return ProtocolError(f"worker (pid {pid}) running job {item.name} sent {w.kill_detail}; "
                                 "it was killed and replaced")
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
            if not self._send_locked(w, item.frame):  # the worker is gone; its exit report will follow
                self._queue.appendleft(item)
                self._close_job_pipe_locked(w)
                continue
            if not item.future.running():  # a requeued item is already running
                item.future.set_running_or_notify_cancel()
            if not w.inflight:
                item.started = time.monotonic()
                if (item.timeout is not None or self._long_threshold is not None) \
                        and threading.current_thread() is not self._thread:
                    # the result thread may sleep with no timer at all: it
                    # must set one for this job's timeout or long-job report
                    self._wake()
            w.inflight.append(item)
            w.dispatched += 1
            if self._max_jobs is not None and w.dispatched >= self._max_jobs:
                # it exits after these; the sidecar replaces it
                self._close_job_pipe_locked(w, flush=True)

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
        if quick and item.timeout is None and item.size <= PIPELINE_MAX_PAYLOAD:
            return best
        return None

    # ---------------------------------------------------------------- results
    def _results_locked(self, w: _WorkerHandle, frames: list[Any]) -> list[tuple[Future[Any], Any]]:
        out: list[tuple[Future[Any], Any]] = []
        for frame in frames:
            if w.eof:  # malformed: nothing after it counts
                break
            out += self._result_locked(w, frame)
        return out

    def _result_locked(self, w: _WorkerHandle, frame: Any) -> list[tuple[Future[Any], Any]]:
        kind, job_id, payload = frame
        if kind == P.INIT_FAILED:
            try:
                err = self._remote_error(self._pickler.loads(memoryview(payload))[1], "initializer")
            except BaseException as e:
                err = e
            err = BrokenPoolError(f"worker initializer failed:\n{err}")
            self._close_job_pipe_locked(w)
            out: list[tuple[Future[Any], Any]] = [(i.future, err) for i in w.inflight]
            w.inflight.clear()
            while self._queue:
                out.append((self._queue.popleft().future, err))
            return out
        if kind not in (P.RESULT, P.ERROR):
            self._malformed_locked(w, f"a frame of unknown kind {kind} on its result pipe")
            return []
        if not w.inflight or w.inflight[0].job_id != job_id:
            running = f"job {w.inflight[0].job_id} runs" if w.inflight else "no job runs"
            self._malformed_locked(w, f"a result item for job {job_id} while {running}")
            return []
        item = w.inflight.popleft()
        if w.inflight:
            w.inflight[0].started = time.monotonic()
        return [(item.future, _Raw(kind, payload, item.name))]

    def _decode(self, raw: _Raw) -> Any:
        """A result item's outcome (run in the result thread, outside the lock)."""
        try:
            elapsed, value = self._pickler.loads(memoryview(raw.payload))
        except BaseException as e:
            return e
        ewma = self._ewma_job_s
        self._ewma_job_s = elapsed if ewma is None else 0.8 * ewma + 0.2 * elapsed
        if raw.kind == P.RESULT:
            return _Ok(value)
        return self._remote_error(value, raw.name)

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

    def _settle(self, outcomes: list[tuple[Future[Any], Any]]) -> None:
        """Complete futures outside the pool lock (callbacks may call submit)."""
        for fut, outcome in outcomes:
            if isinstance(outcome, _Raw):
                outcome = self._decode(outcome)
            if fut.done():
                continue
            if isinstance(outcome, _Ok):
                fut.set_result(outcome.value)
            else:
                fut.set_exception(outcome)

    def _job_done(self, fut: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1
            self._last_active = time.monotonic()
            if self._pending == 0:
                self._idle_cv.notify_all()

    # -------------------------------------------------------- result thread
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # full (it will wake anyway) or closed (it is gone)
            pass

    def _handler_loop(self) -> None:
        try:
            self._handle_events()
        except BaseException as e:  # a bug here would strand every pending future
            log.exception("pyruntime pool: the result thread failed")
            with self._lock:
                side = self._sidecar
                if side is None or self._finished:
                    return
                side.popen.kill()  # its workers follow (PR_SET_PDEATHSIG)
                side.popen.wait()
                why = f"the pool's result thread failed ({type(e).__name__}: {e})".splitlines()[0]
                outcomes = self._sidecar_died_locked(why)
            self._settle(outcomes)

    def _handle_events(self) -> None:
        while True:
            timeout = self._next_timer()
            try:
                events = self._poll.poll(timeout)
            except InterruptedError:
                continue
            except (ValueError, OSError):  # epoll closed during teardown
                return
            # result items first, without the lock: only this thread reads
            # result pipes, and none of these reads waits
            read: list[tuple[_WorkerHandle, list[Any], BaseException | None]] = []
            writable: list[_WorkerHandle] = []
            other: list[int] = []
            for fd, _ev in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except OSError:
                        pass
                    continue
                w = self._by_result_fd.get(fd)
                if w is not None:
                    if not w.eof:
                        read.append((w, *w.reader.read()))
                    continue
                w = self._by_job_fd.get(fd)
                if w is not None:
                    writable.append(w)
                else:
                    other.append(fd)
            outcomes: list[tuple[Future[Any], Any]] = []
            with self._lock:
                if self._finished:
                    return
                for w, frames, stop in read:
                    if self._workers.get(w.wid) is not w or w.eof:
                        continue  # dropped or condemned meanwhile
                    outcomes += self._results_locked(w, frames)
                    if isinstance(stop, ProtocolError):
                        self._malformed_locked(w, f"a malformed result item: {stop}")
                    elif stop is not None:
                        self._stop_reading_locked(w)  # EOF: the exit report does the bookkeeping
                for w in writable:
                    if self._workers.get(w.wid) is w:
                        self._flush_locked(w)
                side = self._sidecar
                if side is not None and side.sock.fileno() in other:
                    outcomes += self._control_locked()
                self._dispatch_locked()
                if self._quiesce_when_drained and not self._queue:
                    self.quiesce()
                outcomes += self._timers_locked()
                dead, self._dead_fds = self._dead_fds, []
            for fd in dead:
                os.close(fd)
            self._settle(outcomes)

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
    def _finish(self) -> None:
        """Wait for running jobs (until _finish_deadline, which a later
        shutdown call may shorten), then tear down; the teardown runs even
        when the wait is interrupted (Ctrl-C)."""
        try:
            try:
                with self._lock:
                    while self._pending and self._sidecar is not None:
                        deadline = self._finish_deadline
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            break
                        self._idle_cv.wait(left)
            finally:
                self._teardown()
        finally:
            with self._lock:
                self._finishing = False

    def _teardown(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._tearing_down = True
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
        self._settle(outcomes)
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        with self._lock:
            for fd in (self._wake_r, self._wake_w, *self._dead_fds):
                os.close(fd)
            self._dead_fds = []
            self._poll.close()
        _live_pools.discard(self)
        self._done.set()


def _job_name(fn: Any) -> str:
    """The name a job goes by in errors and status(): partials are unwrapped."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or repr(fn)


class _Ok:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


@atexit.register
def _shutdown_all_pools() -> None:
    for pool in list(_live_pools):
        try:
            pool.shutdown(wait=True, cancel_futures=True, timeout=config.shutdown_grace_s())
        except Exception:  # interpreter exit: best effort, never raise
            pass
