"""Frozen mode: once a launcher is ready, any Triton JIT compile is an error
(or a warning) that names the kernel and says why it missed.

::

    import pyruntime

    pyruntime.freeze()                      # from here on: compile = JITCompileError
    with pyruntime.freeze(mode="warn"):     # or for a block only, warning instead
        serve()

``PYRUNTIME_JIT=error|warn|allow`` in the environment, when set, replaces the
mode given in code, so an operator can turn a frozen launcher to ``warn`` or
``allow`` without a code change (``freeze()`` with no mode uses it, else
``error``).

How it works, with Triton's public hooks only (3.6 to 3.9):

* ``triton.knobs.runtime.jit_cache_hook`` is called by the JIT before it
  builds a kernel its in-memory cache does not hold. That happens both when
  the kernel is then *loaded* from the on-disk Triton cache (a restored
  bundle: allowed) and when it is really *compiled*. The hook receives the
  specialisation (signature, constexprs, attributes, the serialized
  options), so the guard computes the cache key ``triton.compile`` will use
  (``triton.runtime.cache.get_cache_key`` of the same ``ASTSource``,
  backend and options, hashed as ``compile`` hashes it) and asks the cache
  manager for the kernel's metadata group, as ``compile`` does. Found: a
  load, allowed. Not found (or ``TRITON_ALWAYS_COMPILE``): a compile, refused
  *before* it starts by raising :class:`~pyruntime.errors.JITCompileError`
  (mode ``error``) or warned about (:class:`JITCompileWarning`, mode
  ``warn``). The hook raises rather than returning a truthy value: a truthy
  return makes Triton skip the launch silently.
* ``triton.knobs.compilation.listener`` is told of every ``triton.compile``
  and whether it was a cache hit. A compile the guard did not announce (a
  direct ``triton.compile``, as Inductor does, or a cache check that was
  wrong) is reported after the fact: raised in mode ``error``, warned in
  ``warn``. Compiles in other processes (Inductor's compile workers) are not
  seen.

Explaining a miss: the *bundled kernels* are the kernel directories of the
Triton cache (what restored bundles put there) plus the bundles given to
``freeze(bundles=...)``. Those of the same function are compared with the
launch (their ``pyruntime.spec.json``, written by precompile; Triton's own
metadata only where that is missing) and the nearest one's differences are
listed: argument dtype, divisibility, constexpr value, option, target,
Triton version and build, Python ABI, kernel code, Triton's hashed
environment variables. The first line of the message says it all::

    kernel add_kernel[BLOCK=512, num_warps=4, num_stages=3] would compile: nearest bundled add_kernel
    differs in (launch vs bundled): n divisibility 16 vs none, BLOCK 512 vs 1024

Limits: on Triton 3.6 a set ``jit_cache_hook`` makes the JIT serialize the
constexprs before calling it, which fails for a ``@jit`` function passed as
a constexpr (Triton's own code; 3.9 handles it).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import inspect
import json
import logging
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from .errors import JITCompileError
from .specialize import (
    SPEC_FILE,
    Difference,
    Specialisation,
    differences,
    jit_hook_inputs,
    read_spec_record,
)

__all__ = ["ENV_VAR", "Freeze", "JITCompileWarning", "freeze", "jit_mode"]

log = logging.getLogger(__name__)

Mode = Literal["error", "warn", "allow"]
MODES: tuple[str, ...] = ("error", "warn", "allow")
ENV_VAR = "PYRUNTIME_JIT"


class JITCompileWarning(RuntimeWarning):
    """A Triton JIT compile while frozen in mode ``warn``."""


def jit_mode(mode: str | None = None) -> str:
    """The mode in force: ``PYRUNTIME_JIT`` when set, else ``mode``, else ``error``."""
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw:
        if raw not in MODES:
            raise ValueError(f"environment variable {ENV_VAR}={raw!r} is not one of error, warn, allow")
        return raw
    mode = "error" if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"freeze mode must be one of error, warn, allow, not {mode!r}")
    return mode


# ------------------------------------------------------------ the load-or-compile check


@dataclass
class _Probe:
    """What ``triton.compile`` will do for one JIT specialisation."""

    hash: str  # sha256 hex, Triton's CompiledKernel.hash
    cache_key: str  # its directory name (base32)
    loadable: bool
    fn: Any
    compile_info: dict[str, Any]
    target: Any
    options: Any
    why: str = ""  # when not loadable and not simply absent

    @functools.cached_property
    def record(self) -> Specialisation:
        """The launch's specialisation as data (only built for a miss)."""
        info = self.compile_info
        return Specialisation.from_parts(self.fn, info["signature"], info["constants"], info["configs"][0],
                                         dict(self.options.__dict__), self.target, self.cache_key)


def _base32(hex_digest: str) -> str:
    return base64.b32encode(bytes.fromhex(hex_digest)).decode("ascii").rstrip("=")


@functools.lru_cache(maxsize=1)
def _compile_adds_stage_key() -> bool:
    """Whether this Triton's ``compile`` appends the stages-inspection hook's
    key to the cache key (3.9 does, 3.6 does not)."""
    try:
        from triton.compiler import compiler

        return "inspect_stages_key" in inspect.getsource(compiler.compile)
    except (OSError, TypeError, AttributeError):
        return False


def probe(fn: Any, compile_info: dict[str, Any]) -> _Probe:
    """Compute, from a JIT hook's arguments, the cache key ``triton.compile``
    will use and whether the Triton cache already holds that kernel."""
    from triton import knobs
    from triton.compiler import ASTSource
    from triton.runtime.cache import get_cache_key, get_cache_manager

    target, backend, options = jit_hook_inputs(compile_info)
    src = ASTSource(fn, compile_info["signature"], compile_info["constants"], compile_info["configs"][0])
    # as triton.compile does with the options it is given
    options = backend.parse_options(dict(options.__dict__, **src.parse_options()))
    try:
        from triton._C.libtriton import get_cache_invalidating_env_vars

        env_vars = get_cache_invalidating_env_vars()
    except ImportError:
        env_vars = {}
    key = get_cache_key(src, backend, options, env_vars=env_vars)
    stages_hook = getattr(knobs.runtime, "add_stages_inspection_hook", None)
    if stages_hook is not None and _compile_adds_stage_key():
        key += stages_hook()[0]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    cache_key = _base32(digest)

    def result(loadable: bool, why: str = "") -> _Probe:
        return _Probe(digest, cache_key, loadable, fn, compile_info, target, options, why)

    if getattr(knobs.compilation, "always_compile", False):
        return result(False, "TRITON_ALWAYS_COMPILE is set")
    metadata_file = f"{src.name[:150]}.json"
    manager_class = getattr(knobs.cache, "manager_class", None)
    if manager_class is None:
        # the file cache: look before asking, so a miss leaves no empty directory behind
        cache_dir = knobs.cache.dir
        if not cache_dir or not os.path.isdir(os.path.join(cache_dir, cache_key)):
            return result(False)
    group = get_cache_manager(digest).get_group(metadata_file)
    return result(bool(group and group.get(metadata_file)))


# ------------------------------------------------------------ bundled kernels


@dataclass
class _Candidate:
    record: Specialisation
    where: str


def _cache_candidates(cache_dir: str, name: str) -> list[_Candidate]:
    metadata_file = f"{name[:150]}.json"
    out = []
    try:
        with os.scandir(cache_dir) as it:
            dirs = [e.path for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith("tmp.")]
    except OSError:
        return out
    for d in dirs:
        if not os.path.exists(os.path.join(d, metadata_file)):
            continue
        rec = read_spec_record(d)
        if rec is not None:
            rec.cache_key = rec.cache_key or os.path.basename(d)
            out.append(_Candidate(rec, cache_dir))
    return out


def _bundle_candidates(bundles: list[tuple[Any, str]], name: str) -> list[_Candidate]:
    metadata_file = f"{name[:150]}.json"
    out = []
    for b, where in bundles:
        for k in getattr(b, "kernel_artifacts", ()):
            files = {a.filename: a for a in k.artifacts}
            if metadata_file not in files:
                continue
            rec = None
            if SPEC_FILE in files:
                try:
                    rec = Specialisation.from_dict(json.loads(bytes(files[SPEC_FILE].payload)))
                except (ValueError, TypeError):
                    rec = None
            if rec is None:
                try:
                    rec = Specialisation.from_triton_metadata(json.loads(bytes(files[metadata_file].payload)))
                except (ValueError, TypeError):
                    continue
            rec.cache_key = rec.cache_key or k.kernel_hash
            if not rec.triton_version and getattr(b, "triton_version", None):
                rec.triton_version = b.triton_version
            if not rec.triton_abi and getattr(b, "triton_abi", None):
                rec.triton_abi = b.triton_abi
            out.append(_Candidate(rec, where))
    return out


def _score(launch: Specialisation, c: _Candidate, diffs: list[Difference]) -> tuple[int, ...]:
    r = c.record
    same_fn = not (launch.function and r.function and launch.function.split(":")[-1] != r.function.split(":")[-1])
    return (0 if same_fn else 1, 0 if r.complete else 1, len(diffs), 0 if r.target == launch.target else 1)


@dataclass
class Explanation:
    """A launch that would compile, and the nearest bundled kernel of its function."""

    launch: Specialisation
    nearest: Specialisation | None = None
    where: str = ""
    differences: list[Difference] = field(default_factory=list)
    candidates: int = 0
    searched: list[str] = field(default_factory=list)
    holder: str = ""  # a bundle holding this very kernel (not restored)


def explain(launch: Specialisation, cache_dir: str | None, bundles: Iterable[tuple[Any, str]] = ()) -> Explanation:
    """Compare ``launch`` with every bundled kernel of its function (in
    ``cache_dir`` and in ``bundles``, pairs of a loaded bundle and a label);
    the nearest wins."""
    cands: list[_Candidate] = []
    searched = []
    if cache_dir:
        cands += _cache_candidates(cache_dir, launch.name)
        searched.append(f"Triton cache {cache_dir}")
    bl = list(bundles)
    if bl:
        cands += _bundle_candidates(bl, launch.name)
        searched.append(f"{len(bl)} bundle(s)")
    exact = [c for c in cands if c.record.cache_key == launch.cache_key]
    cands = [c for c in cands if c.record.cache_key != launch.cache_key]
    ex = Explanation(launch, candidates=len(cands), searched=searched)
    if exact:  # a bundle holds this very kernel: it was not restored
        ex.holder = exact[0].where
        return ex
    best: tuple[tuple[int, ...], _Candidate, list[Difference]] | None = None
    for c in cands:
        diffs = differences(launch, c.record)
        score = _score(launch, c, diffs)
        if best is None or score < best[0]:
            best = (score, c, diffs)
    if best is not None:
        ex.nearest, ex.where, ex.differences = best[1].record, best[1].where, best[2]
    return ex


def format_miss(ex: Explanation, mode: str, probe_why: str = "") -> str:
    """The message: one self-contained line, then the details."""
    launch = ex.launch
    head = f"kernel {launch.short()} would compile (frozen, {ENV_VAR}={mode})"
    if probe_why:
        head += f" because {probe_why}"
    n = ex.nearest
    if ex.holder:
        first = (f"{head}: {ex.holder} holds this very kernel (cache key {launch.cache_key}) but the Triton cache "
                 f"does not: restore the bundle before the first launch (python -m pyruntime bundle restore)")
    elif n is None:
        first = f"{head}: no bundled kernel of {launch.name} ({'; '.join(ex.searched) or 'nothing searched'})"
    elif ex.differences:
        shown = ", ".join(d.short() for d in ex.differences[:6])
        more = f", and {len(ex.differences) - 6} more" if len(ex.differences) > 6 else ""
        first = f"{head}: nearest bundled {n.name} differs in (launch vs bundled): {shown}{more}"
    elif not n.complete:
        first = (f"{head}: the bundled {n.name} kernels have no {SPEC_FILE} (not built by pyruntime precompile), "
                 f"so how they differ is unknown")
    else:
        first = (f"{head}: nearest bundled {n.name} matches every recorded field but has another cache key "
                 f"({launch.cache_key} vs {n.cache_key}): something Triton hashes that pyruntime does not record")
    lines = [first]
    lines.append(f"  launch:  {launch.function} for {launch.target}, Triton {launch.triton_version} "
                 f"({launch.triton_abi}), cache key {launch.cache_key}")
    lines.append(f"           {launch.args_text()}")
    if n is not None:
        lines.append(f"  nearest: {n.cache_key} in {ex.where}, for {n.target}, Triton {n.triton_version} "
                     f"({n.triton_abi or 'ABI unknown'}); {ex.candidates} bundled kernel(s) of {launch.name} compared")
        if n.complete:
            lines.append(f"           {n.args_text()}")
    if ex.differences:
        lines.append("  differences (launch vs bundled):")
        lines.extend(f"    {d.short()}: {d.hint}" for d in ex.differences)
    lines.append("  to fix: add this launch to the kernel list (python -m pyruntime record -o kernels.toml -- "
                 "<launcher> records it), precompile and bundle again")
    return "\n".join(lines)


# ------------------------------------------------------------ the guard


def _launch_site() -> tuple[str, int, str]:
    """File, line and module of the first frame outside Triton and pyruntime."""
    f = sys._getframe(1)
    while f is not None:
        mod = f.f_globals.get("__name__", "")
        if not (mod == "triton" or mod.startswith(("triton.", "pyruntime.")) or mod == "pyruntime"):
            return f.f_code.co_filename, f.f_lineno, mod
        f = f.f_back  # type: ignore[assignment]
    return "<unknown>", 0, "<unknown>"


class Freeze:
    """An active freeze (see the module docstring). ``release()`` or leaving
    the ``with`` block ends it; ``misses`` holds every refused or warned
    compile as a :class:`~pyruntime.errors.JITCompileError`."""

    def __init__(self, mode: str | None = None, *, bundles: Iterable[Any] = (),
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.mode = jit_mode(mode)
        self._bundle_args = list(bundles)
        self._bundles: list[tuple[Any, str]] | None = None
        self._cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self.misses: list[JITCompileError] = []
        self._lock = threading.Lock()
        self._announced: set[str] = set()
        self._active = False
        self._installed = False
        self._probe_failed = False
        self._prev_hook: Any = None
        self._prev_listener: Any = None
        self._hook = self._cache_hook
        self._listen = self._listener
        if self.mode != "allow":
            self._install()

    # -- life cycle

    @property
    def active(self) -> bool:
        return self._active

    def _install(self) -> None:
        from triton import knobs

        self._prev_hook = knobs.runtime.jit_cache_hook
        knobs.runtime.jit_cache_hook = self._hook
        self._prev_listener = knobs.compilation.listener
        knobs.compilation.listener = self._listen
        self._active = self._installed = True

    def release(self) -> None:
        """End the freeze: Triton's hooks are put back as they were (or, when
        something hooked in on top meanwhile, this freeze passes through)."""
        if not self._installed:
            return
        from triton import knobs

        self._active = False
        if knobs.runtime.jit_cache_hook is self._hook:
            knobs.runtime.jit_cache_hook = self._prev_hook
        if knobs.compilation.listener is self._listen:
            knobs.compilation.listener = self._prev_listener
        self._installed = False

    def __enter__(self) -> Freeze:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<pyruntime.Freeze mode={self.mode} active={self._active} misses={len(self.misses)}>"

    # -- the hooks

    def _cache_hook(self, **kw: Any) -> Any:
        prev = self._prev_hook
        if prev is not None:
            result = prev(**kw)
            if result:  # the hook before us skips this compile: nothing to guard
                return result
        if not self._active:
            return None
        fn = kw["fn"].jit_function
        try:
            p = probe(fn, kw["compile"])
        except Exception as e:  # never block a launch on our own failure: the listener still sees a compile
            if not self._probe_failed:
                self._probe_failed = True
                log.warning("pyruntime.freeze: cannot compute Triton's cache key for %s here (%s: %s); "
                            "compiles are reported after the fact by the compile listener only",
                            getattr(fn, "__name__", "?"), type(e).__name__, e)
            return None
        if p.loadable:
            return None
        self._refuse(self.explain(p.record, p.why), p.hash)
        return None

    def _listener(self, **kw: Any) -> None:
        prev = self._prev_listener
        if prev is not None:
            prev(**kw)
        if not self._active or kw.get("cache_hit"):
            return
        digest = str((kw.get("metadata") or {}).get("hash", ""))
        with self._lock:
            if digest in self._announced:
                self._announced.discard(digest)
                return
        name = getattr(kw.get("src"), "name", "?")
        key = _base32(digest) if digest else "?"
        msg = (f"kernel {name} was compiled while frozen ({ENV_VAR}={self.mode}), by a path the JIT's cache hook "
               f"does not see (a direct triton.compile, as Inductor does) or against pyruntime's cache check; "
               f"it is now in the Triton cache as {key}")
        self._report(JITCompileError(msg, kernel=name), after=True)

    def explain(self, launch: Specialisation, why: str = "") -> JITCompileError:
        """The error for a launch that would compile (see :func:`explain`)."""
        from triton import knobs

        cache_dir = self._cache_dir or knobs.cache.dir
        ex = explain(launch, cache_dir, self._loaded_bundles())
        return JITCompileError(format_miss(ex, self.mode, why), kernel=launch.name, launch=launch,
                               nearest=ex.nearest, differences=ex.differences)

    def _loaded_bundles(self) -> list[tuple[Any, str]]:
        if self._bundles is None:
            loaded = []
            for i, b in enumerate(self._bundle_args):
                if isinstance(b, (str, os.PathLike)):
                    from .bundle import load_bundle  # the bundle layer only when bundles are given

                    loaded.append((load_bundle(b), f"bundle {os.fspath(b)}"))
                else:
                    loaded.append((b, f"bundles[{i}]"))
            self._bundles = loaded
        return self._bundles

    def _refuse(self, err: JITCompileError, digest: str) -> None:
        if self.mode == "warn":
            with self._lock:
                self._announced.add(digest)
        self._report(err)

    def _report(self, err: JITCompileError, after: bool = False) -> None:
        with self._lock:
            self.misses.append(err)
        if self.mode == "error":
            raise err
        filename, lineno, module = _launch_site()
        # a fresh registry: every miss is shown, not only the first from this line
        warnings.warn_explicit(JITCompileWarning(str(err)), JITCompileWarning, filename, lineno, module=module,
                               registry={})
        log.debug("JIT compile while frozen: %s", str(err).splitlines()[0])


def freeze(mode: str | None = None, *, bundles: Iterable[Any] = (),
           cache_dir: str | os.PathLike[str] | None = None) -> Freeze:
    """Freeze Triton's JIT in this process: from now on a kernel that is
    not in the Triton cache raises :class:`~pyruntime.errors.JITCompileError`
    before it compiles (``mode="error"``, the default), warns
    (``"warn"``), or nothing happens (``"allow"``); ``PYRUNTIME_JIT``, when
    set, replaces ``mode``. Also a context manager that unfreezes on exit.

    ``bundles`` (bundle files or :class:`~pyruntime.TritonBundle` objects)
    are compared with a launch that misses, besides the cache's kernels;
    ``cache_dir`` is where those are looked for (default: Triton's)."""
    return Freeze(mode, bundles=bundles, cache_dir=cache_dir)


__all__ += ["Explanation", "explain", "format_miss", "probe"]
