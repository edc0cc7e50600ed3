"""Job functions the bench submits to worker pools.

They live in an importable module (never ``__main__``) because every pool
under test, torch's SubprocPool included, pickles functions by reference and
imports them in its workers. Keep this module free of heavy imports.
"""

from __future__ import annotations

import os
import time


def noop() -> None:
    """The no-op job of the latency and throughput figures."""
    return None


def echo(data: bytes) -> bytes:
    """Send a payload back unchanged (payload round trips)."""
    return data


def pid() -> int:
    return os.getpid()


def warm(seconds: float = 0.2, modules: tuple[str, ...] = ()) -> int:
    """Import ``modules`` and hold the worker for ``seconds``: submitting W
    of these at once makes each of W workers start and import them before a
    timed run."""
    import importlib

    for m in modules:
        importlib.import_module(m)
    time.sleep(seconds)
    return os.getpid()
