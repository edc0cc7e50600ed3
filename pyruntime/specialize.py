"""Match Triton's JIT specialisation: turn a :class:`~pyruntime.kernels.KernelSpec`
into the exact inputs ``triton.compile`` gets from a launch, so a kernel
built ahead of time lands under the cache key the launch computes.

What the JIT specialises, and how this module mirrors it:

* every ``tl.constexpr`` argument is part of the signature as
  ``constexpr`` with its value;
* pointers and integers get an attribute entry: ``D`` (``tt.divisibility =
  16``) when launches pass them 16-byte aligned / divisible by 16, else an
  empty one; float and bool scalars get none;
* constexprs get an attribute entry or not depending on the Triton version,
  read off the installed JIT's own code (:func:`jit_constexpr_attr_rule`).

Everything here imports triton, on first call only.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

from .kernels import KernelSpec, KernelSpecError, canonical_type, parse_target

__all__ = ["compile_inputs", "jit_constexpr_attr_rule"]


def _constexpr_value(v: Any) -> Any:
    if isinstance(v, str) and v.startswith("tl."):
        import triton.language as tl

        dt = getattr(tl, v[3:], None)
        if isinstance(dt, tl.dtype):
            return dt
    return v


def compile_inputs(spec: KernelSpec, fn: Any | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(ASTSource, GPUTarget, options)`` for ``triton.compile`` (imports triton).

    Builds the signature in parameter order with every constexpr typed
    ``constexpr`` and one attribute entry per runtime argument, as Triton's
    JIT does; checks every name against the function and every option
    against the target backend's option set.
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
                hint = difflib.get_close_matches(k, arg_names, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise KernelSpecError(
                    f"{attr}.{k}: {fn.__name__} has no argument {k!r}{extra}; its arguments are {', '.join(arg_names)}"
                )
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    for p in params:
        name = p.name
        if name in spec.constexprs:
            signature[name] = "constexpr"
            constexprs[name] = _constexpr_value(spec.constexprs[name])
        elif name in spec.signature and spec.signature[name] != "constexpr":
            signature[name] = spec.signature[name]
        elif p.is_constexpr or spec.signature.get(name) == "constexpr":
            if not p.has_default:
                raise KernelSpecError(f"constexprs.{name}: {fn.__name__} needs a value for constexpr {name!r}")
            signature[name] = "constexpr"
            constexprs[name] = p.default
        elif p.annotation_type:
            signature[name] = canonical_type(p.annotation_type)
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
    attrs = {}
    for i, p in enumerate(params):  # index order: str(attrs) is part of the cache key
        ty = signature[p.name]
        if ty != "constexpr":
            # the JIT specialises alignment only for pointers and integers;
            # float and bool scalars get no attribute entry at all
            if ty.startswith("*") or (ty[0] in "iu" and ty != "u1"):
                attrs[(i,)] = backend.parse_attr("D" if p.name in div else "")
        elif constexpr_attrs == "all":
            attrs[(i,)] = backend.parse_attr("")
        elif constexpr_attrs == "str" and isinstance(constexprs[p.name], str):
            attrs[(i,)] = backend.parse_attr(constexprs[p.name])
    src = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    return src, target, dict(spec.options)


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
