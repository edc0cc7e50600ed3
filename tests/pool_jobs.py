"""Job functions for the pool tests: workers import them by name."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

from pyruntime import SubprocPickler

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
