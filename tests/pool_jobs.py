"""Job functions for the pool tests: workers import them by name."""

from __future__ import annotations

import ctypes
import fcntl
import os
import pickle
import signal
import sys
import time

from pyruntime import SubprocPickler
from pyruntime._protocol import RESULT
from pyruntime.framing import write_frame

STATE: dict[str, object] = {}


def add(a, b):
    return a + b


def echo(x):
    return x


def getpid():
    return os.getpid()


def getenv(name):
    return os.environ.get(name)


def sleep(s, value=None):
    time.sleep(s)
    return value


def fail(msg):
    raise KeyError(msg)


def segfault():
    ctypes.string_at(0)


def exit_now(code):
    os._exit(code)


def kill_self(sig):
    os.kill(os.getpid(), sig)
    time.sleep(5)


def unpicklable_result():
    return lambda: None


def init_state(value):
    STATE["init"] = value


def read_state():
    return STATE.get("init")


def init_fail():
    raise RuntimeError("initializer exploded")


def allocate(mib, hold_s=5.0):
    block = bytearray(mib << 20)
    for i in range(0, len(block), 4096):  # touch every page so it is resident
        block[i] = 1
    time.sleep(hold_s)
    return len(block)


def ignore_sigterm_and_sleep(s):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(s)


def say(text):
    print(text, flush=True)
    print(text + "-err", file=sys.stderr, flush=True)
    return True


class CountingPickler(SubprocPickler):
    """Marks every result so the test can see this pickler ran in the worker."""

    def dumps(self, obj):
        return b"C" + super().dumps(obj)

    def loads(self, data):
        assert bytes(data[:1]) == b"C", "payload not written by CountingPickler"
        return super().loads(memoryview(data)[1:])


# --- liveness tests (tests/test_pool_liveness.py) ---------------------------
F_GETPIPE_SZ = 1032
_BLOBS: dict[int, bytes] = {}


def blob(mib, pad=b""):
    """A result of ``mib`` MiB; the bytes object is made once per worker, so
    the job itself is quick (the pool then queues call items behind it)."""
    data = _BLOBS.get(mib)
    if data is None:
        data = _BLOBS[mib] = bytes(mib << 20)
    return data


def length(data):
    return len(data)


def pipe_fds():
    """This worker's (job fd, result fd): the read and the write end of a
    pipe among its descriptors past stdio. A forked worker keeps only stdio
    and those two (pyruntime.sidecar closes the rest); a spawned one is
    handed exactly those two."""
    job_fd = result_fd = None
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:  # the directory listing's own descriptor
            continue
        if not target.startswith("pipe:"):
            continue
        if flags & os.O_ACCMODE == os.O_WRONLY:
            assert result_fd is None, "more than one pipe write end in the worker"
            result_fd = fd
        else:
            assert job_fd is None, "more than one pipe read end in the worker"
            job_fd = fd
    assert job_fd is not None and result_fd is not None
    return job_fd, result_fd


def pipe_sizes():
    return [fcntl.fcntl(fd, F_GETPIPE_SZ) for fd in pipe_fds()]


def write_result_fd(data, sleep_s=0.0, value="done"):
    """Write raw bytes to the worker's own result pipe (garbage, as far as
    the caller's framing goes), then sleep, then return normally."""
    os.write(pipe_fds()[1], data)
    time.sleep(sleep_s)
    return value


def forge_result(job_id, sleep_s=0.0):
    """Write a well-formed result item for another job id, then sleep."""
    write_frame(pipe_fds()[1], RESULT, job_id, pickle.dumps((0.0, "forged")))
    time.sleep(sleep_s)
    return "real"
