"""Which Triton kernels to build ahead of time, and for which GPU.

A :class:`KernelSpec` names one ``@triton.jit`` function and everything
Triton needs to build it without launching it: the argument types
(``signature``), the ``tl.constexpr`` values (``constexprs``), the compile
options (``num_warps``, ``num_stages`` and any other option the target's
Triton backend accepts) and a target. Specs are plain data (picklable, JSON
round-trippable); the function itself is only imported inside the compile
worker, so building a list of specs never imports triton.

Targets
-------
``cuda:<sm>``      an NVIDIA architecture: ``cuda:80``, ``cuda:90``, ``cuda:100`` ...
``hip:<gfx>``      an AMD architecture: ``hip:gfx942`` (wave size 64 for gfx9,
                   32 for gfx10+; force one with ``hip:gfx1100:64``)
``local``          the GPU of the machine that compiles (an error when it has none)

A named target compiles on any machine, GPU or not: Triton's backends only
need the target's description (``GPUTarget``) to lower to PTX/cubin or
AMDGCN/hsaco. Whether the AMD backend works without ROCm depends on the
Triton build; a failure is reported per kernel.

The function
------------
Either ``fn = "package.module:qualname"`` (an importable module; add
directories with ``python_path``), or ``source = "path/to/file.py"`` plus
``function = "name"`` for generated code that is not on ``sys.path``: the
file is executed with :func:`pyruntime.compile_tasks.reload_python_module`.
``@triton.autotune``/``@triton.heuristics`` wrappers are unwrapped to the
jitted function; the constexprs and options must then be given explicitly.

Signature conventions
---------------------
Types are Triton's: ``*fp32`` (pointer to fp32), ``*kfp16`` (const pointer),
``i32``, ``i64``, ``u1``, ``fp32``, ``bf16``, ``fp8e4nv``..., and
``constexpr``. Common aliases are accepted and canonicalised (``*float32`` ->
``*fp32``, ``int64`` -> ``i64``, ``bool``/``i1`` -> ``u1``). A constexpr
argument needs no signature entry: naming it in ``constexprs`` is enough,
and a ``tl.constexpr`` parameter with a default value takes that default.
Every other argument needs a type. ``divisibility`` lists arguments that
launches will pass 16-byte aligned / divisible by 16 (what the JIT calls the
``D`` specialisation); they are compiled with ``tt.divisibility = 16``, as
the JIT would, which lets Triton vectorise loads. A constexpr value may be
an int, float, bool, string or ``None``; the string ``"tl.float16"`` (any
``tl.`` dtype) becomes that Triton dtype. An argument a launch passes as
``None`` is compiled by the JIT as the constexpr ``None``: give it the value
``None`` in ``constexprs`` (TOML cannot spell ``None``: list it in
``none = ["bias_ptr"]`` instead; JSON may use either ``null`` or ``none``).
``fn_hash`` (written by ``python -m pyruntime record``) is the function's code
hash where the list was recorded; a build whose function hashes differently
warns, since its kernels would never be found by those launches.

Kernel-list files
-----------------
A launcher keeps the list of kernels it ships in its repository as TOML
(``.toml``, read with :mod:`tomllib`) or JSON (``.json``); both hold the same
structure (docs/KERNELS.md has a full example)::

    version = 1                       # optional; the only version is 1
    target = "cuda:90"                # default target (the CLI's --target overrides)
    python_path = ["src"]             # optional, relative to this file

    [defaults]                        # optional, merged under every kernel
    options = { num_warps = 4 }
    divisibility = ["x_ptr"]          # only names a kernel has are applied

    [[kernels]]
    name = "add_fp32"                 # optional label for reports
    fn = "mypkg.ops:add_kernel"       # or: source = "gen/k.py", function = "k"
    signature = { x_ptr = "*fp32", y_ptr = "*fp32", out_ptr = "*fp32", n = "i32" }
    constexprs = { BLOCK = 1024 }
    options = { num_warps = 8, num_stages = 2 }
    divisibility = ["x_ptr", "y_ptr", "out_ptr"]
    none = ["bias_ptr"]               # arguments launches pass as None

    [[kernels.variants]]              # optional: one spec per variant, each
    constexprs = { BLOCK = 256 }      # merged over the kernel's own fields
    [[kernels.variants]]
    constexprs = { BLOCK = 2048 }
    options = { num_warps = 16 }

Relative ``source`` and ``python_path`` entries are resolved against the
file's directory. Unknown keys are errors (with a "did you mean"), and every
error names the file, the kernel (``kernels[3]``, with its line in TOML)
and the field at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .compile_tasks import reload_python_module
from .errors import PyRuntimeError
from .hashing import hash_bytes

if TYPE_CHECKING:  # pragma: no cover
    from triton.backends.compiler import GPUTarget

__all__ = [
    "KernelSpec",
    "KernelSpecError",
    "Target",
    "TargetError",
    "canonical_type",
    "load_kernel_list",
    "parse_kernel_list",
    "parse_target",
    "resolve_target",
]

FORMAT_VERSION = 1
TARGET_HELP = "cuda:<sm> (e.g. cuda:90), hip:<gfx arch> (e.g. hip:gfx942) or local"


class KernelSpecError(PyRuntimeError, ValueError):
    """A kernel spec or kernel-list file is invalid; the message names the field."""


class TargetError(PyRuntimeError, ValueError):
    """A target string is malformed, or ``local`` was asked for where there is no GPU."""


# ---------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A compile target: ``backend`` is ``cuda``, ``hip`` or ``local``."""

    backend: str
    arch: int | str | None = None
    warp_size: int | None = None

    def __str__(self) -> str:
        if self.backend == "local":
            return "local"
        if self.backend == "hip" and self.warp_size != _default_hip_warp(str(self.arch)):
            return f"hip:{self.arch}:{self.warp_size}"
        return f"{self.backend}:{self.arch}"

    @property
    def is_local(self) -> bool:
        return self.backend == "local"

    def gpu_target(self) -> GPUTarget:
        """Triton's ``GPUTarget`` for this target (``local`` is resolved first)."""
        t = resolve_target(self) if self.is_local else self
        from triton.backends.compiler import GPUTarget

        return GPUTarget(t.backend, t.arch, t.warp_size)


def _default_hip_warp(arch: str) -> int:
    # CDNA (gfx9xx) runs 64-wide wavefronts; RDNA (gfx10+) defaults to 32.
    return 64 if re.fullmatch(r"gfx9\w*", arch) else 32


_CUDA_RE = re.compile(r"cuda:(?:sm_?)?(\d{2,3})")
_HIP_RE = re.compile(r"hip:(gfx[0-9a-f]{3,4}[a-z0-9:+-]*?)(?::(32|64))?")


def parse_target(text: str | Target) -> Target:
    """Parse ``cuda:90``, ``hip:gfx942`` or ``local``; :class:`TargetError` otherwise."""
    if isinstance(text, Target):
        return text
    if not isinstance(text, str):
        raise TargetError(f"target must be a string like {TARGET_HELP}, not {type(text).__name__}")
    s = text.strip().lower()
    if s == "local":
        return Target("local")
    m = _CUDA_RE.fullmatch(s)
    if m:
        return Target("cuda", int(m.group(1)), 32)
    m = _HIP_RE.fullmatch(s)
    if m:
        arch = m.group(1)
        warp = int(m.group(2)) if m.group(2) else _default_hip_warp(arch)
        return Target("hip", arch, warp)
    raise TargetError(f"unknown target {text!r}: expected {TARGET_HELP}")


def resolve_target(text: str | Target) -> Target:
    """Like :func:`parse_target`, with ``local`` replaced by this machine's GPU.

    Resolving ``local`` imports triton and asks its active driver; with no
    GPU (or no driver) it raises :class:`TargetError` saying so.
    """
    t = parse_target(text)
    if not t.is_local:
        return t
    try:
        from triton.runtime.driver import driver

        gt = driver.active.get_current_target()
    except Exception as e:
        raise TargetError(
            "target 'local' means the GPU of this machine, but Triton found none "
            f"({type(e).__name__}: {e}); name a target instead, e.g. cuda:90"
        ) from None
    return Target(gt.backend, gt.arch, gt.warp_size)


# ---------------------------------------------------------------- types

_SCALARS = {"u1", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64",
            "fp16", "bf16", "fp32", "fp64",
            "fp8e4nv", "fp8e5", "fp8e4b15", "fp8e4b8", "fp8e5b16"}
_ALIASES = {
    "bool": "u1", "i1": "u1", "int1": "u1", "uint1": "u1",
    "int8": "i8", "int16": "i16", "int": "i32", "int32": "i32", "int64": "i64",
    "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64",
    "half": "fp16", "float16": "fp16", "bfloat16": "bf16", "float": "fp32",
    "float32": "fp32", "double": "fp64", "float64": "fp64",
    "float8e4nv": "fp8e4nv", "float8_e4m3fn": "fp8e4nv", "float8e5": "fp8e5",
    "float8_e5m2": "fp8e5", "float8e4b15": "fp8e4b15", "float8e4b8": "fp8e4b8",
    "float8_e4m3fnuz": "fp8e4b8", "float8e5b16": "fp8e5b16", "float8_e5m2fnuz": "fp8e5b16",
}
_PASSTHROUGH_RE = re.compile(r"constexpr|nvTmaDesc|tensordesc<.+>")


def canonical_type(ty: str) -> str:
    """Triton's spelling of an argument type; ValueError for an unknown one."""
    if not isinstance(ty, str):
        raise ValueError(f"type must be a string such as '*fp32' or 'i32', not {type(ty).__name__}")
    s = ty.strip()
    if _PASSTHROUGH_RE.fullmatch(s):
        return s
    prefix = ""
    if s.startswith("*k"):
        prefix, s = "*k", s[2:]
    elif s.startswith("*"):
        prefix, s = "*", s[1:]
    base = _ALIASES.get(s, s)
    if base not in _SCALARS:
        hint = difflib.get_close_matches(s, sorted(_SCALARS | set(_ALIASES)), n=1)
        extra = f" (did you mean {prefix + hint[0]!r}?)" if hint else ""
        raise ValueError(
            f"unknown type {ty!r}{extra}; expected a Triton type such as '*fp32', '*kfp16', 'i32', "
            "'fp32', 'u1' or 'constexpr'"
        )
    return prefix + base


# ---------------------------------------------------------------- the spec

_FN_RE = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_IDENT_RE = re.compile(r"[A-Za-z_]\w*")
_HEX_RE = re.compile(r"[0-9a-f]{16,128}")
_SCALAR_TYPES = (bool, int, float, str)


def _check_value(where: str, v: Any, allow_list: bool) -> None:
    if v is None or isinstance(v, _SCALAR_TYPES):
        return
    if allow_list and isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _check_value(f"{where}[{i}]", x, allow_list)
        return
    raise KernelSpecError(f"{where}: value {v!r} must be a number, bool or string")


@dataclass(frozen=True, eq=True)
class KernelSpec:
    """One kernel variant to build for one target (see the module docstring)."""

    fn: str | None = None
    source: str | None = None
    function: str | None = None
    signature: Mapping[str, str] = field(default_factory=dict)
    constexprs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    target: str = "cuda:90"
    divisibility: Sequence[str] = ()
    name: str | None = None
    python_path: Sequence[str] = ()
    fn_hash: str | None = None  # the function's JIT cache_key where the list was recorded

    def __post_init__(self) -> None:
        def put(attr: str, value: Any) -> None:
            object.__setattr__(self, attr, value)

        if (self.fn is None) == (self.source is None):
            raise KernelSpecError("give exactly one of 'fn' (\"module:qualname\") or 'source' (a .py file path)")
        if self.fn is not None:
            if not isinstance(self.fn, str) or not _FN_RE.fullmatch(self.fn):
                raise KernelSpecError(f"fn: {self.fn!r} is not of the form 'package.module:function'")
            if self.function is not None:
                raise KernelSpecError("function: only used with 'source'; with 'fn' the function is after the ':'")
        else:
            if not isinstance(self.source, (str, os.PathLike)):
                raise KernelSpecError(f"source: must be a file path, not {type(self.source).__name__}")
            # absolute, so workers with another working directory find it
            put("source", os.path.abspath(os.fspath(self.source)))
            if not isinstance(self.function, str) or not _IDENT_RE.fullmatch(self.function):
                raise KernelSpecError(
                    f"function: {self.function!r} must name the @triton.jit function defined in {self.source}"
                )
        for attr in ("signature", "constexprs", "options"):
            value = getattr(self, attr)
            if not isinstance(value, Mapping):
                raise KernelSpecError(f"{attr}: must be a table/object of name = value, not {type(value).__name__}")
            for k in value:
                if not isinstance(k, str) or not _IDENT_RE.fullmatch(k):
                    raise KernelSpecError(f"{attr}: {k!r} is not a valid argument/option name")
        sig: dict[str, str] = {}
        for k, ty in self.signature.items():
            try:
                sig[k] = canonical_type(ty)
            except ValueError as e:
                raise KernelSpecError(f"signature.{k}: {e}") from None
        put("signature", sig)
        consts = dict(self.constexprs)
        for k, v in consts.items():
            _check_value(f"constexprs.{k}", v, allow_list=False)
            if k in sig and sig[k] != "constexpr":
                raise KernelSpecError(
                    f"constexprs.{k}: argument {k!r} is typed {sig[k]!r} in the signature; "
                    "a constexpr must be typed 'constexpr' or left out of the signature"
                )
        put("constexprs", consts)
        opts = dict(self.options)
        for k, v in opts.items():
            _check_value(f"options.{k}", v, allow_list=True)
        for k in ("num_warps", "num_stages", "num_ctas"):
            v = opts.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise KernelSpecError(f"options.{k}: must be a positive integer, not {v!r}")
        put("options", opts)
        try:
            put("target", str(parse_target(self.target)))
        except TargetError as e:
            raise KernelSpecError(f"target: {e}") from None
        if isinstance(self.divisibility, str) or not isinstance(self.divisibility, Iterable):
            raise KernelSpecError("divisibility: must be a list of argument names")
        div = tuple(self.divisibility)
        for k in div:
            if not isinstance(k, str) or not _IDENT_RE.fullmatch(k):
                raise KernelSpecError(f"divisibility: {k!r} is not an argument name")
            if k in consts or sig.get(k) == "constexpr":
                raise KernelSpecError(f"divisibility: {k!r} is a constexpr; only runtime arguments can be listed")
        put("divisibility", div)
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise KernelSpecError("name: must be a non-empty string")
        if isinstance(self.python_path, str) or not isinstance(self.python_path, Iterable):
            raise KernelSpecError("python_path: must be a list of directories")
        put("python_path", tuple(os.fspath(p) for p in self.python_path))
        if self.fn_hash is not None and (not isinstance(self.fn_hash, str) or not _HEX_RE.fullmatch(self.fn_hash)):
            raise KernelSpecError(f"fn_hash: {self.fn_hash!r} must be the hex digest of the function's code")

    # Mappings are not hashable: hash the canonical form instead.
    def __hash__(self) -> int:
        return hash(self.key())

    @property
    def function_name(self) -> str:
        """The jitted function's name (last part of the qualname)."""
        if self.fn is not None:
            return self.fn.rsplit(":", 1)[1].rsplit(".", 1)[-1]
        assert self.function is not None
        return self.function

    @property
    def label(self) -> str:
        """A readable, mostly unique name for reports: ``name`` or ``function[variant]``."""
        if self.name:
            return self.name
        parts = [f"{k}={v}" for k, v in sorted(self.constexprs.items())]
        parts += [f"{k}={v}" for k, v in sorted(self.options.items())]
        ptrs = sorted({t.lstrip("*k") for t in self.signature.values() if t.startswith("*")})
        if ptrs:
            parts.append("/".join(ptrs))
        return f"{self.function_name}[{','.join(parts)}]" if parts else self.function_name

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, accepted back by ``KernelSpec(**d)`` and kernel-list files."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None or (f.name != "target" and not v):
                continue
            d[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, Mapping) else v)
        return d

    def key(self) -> str:
        """Canonical JSON of everything that affects the build (not ``name`` or ``fn_hash``)."""
        d = self.to_dict()
        d.pop("name", None)
        d.pop("fn_hash", None)
        return json.dumps(d, sort_keys=True, default=str)

    def with_target(self, target: str | Target) -> KernelSpec:
        return dataclasses.replace(self, target=str(parse_target(target)))

    # -------------------------------------------------- in the worker

    def load_function(self) -> Any:
        """Import the jitted function (imports triton). Raises with a clear message."""
        for p in self.python_path:
            if p not in sys.path:
                sys.path.insert(0, p)
        if self.fn is not None:
            import importlib

            module_name, qualname = self.fn.split(":", 1)
            try:
                obj: Any = importlib.import_module(module_name)
            except Exception as e:
                raise RuntimeError(f"Failed to import {module_name}\n{type(e).__name__}: {e}") from None
            for part in qualname.split("."):
                try:
                    obj = getattr(obj, part)
                except AttributeError:
                    raise KernelSpecError(f"fn: {self.fn!r}: {module_name} has no attribute {qualname!r}") from None
            where = self.fn
        else:
            mod = _load_source(self.source)  # type: ignore[arg-type]
            try:
                obj = getattr(mod, self.function)  # type: ignore[arg-type]
            except AttributeError:
                raise KernelSpecError(f"function: {self.source} defines no {self.function!r}") from None
            where = f"{self.source}:{self.function}"
        return _unwrap_jit(obj, where)


_SOURCE_MODULES: dict[tuple[str, str], Any] = {}


def _load_source(path: str) -> Any:
    """Load a kernel source file once per content (workers build many variants of one file)."""
    path = os.path.abspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise KernelSpecError(f"source: cannot read {path}: {e.strerror or e}") from None
    digest = hash_bytes(data)
    mod = _SOURCE_MODULES.get((path, digest))
    if mod is None:
        mod = reload_python_module(f"src_{digest[:20]}", path)
        _SOURCE_MODULES[(path, digest)] = mod
    return mod


def _unwrap_jit(obj: Any, where: str) -> Any:
    from triton.runtime.jit import JITFunction

    seen = 0
    while not isinstance(obj, JITFunction):
        inner = getattr(obj, "fn", None)
        if inner is None or seen > 8:
            raise KernelSpecError(f"{where} is a {type(obj).__name__}, not a @triton.jit function")
        obj, seen = inner, seen + 1
    return obj


# ---------------------------------------------------------------- files

_TOP_KEYS = ("version", "target", "python_path", "defaults", "kernels")
_DEFAULT_KEYS = ("options", "divisibility")
_KERNEL_KEYS = ("name", "fn", "source", "function", "signature", "constexprs", "none", "options",
                "divisibility", "target", "fn_hash", "variants")
_VARIANT_KEYS = ("name", "signature", "constexprs", "none", "options", "divisibility", "target")


def _unknown(where: str, key: str, allowed: Sequence[str]) -> KernelSpecError:
    hint = difflib.get_close_matches(key, allowed, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    return KernelSpecError(f"{where}: unknown key {key!r}{extra}; allowed: {', '.join(allowed)}")


def _toml_kernel_lines(text: str) -> list[int]:
    return [i + 1 for i, line in enumerate(text.splitlines()) if re.match(r"\s*\[\[\s*kernels\s*\]\]", line)]


def parse_kernel_list(
    text: str,
    fmt: str,
    *,
    origin: str = "<kernels>",
    base_dir: str | os.PathLike[str] | None = None,
    target: str | None = None,
) -> list[KernelSpec]:
    """Parse a kernel-list document (``fmt`` ``"toml"`` or ``"json"``) into specs.

    ``target`` (the command line's) replaces every target in the file.
    Raises :class:`KernelSpecError` naming ``origin``, the kernel and the field.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if fmt == "toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise KernelSpecError(f"{origin}: reading TOML needs Python 3.11+ or the 'tomli' package") from None
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise KernelSpecError(f"{origin}: invalid TOML: {e}") from None
        lines = _toml_kernel_lines(text)
    elif fmt == "json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise KernelSpecError(f"{origin}: invalid JSON: {e.msg} (at line {e.lineno}, column {e.colno})") from None
        lines = []
    else:
        raise KernelSpecError(f"{origin}: unknown kernel-list format {fmt!r} (use .toml or .json)")

    if not isinstance(doc, dict):
        raise KernelSpecError(f"{origin}: the document must be a table/object, not {type(doc).__name__}")
    for k in doc:
        if k not in _TOP_KEYS:
            raise _unknown(origin, k, _TOP_KEYS)
    version = doc.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise KernelSpecError(f"{origin}: version: {version!r} is not supported (this pyruntime reads version 1)")
    file_target = doc.get("target", "cuda:90")
    if target is None:
        try:
            parse_target(file_target)
        except TargetError as e:
            raise KernelSpecError(f"{origin}: target: {e}") from None
    pypath = doc.get("python_path", [])
    if not isinstance(pypath, list) or not all(isinstance(p, str) for p in pypath):
        raise KernelSpecError(f"{origin}: python_path: must be a list of directory strings")
    pypath = [str((base / p).resolve()) for p in pypath]
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise KernelSpecError(f"{origin}: defaults: must be a table/object")
    for k in defaults:
        if k not in _DEFAULT_KEYS:
            raise _unknown(f"{origin}: defaults", k, _DEFAULT_KEYS)
    d_opts = defaults.get("options", {})
    d_div = defaults.get("divisibility", [])
    if not isinstance(d_opts, dict):
        raise KernelSpecError(f"{origin}: defaults.options: must be a table/object")
    if not isinstance(d_div, list):
        raise KernelSpecError(f"{origin}: defaults.divisibility: must be a list of argument names")
    kernels = doc.get("kernels")
    if kernels is None:
        raise KernelSpecError(f"{origin}: no kernels: add one or more [[kernels]] entries")
    if not isinstance(kernels, list):
        raise KernelSpecError(f"{origin}: kernels: must be a list of tables/objects")
    if len(lines) != len(kernels):
        lines = []  # kernels written some other way (inline array): no line numbers

    specs: list[KernelSpec] = []
    for i, entry in enumerate(kernels):
        where = f"{origin}: kernels[{i}]"
        if lines:
            where += f" (line {lines[i]})"
        if not isinstance(entry, dict):
            raise KernelSpecError(f"{where}: must be a table/object, not {type(entry).__name__}")
        if isinstance(entry.get("name"), str):
            where += f" {entry['name']!r}"
        elif isinstance(entry.get("fn"), str) or isinstance(entry.get("function"), str):
            where += f" {entry.get('fn') or entry.get('function')!r}"
        for k in entry:
            if k not in _KERNEL_KEYS:
                raise _unknown(where, k, _KERNEL_KEYS)
        variants = entry.get("variants", [{}])
        if not isinstance(variants, list) or not variants:
            raise KernelSpecError(f"{where}: variants: must be a non-empty list of tables/objects")
        for j, var in enumerate(variants):
            vwhere = where if "variants" not in entry else f"{where} variants[{j}]"
            if not isinstance(var, dict):
                raise KernelSpecError(f"{vwhere}: must be a table/object, not {type(var).__name__}")
            for k in var:
                if k not in _VARIANT_KEYS:
                    raise _unknown(vwhere, k, _VARIANT_KEYS)
            specs.append(_entry_to_spec(entry, var, vwhere, base, file_target, target, d_opts, d_div, pypath))
    return specs


def _merge_map(where: str, key: str, *layers: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise KernelSpecError(f"{where}: {key}: must be a table/object of name = value")
        out.update(layer)
    return out


def _with_none(where: str, layer: dict[str, Any]) -> Any:
    """A kernel's or variant's ``constexprs`` with its ``none`` names added
    as ``None`` (TOML has no null: ``none = ["bias_ptr"]`` spells it)."""
    consts = layer.get("constexprs")
    names = layer.get("none")
    if names is None or (consts is not None and not isinstance(consts, dict)):
        return consts  # _merge_map names a bad constexprs
    if not isinstance(names, list) or not all(isinstance(n, str) and _IDENT_RE.fullmatch(n) for n in names):
        raise KernelSpecError(f"{where}: none: must be a list of argument names (those launches pass as None)")
    out = dict(consts or {})
    for n in names:
        if out.get(n) is not None:
            raise KernelSpecError(f"{where}: none: {n!r} also has the value {out[n]!r} in constexprs; "
                                  "give it one or the other")
        out[n] = None
    return out


def _entry_to_spec(entry: dict[str, Any], var: dict[str, Any], where: str, base: Path, file_target: str,
                   cli_target: str | None, d_opts: dict[str, Any], d_div: list[str],
                   pypath: list[str]) -> KernelSpec:
    fields: dict[str, Any] = {k: entry[k] for k in ("fn", "source", "function", "name", "fn_hash") if k in entry}
    if "name" in var:
        fields["name"] = var["name"]
    if isinstance(fields.get("source"), str):
        fields["source"] = str((base / fields["source"]).resolve())
    fields["signature"] = _merge_map(where, "signature", entry.get("signature"), var.get("signature"))
    fields["constexprs"] = _merge_map(where, "constexprs", _with_none(where, entry), _with_none(where, var))
    fields["options"] = _merge_map(where, "options", d_opts, entry.get("options"), var.get("options"))
    div = var.get("divisibility", entry.get("divisibility"))
    if div is None:
        # Defaults name arguments of some kernels only: keep those this one has.
        names = set(fields["signature"]) - set(fields["constexprs"])
        div = [d for d in d_div if d in names]
    fields["divisibility"] = div
    fields["target"] = cli_target or var.get("target", entry.get("target", file_target))
    fields["python_path"] = pypath
    try:
        return KernelSpec(**fields)
    except KernelSpecError as e:
        raise KernelSpecError(f"{where}: {e}") from None
    except TypeError as e:  # a wrongly typed field the checks above did not catch
        raise KernelSpecError(f"{where}: {e}") from None


def load_kernel_list(path: str | os.PathLike[str], *, target: str | None = None) -> list[KernelSpec]:
    """Read a ``.toml`` or ``.json`` kernel-list file (see the module docstring)."""
    p = Path(path)
    suffix = p.suffix.lower()
    fmt = {".toml": "toml", ".json": "json"}.get(suffix)
    if fmt is None:
        raise KernelSpecError(f"{p}: a kernel list must be a .toml or .json file")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KernelSpecError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KernelSpecError(f"{p}: cannot read: {e}") from None
    return parse_kernel_list(text, fmt, origin=str(p), base_dir=p.parent, target=target)
