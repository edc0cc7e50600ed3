"""The sidecar: a clean process that owns the workers of one SubprocPool.

Started by the caller with exec (``python -m pyruntime.compile_worker``),
never forked from it, so a caller that initialised CUDA or runs many threads
is safe. It forks (or spawns) workers, gives the caller each worker's pipe
ends over the control socket, reaps workers and reports their exits, and
replaces them. It never sees job data.

    caller                     sidecar                     workers
    ------                     -------                     -------
    control socket <--JSON--> select loop --fork/spawn--> worker 0..N-1
    job pipe  ---------------- (fds passed once) --------> read call item
    result pipe <------------------------------------------ write result item

It exits, killing its workers, as soon as the control socket reaches EOF
(the caller exited or died), and workers die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from . import _protocol as P
from . import config

F_SETPIPE_SZ = 1031
MEMORY_POLL_S = 0.05
CRASH_LOOP_LIMIT = 5  # workers dying within a second of start, in a row


@dataclass
class _Worker:
    wid: int
    pid: int
    pidfd: int
    started: float
    popen: subprocess.Popen[bytes] | None = None
    kill_reason: str | None = None
    kill_time: float | None = None


@dataclass
class Sidecar:
    sock: socket.socket
    parent: int
    pickler_name: str
    kind: P.SubprocKind
    target: int
    memory_limit: int | None = None
    grace_s: float = 2.0
    pickler: Any = None
    workers: dict[int, _Worker] = field(default_factory=dict)
    next_wid: int = 0
    crash_streak: int = 0
    stopping: bool = False
    sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    debug: bool = field(default_factory=config.debug)
    # PYRUNTIME_PIPE_SIZE, 1 MiB by default: one write for MiB payloads
    pipe_size: int = field(default_factory=config.pipe_size)

    def note(self, text: str) -> None:
        """One line on stderr (the pool's log file or the caller's stderr)."""
        print(f"pyruntime sidecar {os.getpid()}: {text}", file=sys.stderr, flush=True)

    def tell(self, op: str, fds: list[int] | None = None, **fields: Any) -> None:
        """Send to the caller; a caller that is gone ends the sidecar quietly."""
        try:
            P.send_control(self.sock, op, fds, **fields)
        except (BrokenPipeError, ConnectionResetError):
            self.abandon()

    # -- worker start ------------------------------------------------------
    def _pipes(self) -> tuple[int, int, int, int]:
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        for fd in (job_w, res_w):
            if not self.pipe_size:
                break
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, self.pipe_size)
            except OSError:
                pass  # over pipe-max-size or the user's pipe pages: keep the default
        return job_r, job_w, res_r, res_w

    def spawn_worker(self) -> None:
        job_r, job_w, res_r, res_w = self._pipes()
        wid = self.next_wid
        self.next_wid += 1
        popen = None
        if self.kind == P.SubprocKind.FORK:
            pid = os.fork()
            if pid == 0:
                self._in_child(job_r, res_w)
        else:
            popen = subprocess.Popen(
                [sys.executable, "-m", "pyruntime._worker", f"--job-fd={job_r}",
                 f"--result-fd={res_w}", f"--pickler={self.pickler_name}", f"--sidecar={os.getpid()}"],
                pass_fds=(job_r, res_w),
            )
            pid = popen.pid
        os.close(job_r)
        os.close(res_w)
        pidfd = os.pidfd_open(pid)
        w = _Worker(wid, pid, pidfd, time.monotonic(), popen)
        self.workers[wid] = w
        self.sel.register(pidfd, selectors.EVENT_READ, ("worker", wid))
        if self.debug:
            self.note(f"worker {wid} started (pid {pid})")
        try:
            self.tell("worker_up", [job_w, res_r], wid=wid, pid=pid)
        finally:
            os.close(job_w)
            os.close(res_r)

    def _in_child(self, job_r: int, res_w: int) -> None:
        from ._worker import run_forked

        # keep only stdio and this worker's own pipe ends
        keep = {0, 1, 2, job_r, res_w}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        run_forked(job_r, res_w, self.pickler, os.getppid())

    def fill(self) -> None:
        while not self.stopping and len(self.workers) < self.target:
            if self.crash_streak >= CRASH_LOOP_LIMIT:
                self.tell("error", text=(
                    f"{self.crash_streak} workers in a row died within a second of starting; "
                    "not starting more until the pool asks again"))
                self.target = len(self.workers)
                self.crash_streak = 0
                return
            self.spawn_worker()

    # -- worker exit -------------------------------------------------------
    def reap(self, wid: int) -> None:
        w = self.workers.pop(wid)
        self.sel.unregister(w.pidfd)
        os.close(w.pidfd)
        _, status = os.waitpid(w.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if w.popen is not None:
            w.popen.returncode = code
        if code != 0 and time.monotonic() - w.started < 1.0:
            self.crash_streak += 1
        else:
            self.crash_streak = 0
        if self.debug or (code != 0 and w.kill_reason is None):
            self.note(f"worker {wid} (pid {w.pid}) exited with {P.describe_exit(code)}"
                      + (f" ({w.kill_reason})" if w.kill_reason else ""))
        self.tell("worker_exit", wid=wid, pid=w.pid, code=code, reason=w.kill_reason)

    def kill(self, wid: int, reason: str, sig: int = signal.SIGKILL) -> None:
        w = self.workers.get(wid)
        if w is None:
            return
        w.kill_reason = w.kill_reason or reason
        w.kill_time = w.kill_time or time.monotonic()
        try:
            os.kill(w.pid, sig)  # safe: we have not reaped it, so the pid is still ours
        except ProcessLookupError:
            pass

    def check_memory(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        for w in list(self.workers.values()):
            if w.kill_reason is not None or self.memory_limit is None:
                continue
            try:
                with open(f"/proc/{w.pid}/statm", "rb") as f:
                    rss = int(f.read().split()[1]) * page
            except (OSError, IndexError, ValueError):
                continue
            if rss > self.memory_limit:
                self.kill(w.wid, f"memory:{rss}")

    def abandon(self) -> None:
        """The caller is gone: kill every worker and exit at once."""
        for w in self.workers.values():
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(0)

    # -- control -----------------------------------------------------------
    def handle(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "start":
            self.target = int(msg["n"])
            self.crash_streak = 0
            self.fill()
        elif op == "quiesce":
            self.target = 0  # workers exit when the caller closes their job pipes
        elif op == "kill":
            self.kill(int(msg["wid"]), str(msg["reason"]))
        elif op == "shutdown":
            self.stopping = True

    def main(self) -> int:
        self.pickler = P.lookup_pickler(self.pickler_name)
        self.sel.register(self.sock, selectors.EVENT_READ, ("control", None))
        self.fill()
        deadline = None
        while True:
            if self.stopping:
                if not self.workers:
                    return 0
                if deadline is None:
                    deadline = time.monotonic() + self.grace_s
                    for wid in list(self.workers):
                        self.kill(wid, "shutdown", signal.SIGTERM)
                elif time.monotonic() >= deadline:
                    for w in list(self.workers.values()):
                        os.kill(w.pid, signal.SIGKILL)
                    deadline = time.monotonic() + 3600  # SIGKILL only once
            timeout = MEMORY_POLL_S if self.memory_limit else None
            if self.stopping:
                timeout = min(timeout or 0.1, 0.1)
            for key, _ in self.sel.select(timeout):
                what, wid = key.data
                if what == "worker":
                    self.reap(wid)
                    self.fill()
                    continue
                try:
                    msg, fds = P.recv_control(self.sock)
                except OSError:
                    msg, fds = None, []
                for fd in fds:
                    os.close(fd)
                if msg is None:  # the caller is gone: take the workers down with us
                    self.abandon()
                if self.debug:
                    self.note(f"control: {msg}")
                self.handle(msg)
            if self.memory_limit:
                self.check_memory()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pyruntime.compile_worker")
    parser.add_argument("--pickler", required=True, help="module:Class of a SubprocPickler subclass")
    parser.add_argument("--kind", type=P.SubprocKind, default=P.SubprocKind.FORK)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--read-fd", type=int, required=True)
    parser.add_argument("--write-fd", type=int, required=True)
    parser.add_argument("--preload", default="", help="comma-separated modules to import before forking")
    parser.add_argument("--memory-limit", type=int, default=0, help="per-worker resident set limit, bytes")
    parser.add_argument("--grace", type=float, default=2.0)
    args = parser.parse_args(argv)
    if os.getppid() != args.parent:
        return 0  # our caller is already gone
    if args.read_fd != args.write_fd:
        parser.error("the control channel is one socket: --read-fd and --write-fd must match")
    sock = socket.socket(fileno=args.read_fd)
    for name in filter(None, args.preload.split(",")):
        __import__(name)
    side = Sidecar(sock, args.parent, args.pickler, args.kind, args.workers,
                   args.memory_limit or None, args.grace)
    return side.main()
