"""Match Triton's JIT specialisation: turn a :class:`~pyruntime.kernels.KernelSpec`
into the exact inputs ``triton.compile`` gets from a launch, so a kernel
built ahead of time lands under the cache key the launch computes; and
describe a compiled specialisation as plain data (:class:`Specialisation`),
so a launch that misses can be compared with what was built.

What the JIT specialises (Triton 3.6 to 3.9), and how this module mirrors it:

* every ``tl.constexpr`` argument is part of the signature as
  ``constexpr`` with its value;
* a runtime argument passed as ``None`` becomes the constexpr ``None``, and
  an int equal to ``1`` becomes the constexpr ``1`` (unless it is in
  ``do_not_specialize`` or has a type annotation): a spec says so with
  ``constexprs = { n = 1 }`` / ``none = ["bias_ptr"]``;
* pointers and integers get an attribute entry: ``D`` (``tt.divisibility =
  16``) when launches pass them 16-byte aligned / divisible by 16, else an
  empty one; float and bool scalars get none;
* an argument in ``@triton.jit(do_not_specialize=[...])`` gets no attribute
  entry at all (and is never turned into a constexpr), one in
  ``do_not_specialize_on_alignment`` always an empty one (never ``D``):
  both read off the installed JIT's own specialisation function
  (:func:`jit_unspecialised_attr`);
* an annotated argument (``n: tl.int64``) is typed by its annotation;
* constexprs get an attribute entry or not depending on the Triton version,
  read off the installed JIT's own code (:func:`jit_constexpr_attr_rule`).

Spec records. Each kernel precompile builds gets a small ``pyruntime.spec.json``
in its cache directory (:data:`SPEC_FILE`, written by
:func:`write_spec_record`), describing the specialisation: function, code
hash, argument types, constexpr values, divisibility, options, target,
Triton version and build, Python ABI. Bundles carry it like any other file of
the kernel; :mod:`pyruntime.jit_guard` reads it to say how a launch that misses
differs from the nearest bundled kernel (:func:`differences`).

Everything here imports triton, on first call only.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

from .kernels import KernelSpec, KernelSpecError, Target, canonical_type, parse_target

__all__ = [
    "SPEC_FILE",
    "Difference",
    "Specialisation",
    "check_spec",
    "compile_inputs",
    "differences",
    "jit_constexpr_attr_rule",
    "jit_hook_inputs",
    "jit_unspecialised_attr",
    "record_compiled",
    "read_spec_record",
    "spec_record_for",
    "write_spec_record",
]

#: The file next to each precompiled kernel describing its specialisation.
SPEC_FILE = "pyruntime.spec.json"
SPEC_FORMAT = 1

# Options derived from the target (or machine paths): not reported as differences.
_TARGET_OPTIONS = frozenset({"arch", "backend_name", "warp_size", "extern_libs", "supported_fp8_dtypes",
                             "deprecated_fp8_dot_operand_dtypes", "allowed_dot_input_precisions",
                             "max_num_imprecise_acc_default"})


def _constexpr_value(v: Any) -> Any:
    if isinstance(v, str) and v.startswith("tl."):
        import triton.language as tl

        dt = getattr(tl, v[3:], None)
        if isinstance(dt, tl.dtype):
            return dt
    return v


def _no_arg(fn: Any, attr: str, k: str, arg_names: list[str]) -> KernelSpecError:
    hint = difflib.get_close_matches(k, arg_names, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    return KernelSpecError(
        f"{attr}.{k}: {fn.__name__} has no argument {k!r}{extra}; its arguments are {', '.join(arg_names)}"
    )


def compile_inputs(spec: KernelSpec, fn: Any | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(ASTSource, GPUTarget, options)`` for ``triton.compile`` (imports triton).

    Builds the signature in parameter order with every constexpr typed
    ``constexpr`` and the attribute entries Triton's JIT gives each runtime
    argument; checks every name against the function, the ``do_not_specialize``
    lists and annotations, and every option against the target backend's
    option set. Warns (``UserWarning``) when the spec's ``fn_hash`` is not
    the loaded function's.
    """
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    if fn is None:
        fn = spec.load_function()
    target = parse_target(spec.target).gpu_target()
    params = list(fn.params)
    arg_names = [p.name for p in params]
    for attr, names in (("signature", spec.signature), ("constexprs", spec.constexprs),
                        ("divisibility", spec.divisibility)):
        for k in names:
            if k not in arg_names:
                raise _no_arg(fn, attr, k, arg_names)
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    for p in params:
        name = p.name
        annotated = canonical_type(p.annotation_type) if p.annotation_type else None
        if name in spec.constexprs:
            if not p.is_constexpr:
                _check_runtime_constexpr(fn, p, spec.constexprs[name], annotated)
            signature[name] = "constexpr"
            constexprs[name] = _constexpr_value(spec.constexprs[name])
        elif name in spec.signature and spec.signature[name] != "constexpr":
            if p.is_constexpr:
                raise KernelSpecError(f"signature.{name}: {fn.__name__} declares {name!r} tl.constexpr; "
                                      f"give its value in constexprs, not a type")
            if annotated and spec.signature[name] != annotated:
                raise KernelSpecError(
                    f"signature.{name}: {fn.__name__} annotates {name!r} as {annotated!r}, so the JIT types it "
                    f"{annotated!r} whatever the value; not {spec.signature[name]!r}"
                )
            signature[name] = spec.signature[name]
        elif p.is_constexpr or spec.signature.get(name) == "constexpr":
            if not p.has_default:
                raise KernelSpecError(f"constexprs.{name}: {fn.__name__} needs a value for constexpr {name!r}")
            signature[name] = "constexpr"
            constexprs[name] = p.default
        elif annotated:
            signature[name] = annotated
        else:
            raise KernelSpecError(
                f"signature.{name}: no type for argument {name!r} of {fn.__name__} (e.g. {name} = \"*fp32\" or \"i32\")"
            )
    backend = make_backend(target)
    parsed = backend.parse_options(dict(spec.options))
    known = set(getattr(type(parsed), "__dataclass_fields__", ()))
    for k in spec.options:
        if known and k not in known:
            hint = difflib.get_close_matches(k, sorted(known), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise KernelSpecError(
                f"options.{k}: not a compile option of Triton's {target.backend} backend{extra}"
            )
    div = set(spec.divisibility)
    constexpr_attrs = jit_constexpr_attr_rule()
    unspecialised = jit_unspecialised_attr()
    attrs = {}
    for i, p in enumerate(params):  # index order: str(attrs) is part of the cache key
        ty = signature[p.name]
        if ty != "constexpr":
            specialised = ty.startswith("*") or (ty[0] in "iu" and ty != "u1")
            if p.name in div:
                why = _no_divisibility_reason(p, ty, specialised)
                if why:
                    raise KernelSpecError(f"divisibility.{p.name}: {why}; remove it from divisibility")
            # the JIT specialises alignment only for pointers and integers;
            # float and bool scalars get no attribute entry at all
            if not specialised:
                continue
            if p.do_not_specialize:
                if unspecialised is not None:
                    attrs[(i,)] = backend.parse_attr(unspecialised)
            elif p.do_not_specialize_on_alignment:
                attrs[(i,)] = backend.parse_attr("")
            else:
                attrs[(i,)] = backend.parse_attr("D" if p.name in div else "")
        elif constexpr_attrs == "all":
            attrs[(i,)] = backend.parse_attr("")
        elif constexpr_attrs == "str" and isinstance(constexprs[p.name], str):
            attrs[(i,)] = backend.parse_attr(constexprs[p.name])
    if spec.fn_hash and spec.fn_hash != fn.cache_key:
        warnings.warn(
            f"{spec.label}: {fn.__name__}'s code here hashes {fn.cache_key[:16]}, not {spec.fn_hash[:16]} as where "
            "the kernel list was recorded, so launches there will not find this build (source changed, a global "
            "constexpr or called @jit function differs, or the package picks kernel code by device at import: "
            "with no GPU visible it chose another variant)", UserWarning, stacklevel=2)
    src = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    # lists (JSON/TOML have no tuples) as the tuples Triton's options hold, as JITFunction.preload does
    return src, target, {k: tuple(v) if isinstance(v, list) else v for k, v in spec.options.items()}


def _check_runtime_constexpr(fn: Any, p: Any, value: Any, annotated: str | None) -> None:
    """A constexpr value for a runtime parameter: only what the JIT itself
    turns into a constexpr (``None``, or an int equal to 1)."""
    if value is None:
        return
    if value == 1 and type(value) is int:
        if p.do_not_specialize:
            raise KernelSpecError(
                f"constexprs.{p.name}: {fn.__name__} lists {p.name!r} in do_not_specialize, so the JIT passes it as a "
                "runtime int even when it is 1; type it in signature (e.g. \"i32\") instead"
            )
        if annotated:
            raise KernelSpecError(
                f"constexprs.{p.name}: {fn.__name__} annotates {p.name!r} as {annotated!r}, so the JIT never turns "
                "it into a constexpr; type it in signature instead"
            )
        return
    raise KernelSpecError(
        f"constexprs.{p.name}: {p.name!r} is a runtime argument of {fn.__name__} (not tl.constexpr); the JIT makes "
        f"it a constexpr only when a launch passes None or the int 1, not {value!r}: give it a type in signature"
    )


def _no_divisibility_reason(p: Any, ty: str, specialised: bool) -> str | None:
    if not specialised:
        return f"the JIT never specialises {ty} arguments on divisibility"
    if p.do_not_specialize:
        return f"{p.name!r} is in the function's do_not_specialize, so the JIT gives it no divisibility"
    if p.do_not_specialize_on_alignment:
        return f"{p.name!r} is in the function's do_not_specialize_on_alignment, so the JIT gives it no divisibility"
    return None


def check_spec(spec: KernelSpec, fn: Any | None = None) -> list[str]:
    """Check a spec against its function as a build would (imports it):
    raises :class:`KernelSpecError` for a name the function does not have
    (with a "did you mean"), a missing type, an unknown option, divisibility
    the JIT would never give; returns warnings (e.g. ``fn_hash`` differs)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile_inputs(spec, fn)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)
            and str(w.message).startswith(spec.label)]


@functools.lru_cache(maxsize=None)
def jit_constexpr_attr_rule() -> str:
    """Which constexpr arguments the installed Triton's JIT gives an attribute
    entry, so a precompiled kernel gets the cache key a launch computes.

    Triton 3.6 gives one to constexprs whose value is a string (the value
    itself goes through ``parse_attr``); 3.7+ gives every constexpr an empty
    one. Read off the JIT's own code rather than guessed from the version."""
    import inspect

    from triton.runtime.jit import JITFunction

    try:
        src = inspect.getsource(JITFunction._pack_args)
    except (AttributeError, OSError, TypeError):
        return "none"
    if "'' if x[0] == 'constexpr'" in src or "\"\" if x[0] == \"constexpr\"" in src:
        return "all"
    if "isinstance(x, str)" in src:
        return "str"
    return "none"


@functools.lru_cache(maxsize=None)
def jit_unspecialised_attr() -> str | None:
    """The attribute a ``do_not_specialize`` argument gets from the installed
    JIT: ``None`` for no entry at all (Triton 3.6 to 3.9: the specialisation
    function returns no key for it, and only string keys become attribute
    entries), else the key string.

    Asked of the JIT's own specialisation function (``native_specialize_impl``
    with ``specialize=False``) for an int divisible by 16."""
    try:
        from triton.backends.compiler import BaseBackend
        from triton.runtime import jit

        impl = jit.native_specialize_impl
        key = impl(BaseBackend, 16, False, False, True)[1]
    except Exception:  # another JIT layout: the 3.6-3.9 rule
        return None
    return key if isinstance(key, str) else None


# ------------------------------------------------------------ spec records


def _dtype_names() -> dict[str, str]:
    import triton.language as tl

    names: dict[str, str] = {}
    for n in sorted(dir(tl), key=len, reverse=True):  # the long spelling: tl.float16, not tl.fp16
        v = getattr(tl, n, None)
        if isinstance(v, tl.dtype):
            names[str(v)] = n
    return names


def encode_constexpr(v: Any) -> Any:
    """A constexpr value as plain JSON data, in kernel-list spelling: dtypes
    as ``"tl.float16"``; a ``@jit`` function as ``{"jit": "module:qualname"}``."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    cls = type(v).__name__
    if cls == "constexpr" and hasattr(v, "value"):
        return encode_constexpr(v.value)
    if cls == "dtype" or type(v).__module__.startswith("triton.language"):
        names = _dtype_names()
        return f"tl.{names.get(str(v), str(v))}"
    if hasattr(v, "fn") and hasattr(v, "params"):  # a JITFunction passed as a constexpr
        return {"jit": f"{getattr(v, 'module', '?')}:{v.fn.__qualname__}"}
    if isinstance(v, (tuple, list)):
        return [encode_constexpr(x) for x in v]
    return {"repr": repr(v)}


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def target_string(target: Any) -> str:
    """``cuda:90`` / ``hip:gfx942`` for a ``GPUTarget`` (or its ``__dict__``)."""
    d = target if isinstance(target, Mapping) else vars(target)
    return str(Target(d["backend"], d["arch"], d.get("warp_size")))


@functools.lru_cache(maxsize=1)
def triton_build() -> dict[str, Any]:
    """This installation's Triton version, a short digest of its build
    (Triton's own cache-key prefix, which hashes its compiler and libtriton)
    and the Python ABI tag that picks the Triton wheel."""
    import triton

    try:
        from triton.runtime.cache import triton_key

        build = hashlib.sha256(triton_key().encode("utf-8")).hexdigest()[:16]
    except Exception:
        build = None
    return {"triton_version": triton.__version__, "triton_build": build, "triton_abi": python_abi()}


def python_abi() -> str | None:
    """The interpreter's ABI tag (``cpython-311-x86_64-linux-gnu``), as bundles record it."""
    from importlib.machinery import EXTENSION_SUFFIXES

    for suffix in EXTENSION_SUFFIXES:
        if suffix.startswith(".") and suffix.endswith(".so") and suffix.count(".") == 2:
            return suffix[1:-3]
    import sys

    return getattr(sys.implementation, "cache_tag", None)


def cache_env_vars() -> dict[str, str]:
    """The environment variables Triton hashes into every cache key."""
    try:
        from triton._C.libtriton import get_cache_invalidating_env_vars

        return {str(k): str(v) for k, v in dict(get_cache_invalidating_env_vars()).items()}
    except Exception:
        return {}


@dataclass
class Specialisation:
    """One compiled specialisation of a ``@jit`` function, as plain data.

    ``signature`` lists every parameter in order with its type, or
    ``"constexpr"`` (value in ``constexprs``, kernel-list spelling, ``None``
    included); ``divisibility`` the arguments compiled with
    ``tt.divisibility = 16``; ``unspecialised`` the pointer/int arguments
    with no attribute entry (``do_not_specialize``); ``options`` every
    compile option but those derived from the target."""

    name: str
    function: str | None = None  # module:qualname
    source: str | None = None  # the function's source file
    fn_hash: str | None = None  # JITFunction.cache_key: the code, callees and global constexprs
    signature: dict[str, str] = field(default_factory=dict)
    constexprs: dict[str, Any] = field(default_factory=dict)
    divisibility: list[str] = field(default_factory=list)
    unspecialised: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    triton_version: str | None = None
    triton_build: str | None = None
    triton_abi: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cache_key: str | None = None
    complete: bool = True  # False: from Triton's metadata only (no argument specialisation)
    unsupported: list[str] = field(default_factory=list)  # what a kernel list cannot express

    @classmethod
    def from_parts(cls, fn: Any, signature: Mapping[str, Any], constants: Mapping[Any, Any],
                   attrs: Mapping[Any, Any], options: Mapping[str, Any], target: Any,
                   cache_key: str | None = None) -> Specialisation:
        """From what the JIT (or ``ASTSource``) holds: ``signature`` by name,
        ``constants`` and ``attrs`` by parameter path (``(i,)``)."""
        names = [p.name for p in fn.params]
        unsupported: list[str] = []

        def arg_name(path: Any) -> str | None:
            if isinstance(path, str):
                return path
            if isinstance(path, tuple) and len(path) == 1 and isinstance(path[0], int) and path[0] < len(names):
                return names[path[0]]
            unsupported.append(f"tuple argument element {path}")
            return None

        sig: dict[str, str] = {}
        for n in names:
            ty = signature.get(n)
            if isinstance(ty, str):
                sig[n] = ty
            else:
                sig[n] = str(ty)
                unsupported.append(f"{n}: tuple/structured type {ty!r}")
        consts: dict[str, Any] = {}
        for path, v in constants.items():
            n = arg_name(path)
            if n is not None:
                consts[n] = encode_constexpr(v)
                if isinstance(consts[n], dict):
                    unsupported.append(f"{n}: constexpr {consts[n]}")
        div: list[str] = []
        with_attr: set[str] = set()
        for path, a in attrs.items():
            n = arg_name(path)
            if n is None:
                continue
            with_attr.add(n)
            pairs = [tuple(x) for x in (a or []) if isinstance(x, (list, tuple)) and len(x) == 2]
            if ("tt.divisibility", 16) in pairs:
                div.append(n)
            for k, _ in pairs:
                if k != "tt.divisibility":
                    unsupported.append(f"{n}: attribute {k}")
        unspec = [n for n in names if sig.get(n) != "constexpr" and n not in with_attr
                  and (sig[n].startswith("*") or (sig[n][:1] in "iu" and sig[n] != "u1"))]
        opts = {k: _jsonable(v) for k, v in options.items() if k not in ("extern_libs",)}
        fnpy = getattr(fn, "fn", None)
        source = getattr(getattr(fnpy, "__code__", None), "co_filename", None)
        qual = getattr(fnpy, "__qualname__", None) or fn.__name__
        return cls(
            name=fn.__name__, function=f"{fn.module}:{qual}", source=source, fn_hash=fn.cache_key,
            signature=sig, constexprs=consts, divisibility=[n for n in names if n in div], unspecialised=unspec,
            options=opts, target=target_string(target), env=cache_env_vars(), cache_key=cache_key,
            unsupported=unsupported, **triton_build(),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Specialisation:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_triton_metadata(cls, md: Mapping[str, Any], cache_key: str | None = None) -> Specialisation:
        """The little Triton's own ``<kernel>.json`` says: target, version, options."""
        target = md.get("target")
        env_keys = set(cache_env_vars())
        opts = {k: _jsonable(v) for k, v in md.items()
                if k not in ("hash", "target", "triton_version", "name", "extern_libs") and k not in env_keys}
        return cls(name=str(md.get("name", "?")), target=target_string(target) if isinstance(target, Mapping) else None,
                   triton_version=md.get("triton_version"), options=opts, cache_key=cache_key, complete=False)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, **dataclasses.asdict(self)}

    def short(self) -> str:
        """``add_kernel[BLOCK=1024, num_warps=4]``: constexprs and the common options."""
        parts = [f"{k}={_show(v)}" for k, v in self.constexprs.items()]
        parts += [f"{k}={self.options[k]}" for k in ("num_warps", "num_stages") if k in self.options]
        return f"{self.name}[{', '.join(parts)}]"

    def args_text(self) -> str:
        """``x_ptr: *fp32 D, n: i32, BLOCK=1024``: each argument as the JIT specialised it."""
        out = []
        for n, ty in self.signature.items():
            out.append(f"{n}={_show(self.constexprs.get(n))}" if ty == "constexpr" else f"{n}: {_arg_form(self, n)}")
        return ", ".join(out)


def _show(v: Any) -> str:
    return "None" if v is None else (repr(v) if isinstance(v, str) and not v.startswith("tl.") else str(v))


def _arg_form(s: Specialisation, n: str) -> str:
    ty = s.signature.get(n, "?")
    if n in s.divisibility:
        return f"{ty} D"
    if n in s.unspecialised:
        return f"{ty} (unspecialised)"
    return ty


def jit_hook_inputs(compile_info: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """``(GPUTarget, backend, options)`` of the specialisation a JIT hook
    (``knobs.runtime.jit_cache_hook`` / ``jit_post_compile_hook``) is
    called for: from its serialized specialisation data, as
    ``JITFunction.preload`` rebuilds them (3.9 serializes the target; on
    3.6 it is the JIT's current device target)."""
    from triton.compiler.compiler import make_backend

    data = json.loads(compile_info["specialization_data"])
    if "target" in data:
        from triton.backends.compiler import GPUTarget

        target = GPUTarget(**data["target"])
    else:
        from triton.runtime.driver import driver

        target = driver.active.get_current_target()
    backend = make_backend(target)
    options = backend.parse_options({k: tuple(v) if isinstance(v, list) else v for k, v in data["options"].items()})
    return target, backend, options


def spec_record_for(src: Any, target: Any, options: Mapping[str, Any], cache_key: str | None = None
                    ) -> Specialisation:
    """The record of a precompiled kernel, from its ``compile_inputs``."""
    from triton.compiler.compiler import make_backend

    parsed = make_backend(target).parse_options(dict(options, **src.parse_options()))
    return Specialisation.from_parts(src.fn, src.signature, src.constants, src.attrs, dict(parsed.__dict__),
                                     target, cache_key)


def record_compiled(compiled: Any, src: Any, target: Any, options: Mapping[str, Any]) -> None:
    """Write the :data:`SPEC_FILE` of a kernel ``triton.compile`` just built
    (or found) from ``compile_inputs``; a failure is a warning, never an error."""
    try:
        some = next(iter(dict(compiled.metadata_group).values()))
        kernel_dir = os.path.dirname(some)
        write_spec_record(kernel_dir, spec_record_for(src, target, options, os.path.basename(kernel_dir)))
    except Exception as e:
        warnings.warn(f"pyruntime: could not write {SPEC_FILE} for {getattr(src, 'name', '?')}: "
                      f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)


def write_spec_record(kernel_dir: str, record: Specialisation) -> bool:
    """Write ``record`` as :data:`SPEC_FILE` in ``kernel_dir`` (atomically;
    only when it differs). Returns whether it wrote."""
    data = (json.dumps(record.to_dict(), indent=1) + "\n").encode("utf-8")  # parameter order kept
    path = os.path.join(kernel_dir, SPEC_FILE)
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except OSError:
        pass
    tmp = os.path.join(kernel_dir, f".{SPEC_FILE}.{os.getpid()}.{os.urandom(4).hex()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True


def read_spec_record(kernel_dir: str) -> Specialisation | None:
    """The kernel's :data:`SPEC_FILE`, else what Triton's metadata says; ``None`` if neither reads."""
    try:
        with open(os.path.join(kernel_dir, SPEC_FILE), "rb") as f:
            return Specialisation.from_dict(json.loads(f.read()))
    except (OSError, ValueError, TypeError):
        pass
    try:
        names = os.listdir(kernel_dir)
    except OSError:
        return None
    # Triton's layout: __grp__<kernel>.json lists the files, <kernel>.json is the metadata
    for kname in sorted(n[7:-5] for n in names if n.startswith("__grp__") and n.endswith(".json")):
        try:
            with open(os.path.join(kernel_dir, f"{kname}.json"), "rb") as f:
                return Specialisation.from_triton_metadata(json.loads(f.read()), os.path.basename(kernel_dir))
        except (OSError, ValueError):
            continue
    return None


# ------------------------------------------------------------ differences


class Difference(NamedTuple):
    """One way a launch's specialisation differs from a built one."""

    field: str  # "n divisibility", "BLOCK", "num_warps", "target", ...
    launch: str
    bundled: str
    hint: str

    def short(self) -> str:
        return f"{self.field} {self.launch} vs {self.bundled}"


_ENV_FIELDS = (
    ("target", "target", "build the kernel list for {launch} (precompile --target {launch})"),
    ("triton_version", "Triton", "build the bundle with Triton {launch}, the version here"),
    ("triton_abi", "Python ABI", "build the bundle under the same CPython minor as here ({launch}): Triton's "
                                 "cache keys hash its libtriton, which differs between the wheels of each Python"),
)


def differences(launch: Specialisation, bundled: Specialisation) -> list[Difference]:
    """How ``launch`` differs from ``bundled``, field by field, environment first."""
    out: list[Difference] = []
    for attr, label, hint in _ENV_FIELDS:
        a, b = getattr(launch, attr), getattr(bundled, attr)
        if a and b and a != b:
            out.append(Difference(label, str(a), str(b), hint.format(launch=a, bundled=b)))
    if (launch.triton_version == bundled.triton_version and launch.triton_build and bundled.triton_build
            and launch.triton_build != bundled.triton_build):
        out.append(Difference("Triton build", launch.triton_build, bundled.triton_build,
                              "same Triton version, another build of it (its compiler or libtriton differ): build "
                              "the bundle with the very Triton wheel installed here"))
    if launch.function and bundled.function and launch.function.split(":")[-1] != bundled.function.split(":")[-1]:
        out.append(Difference("function", launch.function, bundled.function, "another function of the same name"))
    if bundled.complete and launch.fn_hash and bundled.fn_hash and launch.fn_hash != bundled.fn_hash:
        out.append(Difference("kernel code", launch.fn_hash[:12], bundled.fn_hash[:12],
                              "the function's code differs from the bundled one: its source changed, a global "
                              "tl.constexpr or a called @jit function differs, or the package picks kernel code "
                              "by device at import (precompiled with no GPU visible, it chose another variant)"))
    if bundled.complete:
        for n in launch.signature:
            if n in bundled.signature:
                out.extend(_arg_differences(n, launch, bundled))
    for k in sorted(set(launch.options) | set(bundled.options)):
        if k in _TARGET_OPTIONS or k not in launch.options or k not in bundled.options:
            continue
        a, b = launch.options[k], bundled.options[k]
        if a != b:
            out.append(Difference(k, str(a), str(b), f"add a variant with options = {{ {k} = {_toml(a)} }}"))
    for k in sorted(set(launch.env) | set(bundled.env)) if bundled.complete else ():
        a, b = launch.env.get(k), bundled.env.get(k)
        if a != b:
            out.append(Difference(f"env {k}", str(a), str(b),
                                  f"Triton hashes the environment variable {k}: set it the same way when precompiling"))
    return out


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def _arg_differences(n: str, launch: Specialisation, bundled: Specialisation) -> list[Difference]:
    lt, bt = launch.signature[n], bundled.signature[n]
    lc, bc = lt == "constexpr", bt == "constexpr"
    if lc and bc:
        a, b = launch.constexprs.get(n), bundled.constexprs.get(n)
        if a == b and type(a) is type(b):
            return []
        if a is None:
            hint = f"{n} is None at this launch, which the JIT compiles as the constexpr None: add a variant " \
                   f"with none = [\"{n}\"]"
        else:
            hint = f"add a variant with constexprs = {{ {n} = {_toml(a)} }}"
        return [Difference(n, _show(a), _show(b), hint)]
    if lc or bc:
        a = _show(launch.constexprs.get(n)) if lc else _arg_form(launch, n)
        b = _show(bundled.constexprs.get(n)) if bc else _arg_form(bundled, n)
        v = launch.constexprs.get(n)
        if lc and v is None:
            hint = (f"{n} is None at this launch, which the JIT compiles as the constexpr None: add a variant "
                    f"with none = [\"{n}\"]")
        elif lc and v == 1:
            hint = (f"{n} == 1 at this launch, and the JIT compiles an int equal to 1 as the constexpr 1: add a "
                    f"variant with constexprs = {{ {n} = 1 }} (or list {n} in do_not_specialize)")
        else:
            hint = f"the bundled kernel was built with {n} = {b}; this launch passes a {a}: add a variant typing " \
                   f"{n} = \"{lt}\" in signature"
        return [Difference(n, a, b, hint)]
    out: list[Difference] = []
    if lt != bt:
        out.append(Difference(f"{n} dtype", lt, bt, f"add a variant with signature {n} = \"{lt}\""))
    ld, bd = n in launch.divisibility, n in bundled.divisibility
    if ld != bd:
        if ld:
            hint = (f"this launch passes {n} {'16-byte aligned' if lt.startswith('*') else 'divisible by 16'}: "
                    f"list {n} in divisibility (the JIT compiles it with tt.divisibility = 16)")
        else:
            hint = (f"this launch passes {n} {'not 16-byte aligned' if lt.startswith('*') else 'not divisible by 16'}"
                    f": add a variant without {n} in divisibility")
        out.append(Difference(f"{n} divisibility", "16" if ld else "none", "16" if bd else "none", hint))
    lu, bu = n in launch.unspecialised, n in bundled.unspecialised
    if lu != bu:
        out.append(Difference(f"{n} specialisation", "none" if lu else "yes", "none" if bu else "yes",
                              f"{n} is {'' if lu else 'not '}in do_not_specialize here but was "
                              f"{'not ' if lu else ''}when the bundle was built: rebuild it with this code"))
    return out
