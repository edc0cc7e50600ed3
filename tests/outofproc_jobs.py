"""Job functions for the out-of-process tests: the child imports them by name."""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile
import uuid

from pyruntime.outofproc import child_state


def getpid() -> int:
    return os.getpid()


def getenv(*names: str) -> dict[str, str | None]:
    return {n: os.environ.get(n) for n in names}


def state() -> dict:
    return child_state()


def add(a, b, *, scale=1):
    return (a + b) * scale


def fail(msg: str) -> None:
    raise KeyError(msg)


def segfault() -> None:
    ctypes.string_at(0)


def exit_now(code: int) -> None:
    os._exit(code)


@functools.lru_cache(maxsize=None)
def cached_token() -> str:
    """A per-process cache: stays the same until cleared."""
    return uuid.uuid4().hex


def token() -> str:
    return cached_token()


@functools.cache
def cached_scratch_dir() -> str:
    """Like Inductor's cached prefix paths: a directory made once per process
    and remembered; the caller may delete it when it clears its caches."""
    return tempfile.mkdtemp(prefix="pyruntime-oop-", dir=os.environ.get("OOP_SCRATCH_ROOT"))


def write_scratch(name: str, data: str) -> str:
    path = os.path.join(cached_scratch_dir(), name)
    with open(path, "w") as f:
        f.write(data)
    return path


CALLS: list[str] = []


def counting_hook() -> None:
    """A plain function hook: records that it ran (in the child)."""
    CALLS.append("cleared")


def hook_calls() -> int:
    return len(CALLS)


def broken_hook() -> None:
    raise OSError("hook is broken")
