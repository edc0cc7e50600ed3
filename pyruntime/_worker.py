"""A compile worker: reads call items from its job pipe, runs them, writes
result items to its result pipe, until the job pipe reaches EOF.

Forked from the sidecar (SubprocKind.FORK) or started as
``python -m pyruntime._worker`` (SubprocKind.SPAWN). Either way it asks the
kernel to SIGKILL it when the sidecar dies, so no worker outlives its pool.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from typing import Any

from . import _protocol as P
from .framing import read_frame, write_frame
from .core import backend


def _remote_exception(pickler: Any, exc: BaseException, elapsed: float = 0.0) -> bytes:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        original = pickler.dumps(exc)
        pickler.loads(original)  # some exceptions pickle but do not unpickle
    except Exception:
        original = None
    return pickler.dumps((elapsed, (original, type(exc).__qualname__, str(exc), tb)))


def prepare(sidecar_pid: int) -> None:
    """Process set-up shared by forked and spawned workers."""
    backend.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != sidecar_pid:  # the sidecar died before prctl took effect
        os._exit(0)
    # Ctrl-C goes to the caller; the pool decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def serve(job_fd: int, result_fd: int, pickler: Any) -> int:
    while True:
        try:
            kind, job_id, payload = read_frame(job_fd)
        except EOFError:
            return 0
        if kind == P.INIT:
            try:
                fn, args = pickler.loads(payload)
                if fn is not None:
                    fn(*args)
            except BaseException as e:  # report, then die: the pool is unusable
                write_frame(result_fd, P.INIT_FAILED, job_id, _remote_exception(pickler, e))
                return 3
            continue
        start = time.perf_counter()
        try:
            fn, args, kwargs = pickler.loads(payload)
            del payload
            value = fn(*args, **kwargs)
            # the run time rides in the same pickle: no extra copy of big results
            out = pickler.dumps((time.perf_counter() - start, value))
            out_kind = P.RESULT
        except BaseException as e:  # SystemExit too: it fails the job, not the worker
            out = _remote_exception(pickler, e, time.perf_counter() - start)
            out_kind = P.ERROR
        write_frame(result_fd, out_kind, job_id, out)


def run_forked(job_fd: int, result_fd: int, pickler: Any, sidecar_pid: int) -> None:
    """Entry point in a child forked by the sidecar; never returns."""
    code = 1
    try:
        prepare(sidecar_pid)
        code = serve(job_fd, result_fd, pickler)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyruntime._worker")
    parser.add_argument("--job-fd", type=int, required=True)
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--pickler", required=True)
    parser.add_argument("--sidecar", type=int, required=True)
    args = parser.parse_args(argv)
    prepare(args.sidecar)
    return serve(args.job_fd, args.result_fd, P.lookup_pickler(args.pickler))


if __name__ == "__main__":
    sys.exit(main())
