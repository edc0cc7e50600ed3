"""Inductor's subprocess FX-compile mode on pyruntime's out-of-process pool.

Inductor can compile each FX graph in a child process
(``TORCHINDUCTOR_FX_COMPILE_MODE=subprocess``, i.e.
``torch._inductor.compile_fx.fx_compile_mode = FxCompileMode.SUBPROCESS``):
``_SubprocessFxCompile._send_to_child_async`` pickles the graph and submits
it to a one-worker SPAWN pool, and the child clears *all* of Inductor's
caches before *every* compile, because it cannot tell whether the parent
cleared its own (which deletes the temporary directories the child's caches
point at).

:func:`use_pyruntime_fx_subprocess` turns that mode on and replaces only
``_send_to_child_async``: the graph goes to :mod:`pyruntime.outofproc`
(one reused SPAWN child, crash isolation, cache directories forwarded per
job), and the child clears Inductor's caches only when the parent's cache
generation moved: every ``clear_caches()`` in the parent (e.g. entering or
leaving ``fresh_cache()``) bumps it (see ``_generation``).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Any, Mapping

import torch
from torch._inductor import compile_fx as _cfx

from ..outofproc import FORWARDED_ENV, submit_out_of_process
from . import _generation  # noqa: F401  (Inductor's clear_caches() bumps the generation)

__all__ = ["use_pyruntime_fx_subprocess", "FxSubprocessPatch", "compile_in_child"]


def compile_in_child(cls: Any, pickled_input: Any, extra_env: Mapping[str, str] | None) -> Any:
    """The child's side of one FX compile: what Inductor's
    ``_run_in_child_subprocess`` does, minus the unconditional cache clear
    (pyruntime.outofproc clears when the generation changed)."""
    torch._inductor.metrics.reset()
    return cls._run_in_child(pickled_input, extra_env)


def _send_to_child_async(self: Any, pickled_input: Any) -> "Future[Any]":
    extra_env = {v: os.environ[v] for v in FORWARDED_ENV if v in os.environ}
    return submit_out_of_process(compile_in_child, type(self), pickled_input, extra_env)


class FxSubprocessPatch:
    """An installed :func:`use_pyruntime_fx_subprocess`; ``restore()`` (or
    leaving the ``with`` block) puts the previous mode and sender back."""

    def __init__(self) -> None:
        from torch._inductor.compile_fx_subproc import _SubprocessFxCompile

        self._cls = _SubprocessFxCompile
        self._saved_send = _SubprocessFxCompile.__dict__["_send_to_child_async"]
        self._saved_mode = _cfx.fx_compile_mode
        self.active = False

    def install(self) -> "FxSubprocessPatch":
        self._cls._send_to_child_async = _send_to_child_async
        _cfx.fx_compile_mode = _cfx.FxCompileMode.SUBPROCESS
        self.active = True
        return self

    def restore(self) -> None:
        global _active
        with _lock:
            if not self.active:
                return
            self._cls._send_to_child_async = self._saved_send
            _cfx.fx_compile_mode = self._saved_mode
            self.active = False
            if _active is self:
                _active = None

    def __enter__(self) -> "FxSubprocessPatch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


_lock = threading.Lock()
_active: FxSubprocessPatch | None = None


def use_pyruntime_fx_subprocess() -> FxSubprocessPatch:
    """Compile FX graphs in pyruntime's out-of-process child (Inductor's
    subprocess FX-compile mode on our pool). Returns the patch: call
    ``restore()`` or use it as a context manager. Graphs Inductor cannot
    serialise still compile in-process, as in Inductor's own mode. Raises
    RuntimeError if already installed."""
    global _active
    with _lock:
        if _active is not None:
            raise RuntimeError("use_pyruntime_fx_subprocess() is already in effect; restore() it first")
        _active = FxSubprocessPatch().install()
        return _active
