"""Wire vocabulary shared by the pool, the sidecar and the workers.

Data channels: one pipe pair per worker, framed by pyruntime.framing. The
caller writes call items straight into a worker's job pipe and reads result
items straight from its result pipe; the sidecar never touches job data.

Control channel: an AF_UNIX SOCK_SEQPACKET socket pair between the caller and
the sidecar, one small JSON object per packet. The sidecar hands each new
worker's pipe ends to the caller with SCM_RIGHTS ("worker_up") and reports
every worker exit with its status ("worker_exit").
"""

from __future__ import annotations

import json
import pickle
import socket
from enum import Enum
from typing import Any

# frame kinds on the per-worker pipes
CALL = 1          # caller -> worker: pickled (fn, args, kwargs)
INIT = 2          # caller -> worker: pickled (initializer, initargs), first frame
RESULT = 3        # worker -> caller: pickled (seconds, result)
ERROR = 4         # worker -> caller: pickled (seconds, remote exception tuple)
INIT_FAILED = 5   # worker -> caller: like ERROR, then the worker exits

# control channel (AF_UNIX SOCK_SEQPACKET, one JSON object per packet; the
# sidecar attaches a new worker's pipe ends with SCM_RIGHTS)
MAX_CONTROL = 1 << 16


def send_control(sock: socket.socket, op: str, fds: list[int] | None = None, **fields: Any) -> None:
    data = json.dumps({"op": op, **fields}).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def recv_control(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One control message and the fds that came with it; (None, []) at EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_CONTROL, 4, socket.MSG_CMSG_CLOEXEC)
    if not data:
        for fd in fds:
            _close_quietly(fd)
        return None, []
    return json.loads(data), list(fds)


def _close_quietly(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass


def describe_exit(status: int | None, signame: str | None = None) -> str:
    """'exit code 3' or 'signal 11 (SIGSEGV)' for a waitpid-style return code
    (negative = killed by that signal, as subprocess reports it)."""
    import signal

    if status is None:
        return "an unknown status"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = "unknown"
        extra = "; possibly killed for memory" if -status == signal.SIGKILL else ""
        return f"signal {-status} ({name}{extra})"
    return f"exit code {status}"


class SubprocKind(str, Enum):
    """How the sidecar starts workers. FORK (default): fork the clean sidecar,
    fast and cheap to respawn. SPAWN: exec a fresh interpreter per worker."""

    FORK = "fork"
    SPAWN = "spawn"


class SubprocPickler:
    """How call and result items are serialised. Subclass it to change that;
    the sidecar and workers import the subclass by its qualified name, so it
    must live in an importable module (not ``__main__``)."""

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes | bytearray | memoryview) -> Any:
        return pickle.loads(data)


def pickler_qualname(pickler: SubprocPickler) -> str:
    cls = type(pickler)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ValueError(
            f"pickler class {cls.__qualname__} must be defined at module level of an importable "
            "module (the sidecar imports it by name)"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def lookup_pickler(qualname: str) -> SubprocPickler:
    """Import ``module:Class``, check it is a SubprocPickler, instantiate it."""
    import importlib

    module_name, _, attr = qualname.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, SubprocPickler)):
        raise TypeError(f"{qualname} is not a subclass of pyruntime.SubprocPickler")
    return obj()
