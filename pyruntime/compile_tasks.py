"""The pieces of a Triton build that run inside a compile worker.

Three functions, each small and each safe to call in a fresh worker process:

``reload_python_module(key, path)``
    Loads generated kernel source (a ``.py`` file written by a code generator
    or kept in a launcher's repository) as a new module named
    ``pyruntime.compile_tasks.<key>``. The file is compiled with
    ``dont_inherit=True`` so the ``from __future__`` flags of *this* module
    never leak into generated code. A syntax error or an exception raised
    while the module body runs becomes one ``RuntimeError`` whose message is
    ``"Failed to import {path}\\n{ExcType}: {message}"``, raised ``from None``:
    the caller (often a process on the other side of a pipe) gets the file
    and the reason, not a traceback through this loader.

``set_triton_ptxas_path()``
    Once per process: when ``TRITON_PTXAS_PATH`` is unset and a ``ptxas``
    is shipped next to this package (``pyruntime/bin/ptxas``), point Triton
    at it, so that a pinned ptxas is used instead of whatever Triton finds.
    An existing setting is never touched; a shipped file that is not an
    executable is reported with a warning and ignored.

``worker_compile_triton(load_kernel, extra_env, extra_config)``
    The job a pool worker runs: apply the caller's environment (kept for the
    life of the worker, as the cache directory must be) and Triton ``knobs``
    overrides (restored afterwards), build the kernel, and return it with the
    elapsed microseconds. ``load_kernel()`` returns any object with a
    ``precompile()`` method (and optionally ``prepare_for_pickle()``, called
    before the object travels back). Every build is logged on the
    ``pyruntime.compile_tasks`` logger, success or failure, and ``linecache``
    is cleared afterwards since workers live long and Triton reads kernel
    source through it.

Nothing here imports triton at module level: ``import pyruntime`` must stay
light and the worker imports triton on its first build (or in its pool
initializer).
"""

from __future__ import annotations

import functools
import linecache
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Protocol, TypeVar

__all__ = [
    "BUNDLED_PTXAS",
    "Compilable",
    "reload_python_module",
    "set_triton_ptxas_path",
    "warm_triton",
    "worker_compile_triton",
]

log = logging.getLogger(__name__)

# Where a release may ship a pinned ptxas. Read at call time (not import
# time) so a launcher can point it elsewhere before the first build.
BUNDLED_PTXAS: Path = Path(__file__).absolute().parent / "bin" / "ptxas"


class Compilable(Protocol):
    """What ``load_kernel()`` must return for :func:`worker_compile_triton`."""

    def precompile(self) -> Any: ...


K = TypeVar("K", bound=Compilable)


def reload_python_module(key: str, path: str | os.PathLike[str], set_sys_modules: bool = True) -> ModuleType:
    """Execute the Python file at ``path`` as a fresh module ``pyruntime.compile_tasks.<key>``.

    The module gets ``__file__ = path`` and ``key = key``. With
    ``set_sys_modules`` it is registered in ``sys.modules`` (replacing an
    earlier load under the same key), which Triton and pickle need to find
    functions defined in it by module name.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        code = compile(text, path, "exec", dont_inherit=True)
    except Exception as e:
        raise RuntimeError(f"Failed to import {path}\n{type(e).__name__}: {e}") from None
    mod = ModuleType(f"{__name__}.{key}")
    mod.__file__ = path
    mod.key = key  # type: ignore[attr-defined]
    try:
        exec(code, mod.__dict__, mod.__dict__)
    except Exception as e:
        # An ImportError (or anything else) raised by the module body reads
        # the same as a syntax error: file, type, message, no chained trace.
        raise RuntimeError(f"Failed to import {path}\n{type(e).__name__}: {e}") from None
    if set_sys_modules:
        sys.modules[mod.__name__] = mod
    return mod


@functools.cache
def set_triton_ptxas_path() -> None:
    """Point ``TRITON_PTXAS_PATH`` at the shipped ptxas, once per process.

    Does nothing when the variable is already set (even to an empty string)
    or when no ptxas is shipped. Warns, and leaves the variable unset, when
    the shipped path exists but is not an executable file.
    """
    if os.environ.get("TRITON_PTXAS_PATH") is not None:
        return
    ptxas = BUNDLED_PTXAS
    if not ptxas.exists():
        return
    if ptxas.is_file() and os.access(ptxas, os.X_OK):
        os.environ["TRITON_PTXAS_PATH"] = str(ptxas)
    else:
        warnings.warn(f"{ptxas} exists but is not an executable", RuntimeWarning, stacklevel=2)


_PROBE_SOURCE = """
import triton
import triton.language as tl


@triton.jit
def pyruntime_probe(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + 1, mask=offs < n)
"""

_WARM: dict[str, float] = {}


def warm_triton(probe_target: tuple[str, int | str, int] | None = ("cuda", 90, 32)) -> float:
    """Pay Triton's per-process start-up costs now; return the seconds spent.

    Imports triton and its backends, computes ``triton_key()`` (a hash of
    libtriton, the largest cost) and, with ``probe_target``, builds a tiny
    kernel for it into a throw-away cache so that LLVM, MLIR and the
    assembler are loaded. Done once per process. It leaves no thread running,
    so the SubprocPool sidecar can do it before forking its workers, which
    then start warm (see ``pyruntime._triton_preload``).
    """
    if "done" in _WARM:
        return 0.0
    start = time.perf_counter()
    set_triton_ptxas_path()
    try:
        import triton
        from triton.runtime.cache import triton_key

        triton_key()
        if probe_target is not None:
            _probe_compile(triton, probe_target)
    except Exception as e:  # warming is an optimisation: a real build reports real errors
        log.debug("warming triton failed: %s: %s", type(e).__name__, e)
    _WARM["done"] = time.perf_counter() - start
    return _WARM["done"]


def _probe_compile(triton: Any, probe_target: tuple[str, int | str, int]) -> None:
    import shutil
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tmp = tempfile.mkdtemp(prefix="pyruntime-warm-")
    saved = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = tmp
    try:
        src_path = os.path.join(tmp, "probe.py")
        with open(src_path, "w", encoding="utf-8") as f:
            f.write(_PROBE_SOURCE)
        mod = reload_python_module("warm_probe", src_path, set_sys_modules=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            triton.compile(
                ASTSource(mod.pyruntime_probe, {"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                          constexprs={"BLOCK": 128}),
                target=GPUTarget(*probe_target), options={"num_warps": 4},
            )
    finally:
        if saved is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)
        linecache.clearcache()


def _knob_sections(extra_config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Normalise ``{"compilation.always_compile": True}`` and
    ``{"compilation": {"always_compile": True}}`` to ``{section: {name: value}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in extra_config.items():
        if isinstance(value, Mapping):
            for name, v in value.items():
                out.setdefault(key, {})[name] = v
        elif "." in key:
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = value
        else:
            raise ValueError(
                f"extra_config key {key!r} must be 'section.knob' (for example 'compilation.always_compile')"
            )
    return out


class _PatchedKnobs:
    """Apply Triton ``knobs`` overrides for the duration of one build."""

    def __init__(self, extra_config: Mapping[str, Any]) -> None:
        self._sections = _knob_sections(extra_config) if extra_config else {}
        self._saved: list[tuple[Any, dict[str, Any], dict[str, str | None]]] = []

    def __enter__(self) -> None:
        if not self._sections:
            return
        from triton import knobs  # lazy: triton is heavy

        for section_name, values in self._sections.items():
            section = getattr(knobs, section_name, None)
            if section is None or not hasattr(section, "knob_descriptors"):
                raise ValueError(f"extra_config: triton.knobs has no section {section_name!r}")
            known = set(type(section).__dict__) | set(getattr(type(section), "__annotations__", {}))
            for name in values:
                if name.startswith("_") or name not in known:
                    raise ValueError(f"extra_config: triton.knobs.{section_name} has no knob {name!r}")
            # Setting a knob may also export its environment variable, so
            # remember both the instance overrides and those variables.
            env_keys = [d.key for d in section.knob_descriptors.values()]
            self._saved.append((section, dict(section.__dict__), {k: os.environ.get(k) for k in env_keys}))
            for name, value in values.items():
                setattr(section, name, value)

    def __exit__(self, *exc: object) -> None:
        for section, attrs, env in reversed(self._saved):
            section.__dict__.clear()
            section.__dict__.update(attrs)
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._saved.clear()


def _log_build(kernel: object, elapsed_us: int | None, fail: str | None) -> None:
    name = getattr(kernel, "label", None) or getattr(kernel, "name", None) or type(kernel).__name__
    # Quiet by default (the caller gets the outcome anyway); enable the
    # pyruntime.compile_tasks logger to see every build.
    if fail is None:
        log.debug("built triton kernel %s in %.1f ms (pid %d)", name, (elapsed_us or 0) / 1000, os.getpid())
    else:
        log.info("failed to build triton kernel %s (pid %d): %s", name, os.getpid(), fail)


def worker_compile_triton(
    load_kernel: Callable[[], K],
    extra_env: Mapping[str, str],
    extra_config: Mapping[str, Any],
) -> tuple[K, int]:
    """Build one kernel in this (worker) process; return it and the microseconds taken.

    ``extra_env`` is applied to ``os.environ`` and stays (a worker serves one
    cache directory at a time); ``extra_config`` patches ``triton.knobs``
    (keys ``"section.knob"`` or ``{section: {knob: value}}``) only while the
    kernel builds. The time covers ``load_kernel()`` and ``precompile()``.
    Exceptions propagate after being logged.
    """
    set_triton_ptxas_path()
    os.environ.update(extra_env)
    fail: str | None = None
    kernel: Any = None
    elapsed_us: int | None = None
    try:
        with _PatchedKnobs(extra_config):
            start_ns = time.perf_counter_ns()
            kernel = load_kernel()
            kernel.precompile()
            elapsed_us = (time.perf_counter_ns() - start_ns) // 1000
        prepare = getattr(kernel, "prepare_for_pickle", None)
        if prepare is not None:
            prepare()
        # Workers are long-lived and Triton reads kernel source through
        # linecache: drop those copies once the kernel is built.
        linecache.clearcache()
        return kernel, elapsed_us
    except Exception as e:
        fail = f"{type(e).__name__}: {e}"
        raise
    finally:
        _log_build(kernel if kernel is not None else load_kernel, elapsed_us, fail)
