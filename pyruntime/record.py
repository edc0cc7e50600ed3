"""Record the kernels a program really launches, as a kernel list.

::

    python -m pyruntime record -o kernels.toml -- python app.py --serve
    python -m pyruntime precompile kernels.toml --target cuda:90 --bundle kernels.prtb
    python -m pyruntime precompile kernels.toml --target cuda:100 ...   # on any CPU machine

or in code::

    with pyruntime.record_launches("kernels.toml"):
        warm_up()

Every distinct specialisation Triton's JIT compiles *or loads* while
recording (each autotune config the autotuner tries included) becomes a
kernel-list entry (docs/KERNELS.md): the function as ``module:qualname``
(or its source file when the module is not importable as such), the
argument types, every constexpr value (``None`` as ``none = [...]``), the
options that differ from the target's defaults (``num_warps`` and
``num_stages`` always), the exact divisibility, and ``fn_hash`` (the
function's code hash, which precompile checks). Precompiling the list for
the recorded target gives exactly the cache keys the launches used; built
for another target, the kernels a launch there will look up.

The hook is ``triton.knobs.runtime.jit_post_compile_hook``, called by the JIT
after it compiled or loaded a kernel its in-memory cache did not hold: start
recording before the first launch. A kernel that cannot be written as an
entry (defined inside a function, a ``@jit`` function or tuple as an
argument) is skipped and listed in :attr:`LaunchRecorder.skipped`.

The file. Entries are merged into an existing file (TOML or JSON, by
suffix) under a file lock, deduplicated against what it lists (variants and
defaults applied), and the file is written atomically, so several processes
can record into one file at once. The file is rewritten in canonical form:
comments are not kept (keep hand-written lists in their own file). Each new
entry is written as soon as it is seen (``write_through``), so a killed
program loses nothing.

``PYRUNTIME_RECORD=path``: importing this module starts recording into
``path`` for the whole process, at once when Triton is already imported,
else right after ``import triton`` (a one-shot post-import hook on
``sys.meta_path``; Triton is not imported early). ``python -m pyruntime
record`` sets it and puts a ``sitecustomize`` shim on ``PYTHONPATH`` that
imports this module in every Python process of the command
(:mod:`pyruntime._cli_record`).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import logging
import os
import re
import sys
import threading
from typing import Any, Iterable

from ._atomic import write_atomic
from .kernels import KernelSpec, KernelSpecError, parse_kernel_list, parse_target
from .specialize import Specialisation, jit_hook_inputs

__all__ = ["ENV_VAR", "LaunchRecorder", "merge_into_file", "record_launches", "render_kernel_list",
           "spec_from_specialisation"]

log = logging.getLogger(__name__)

ENV_VAR = "PYRUNTIME_RECORD"
ALWAYS_OPTIONS = ("num_warps", "num_stages")
HEADER = ("# Kernel list recorded by `python -m pyruntime record` (docs/KERNELS.md).\n"
          "# Recording again merges new launches in and rewrites this file: comments are not kept.\n")


# ------------------------------------------------------------ one launch -> one entry


def _module_root(module: Any, name: str) -> str | None:
    """The ``sys.path`` directory ``name`` is importable from, when its file
    lies where the module name says (not an exec'd or generated module)."""
    if name == "__main__" or getattr(module, "__spec__", None) is None:
        return None
    origin = getattr(module, "__file__", None)
    if not origin:
        return None
    path = os.path.abspath(origin)
    parts = name.split(".")
    stem, _ = os.path.splitext(path)
    if os.path.basename(stem) == "__init__":
        stem = os.path.dirname(stem)
    for part in reversed(parts):
        if os.path.basename(stem) != part:
            return None
        stem = os.path.dirname(stem)
    return stem


def _in_installation(path: str) -> bool:
    roots = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    path = os.path.abspath(path)
    return any(path == r or path.startswith(r + os.sep) for r in roots)


def _resolves_to(obj: Any, qualname: str, fn: Any) -> bool:
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    for _ in range(8):  # autotune / heuristics wrappers hold the jitted function in .fn
        if obj is fn:
            return True
        obj = getattr(obj, "fn", None)
    return False


def spec_from_specialisation(rec: Specialisation, fn: Any, options: Any, defaults: Any,
                             ) -> tuple[KernelSpec | None, str | None, dict[str, Any]]:
    """``(spec, python_path_root, full_options)`` for one recorded launch, or
    ``(None, reason, {})`` when a kernel list cannot express it."""
    if rec.unsupported:
        return None, f"{rec.function}: {'; '.join(rec.unsupported)}", {}
    params = {p.name: p for p in fn.params}
    odd = [n for n in rec.unspecialised if n in params and not params[n].do_not_specialize]
    if odd:  # an annotated int launched as 1: typed, yet without the attribute entry a spec would give it
        return None, (f"{rec.function}: {', '.join(odd)} launched as 1 with a type annotation: the JIT gives it no "
                      f"attribute entry, which a kernel list cannot express"), {}
    module_name = getattr(fn, "module", None) or getattr(fn.fn, "__module__", "")
    qualname = fn.fn.__qualname__
    module = sys.modules.get(module_name)
    root = _module_root(module, module_name) if module is not None else None
    fields: dict[str, Any] = {}
    pypath = None
    if root is not None and "<locals>" not in qualname and _resolves_to(module, qualname, fn):
        fields["fn"] = f"{module_name}:{qualname}"
        pypath = None if _in_installation(root) else root
    elif "." not in qualname and rec.source and os.path.isfile(rec.source):
        fields["source"] = rec.source
        fields["function"] = qualname
    else:
        return None, (f"{module_name}:{qualname} is neither importable by that name nor a top-level function of "
                      f"a source file"), {}
    sig = {n: ty for n, ty in rec.signature.items() if ty != "constexpr"}
    consts = dict(rec.constexprs)
    full = {k: v for k, v in vars(options).items() if k != "extern_libs"}
    base = vars(defaults)
    opts = {k: v for k, v in full.items() if k in ALWAYS_OPTIONS or v != base.get(k)}
    if "extern_libs" in vars(options) and vars(options)["extern_libs"] != base.get("extern_libs"):
        opts["extern_libs"] = vars(options)["extern_libs"]
    opts = {k: _plain(v) for k, v in opts.items()}
    try:
        spec = KernelSpec(signature=sig, constexprs=consts, options=opts, target=rec.target or "cuda:90",
                          divisibility=list(rec.divisibility), fn_hash=rec.fn_hash, **fields)
    except KernelSpecError as e:
        return None, f"{rec.function}: {e}", {}
    return spec, pypath, {k: _plain(v) for k, v in full.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _identity(spec: KernelSpec) -> str:
    """What makes two entries the same build: the spec's key without its search path."""
    d = json.loads(spec.key())
    d.pop("python_path", None)
    return json.dumps(d, sort_keys=True)


# ------------------------------------------------------------ the file


def _load_doc(path: str) -> tuple[dict[str, Any], str]:
    fmt = "json" if path.lower().endswith(".json") else "toml"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}, fmt
    if not text.strip():
        return {}, fmt
    if fmt == "json":
        doc = json.loads(text)
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]

        doc = tomllib.loads(text)
    if not isinstance(doc, dict):
        raise KernelSpecError(f"{path}: the document must be a table/object")
    return doc, fmt


def _relpath(path: str, base: str) -> str:
    rel = os.path.relpath(path, base)
    return rel if not rel.startswith(os.pardir + os.sep + os.pardir + os.sep + os.pardir) else path


def _entry(spec: KernelSpec, base: str, file_target: str, full_options: dict[str, Any],
           default_options: dict[str, Any]) -> dict[str, Any]:
    e: dict[str, Any] = {}
    if spec.fn:
        e["fn"] = spec.fn
    else:
        e["source"] = _relpath(spec.source or "", base)
        e["function"] = spec.function
    if spec.fn_hash:
        e["fn_hash"] = spec.fn_hash
    if spec.signature:
        e["signature"] = dict(spec.signature)
    consts = {k: v for k, v in spec.constexprs.items() if v is not None}
    none = [k for k, v in spec.constexprs.items() if v is None]
    if consts:
        e["constexprs"] = consts
    if none:
        e["none"] = none
    opts = dict(spec.options)
    for k in default_options:  # the file's [defaults] must not change a recorded build
        if k not in opts and k in full_options:
            opts[k] = full_options[k]
    e["options"] = opts
    e["divisibility"] = list(spec.divisibility)
    if spec.target != file_target:
        e["target"] = spec.target
    return e


def merge_into_file(path: str | os.PathLike[str], entries: Iterable[tuple[KernelSpec, str | None, dict[str, Any]]],
                    ) -> tuple[int, int]:
    """Merge recorded ``(spec, python_path_root, full_options)`` entries into
    the kernel list at ``path`` (created when missing), under a file lock,
    written atomically. Returns ``(specs in the file, entries added)``."""
    from filelock import FileLock

    path = os.path.abspath(os.fspath(path))
    base = os.path.dirname(path)
    os.makedirs(base, exist_ok=True)
    with FileLock(path + ".lock"):
        doc, fmt = _load_doc(path)
        existing: list[KernelSpec] = []
        if doc.get("kernels"):
            text = json.dumps(doc)
            existing = parse_kernel_list(text, "json", origin=path, base_dir=base)
        seen = {_identity(s) for s in existing}
        kernels = list(doc.get("kernels") or [])
        file_target = doc.get("target")
        pypath = list(doc.get("python_path") or [])
        pyabs = {os.path.normpath(os.path.join(base, p)) for p in pypath}
        defaults = doc.get("defaults") or {}
        default_options = defaults.get("options") or {}
        added = 0
        for spec, root, full in entries:
            ident = _identity(spec)
            if ident in seen:
                continue
            seen.add(ident)
            if file_target is None:
                file_target = spec.target
            if root and os.path.normpath(root) not in pyabs:
                pyabs.add(os.path.normpath(root))
                pypath.append(_relpath(root, base))
            kernels.append(_entry(spec, base, str(parse_target(file_target)), full, default_options))
            added += 1
        if not added and os.path.exists(path):
            return len(existing), 0
        new_doc: dict[str, Any] = {"version": doc.get("version", 1), "target": file_target or "cuda:90"}
        if pypath:
            new_doc["python_path"] = pypath
        for k, v in doc.items():
            if k not in ("version", "target", "python_path", "kernels"):
                new_doc[k] = v
        new_doc["kernels"] = kernels
        text = (json.dumps(new_doc, indent=1) + "\n") if fmt == "json" else render_kernel_list(new_doc)
        # what is written must read back: never leave a file precompile refuses
        total = parse_kernel_list(text, fmt, origin=path, base_dir=base)
        write_atomic(path, text.encode("utf-8"))
    return len(total), added


# ------------------------------------------------------------ TOML


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(v)
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(r, r)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x, where) for x in v) + "]"
    if isinstance(v, dict):
        if any(x is None for x in v.values()):
            raise KernelSpecError(f"{where}: TOML cannot hold None (use none = [...] for constexprs)")
        return "{ " + ", ".join(f"{_key(k)} = {_value(x, where)}" for k, x in v.items()) + " }" if v else "{}"
    raise KernelSpecError(f"{where}: cannot write {v!r} in TOML")


def _table_lines(d: dict[str, Any], where: str) -> list[str]:
    out = []
    for k, v in d.items():
        if k == "constexprs" and isinstance(v, dict) and any(x is None for x in v.values()):
            none = [n for n, x in v.items() if x is None]
            rest = {n: x for n, x in v.items() if x is not None}
            if rest:
                out.append(f"constexprs = {_value(rest, where)}")
            if "none" not in d:
                out.append(f"none = {_value(none, where)}")
            continue
        out.append(f"{_key(k)} = {_value(v, f'{where}.{k}')}")
    return out


def render_kernel_list(doc: dict[str, Any]) -> str:
    """A kernel-list document as TOML (the kernel-list schema only)."""
    lines = [HEADER.rstrip("\n")]
    tables = {k: v for k, v in doc.items() if isinstance(v, dict) or k == "kernels"}
    for k, v in doc.items():
        if k not in tables:
            lines.append(f"{_key(k)} = {_value(v, k)}")
    for k, v in tables.items():
        if k == "kernels":
            continue
        lines += ["", f"[{_key(k)}]"] + _table_lines(v, k)
    for i, kernel in enumerate(doc.get("kernels") or []):
        variants = kernel.get("variants")
        body = {k: v for k, v in kernel.items() if k != "variants"}
        lines += ["", "[[kernels]]"] + _table_lines(body, f"kernels[{i}]")
        for j, var in enumerate(variants or []):
            lines += ["", "[[kernels.variants]]"] + _table_lines(var, f"kernels[{i}].variants[{j}]")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ the recorder


class LaunchRecorder:
    """Records launches into a kernel-list file while started (see the
    module docstring); a context manager. ``specs`` lists what this recorder
    saw, in order; ``skipped`` the launches it could not write as entries,
    with the reason; ``errors`` anything that went wrong writing."""

    def __init__(self, path: str | os.PathLike[str], *, write_through: bool = True) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.write_through = write_through
        self.specs: list[KernelSpec] = []
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self._entries: list[tuple[KernelSpec, str | None, dict[str, Any]]] = []
        self._pending: list[tuple[KernelSpec, str | None, dict[str, Any]]] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._prev: Any = None
        self._hook = self._post_compile_hook
        self._installed = False
        self._active = False

    def start(self) -> LaunchRecorder:
        from triton import knobs

        if not self._installed:
            self._prev = knobs.runtime.jit_post_compile_hook
            knobs.runtime.jit_post_compile_hook = self._hook
            self._installed = True
        self._active = True
        return self

    def stop(self) -> None:
        """Stop recording and write what is not written yet."""
        self._active = False
        if self._installed:
            from triton import knobs

            if knobs.runtime.jit_post_compile_hook is self._hook:
                knobs.runtime.jit_post_compile_hook = self._prev
            self._installed = False
        self.flush()

    def __enter__(self) -> LaunchRecorder:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def flush(self) -> tuple[int, int]:
        """Merge the entries not yet written into the file: ``(specs in file, added)``."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return 0, 0
        try:
            return merge_into_file(self.path, pending)
        except Exception as e:
            with self._lock:
                self._pending = pending + self._pending
            self.errors.append(f"{type(e).__name__}: {e}")
            log.warning("pyruntime record: could not write %s: %s: %s", self.path, type(e).__name__, e)
            return 0, 0

    def _post_compile_hook(self, **kw: Any) -> Any:
        prev = self._prev
        result = prev(**kw) if prev is not None else None
        if self._active:
            try:
                self.record(kw["fn"].jit_function, kw["compile"])
            except Exception as e:  # recording must never break a launch
                self.errors.append(f"{type(e).__name__}: {e}")
                log.warning("pyruntime record: %s: %s", type(e).__name__, e, exc_info=True)
        return result

    def record(self, fn: Any, compile_info: dict[str, Any]) -> KernelSpec | None:
        """Record one JIT specialisation (what the hook gets)."""
        target, backend, options = jit_hook_inputs(compile_info)
        rec = Specialisation.from_parts(fn, compile_info["signature"], compile_info["constants"],
                                        compile_info["configs"][0], dict(vars(options)), target)
        spec, root, full = spec_from_specialisation(rec, fn, options, backend.parse_options({}))
        if spec is None:
            with self._lock:
                if root not in self.skipped:
                    self.skipped.append(root or "?")
            log.warning("pyruntime record: skipped %s", root)
            return None
        ident = _identity(spec)
        with self._lock:
            if ident in self._seen:
                return spec
            self._seen.add(ident)
            self.specs.append(spec)
            self._entries.append((spec, root, full))
            self._pending.append((spec, root, full))
        if self.write_through:
            self.flush()
        return spec


def record_launches(path: str | os.PathLike[str], *, write_through: bool = True) -> LaunchRecorder:
    """Start recording every kernel Triton's JIT compiles or loads into the
    kernel list at ``path`` (see the module docstring); returns the
    recorder, a context manager that stops and writes on exit."""
    return LaunchRecorder(path, write_through=write_through).start()


# ------------------------------------------------------------ PYRUNTIME_RECORD


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` once, right after ``name`` has been imported."""

    def __init__(self, name: str, callback: Any) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenCall(spec.loader, self.callback)
        return spec


class _ThenCall(importlib.abc.Loader):
    def __init__(self, inner: Any, callback: Any) -> None:
        self._inner = inner
        self._callback = callback

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        # the module keeps its own loader; this one was only a way in
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._inner
        module.__loader__ = self._inner
        self._callback(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_FROM_ENV: list[LaunchRecorder] = []


def _start_from_env(_module: Any = None) -> None:
    path = os.environ.get(ENV_VAR)
    if not path or _FROM_ENV:
        return
    try:
        _FROM_ENV.append(record_launches(path))
    except Exception as e:
        print(f"pyruntime record: not recording ({type(e).__name__}: {e})", file=sys.stderr)


def install_from_env() -> None:
    """Honour ``PYRUNTIME_RECORD``: record now if Triton is imported, else right after it is."""
    if not os.environ.get(ENV_VAR) or _FROM_ENV:
        return
    triton = sys.modules.get("triton")
    if triton is not None and hasattr(triton, "knobs"):
        _start_from_env()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("triton", _start_from_env))


install_from_env()
