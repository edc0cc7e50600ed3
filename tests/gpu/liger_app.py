"""A launcher made of a third-party kernel package (liger-kernel): one
process that runs its ops once each and says how long the first launches
took and whether every result is right. ``tests/gpu/liger_e2e.py`` runs it
cold, under ``python -m pyruntime record``, frozen on a restored bundle and
warm, each in a fresh process.

    python liger_app.py [--freeze] [--left-out] > result.json

Ops, each forward and backward, fp32 and bf16, hidden 1024 and 4096, through
liger's own autograd functions, compared with plain torch on the same
inputs: RMSNorm, LayerNorm, SwiGLU, GEGLU, RoPE, cross entropy and fused
linear cross entropy. ``--freeze`` calls ``pyruntime.freeze(mode="error")``
after the imports; ``--left-out`` then also runs RMSNorm with hidden 1000
(a stride and a column count no longer divisible by 16: a specialisation
no bundle holds), which must raise ``JITCompileError``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

T_START = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction  # noqa: E402
from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction  # noqa: E402
from liger_kernel.ops.geglu import LigerGELUMulFunction  # noqa: E402
from liger_kernel.ops.layer_norm import LigerLayerNormFunction  # noqa: E402
from liger_kernel.ops.rms_norm import LigerRMSNormFunction  # noqa: E402
from liger_kernel.ops.rope import LigerRopeFunction  # noqa: E402
from liger_kernel.ops.swiglu import LigerSiLUMulFunction  # noqa: E402

DEV = os.environ.get("LIGER_APP_DEVICE", "cuda")  # "cpu" with TRITON_INTERPRET=1: a check without a GPU
EPS = 1e-6


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / (b.abs().max() + 1e-6))


def _pair(fn: Callable[..., Any], ref: Callable[..., Any], *inputs: torch.Tensor) -> float:
    """Worst relative error of fn against ref: the output, and the gradient
    of every input that requires one (a fixed random upstream gradient)."""
    a = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    b = [t.detach().clone().float().requires_grad_(t.requires_grad) for t in inputs]
    out, want = fn(*a), ref(*b)
    outs = out if isinstance(out, tuple) else (out,)
    wants = want if isinstance(want, tuple) else (want,)
    g = [torch.randn_like(o) for o in outs]
    torch.autograd.backward(outs, g)
    torch.autograd.backward(wants, [x.float() for x in g])
    errs = [_rel(o, w) for o, w in zip(outs, wants)]
    errs += [_rel(x.grad, y.grad) for x, y in zip(a, b) if x.requires_grad]
    return max(errs)


def _rot(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def ops(dtype: torch.dtype, hidden: int) -> list[tuple[str, Callable[[], float]]]:
    def r(*s: int, grad: bool = True) -> torch.Tensor:
        return torch.randn(*s, device=DEV, dtype=dtype, requires_grad=grad)

    rows, vocab, heads, seq = 8, 8 * hidden, 8, 16
    hd = hidden // 32
    w = torch.rand(hidden, device=DEV, dtype=dtype) + 0.5
    bias = torch.randn(hidden, device=DEV, dtype=dtype)

    def rms() -> float:
        return _pair(lambda x: LigerRMSNormFunction.apply(x, w, EPS, 0.0, "llama", False),
                     lambda x: (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)).to(dtype).float() * w.float(),
                     r(rows, hidden))

    def ln() -> float:
        return _pair(lambda x: LigerLayerNormFunction.apply(x, w, bias, EPS),
                     lambda x: F.layer_norm(x, (hidden,), w.float(), bias.float(), EPS), r(rows, hidden))

    def swiglu() -> float:
        return _pair(LigerSiLUMulFunction.apply, lambda a, b: F.silu(a) * b, r(rows, 2 * hidden), r(rows, 2 * hidden))

    def geglu() -> float:
        return _pair(LigerGELUMulFunction.apply, lambda a, b: F.gelu(a, approximate="tanh") * b,
                     r(rows, 2 * hidden), r(rows, 2 * hidden))

    def rope() -> float:
        # a real rotary table repeats its first half (liger reads only that half)
        cos, sin = (torch.cat([t, t], dim=-1) for t in (r(1, seq, hd // 2, grad=False), r(1, seq, hd // 2, grad=False)))
        return _pair(lambda q, k: LigerRopeFunction.apply(q, k, cos, sin),
                     lambda q, k: (q * cos.float().unsqueeze(1) + _rot(q) * sin.float().unsqueeze(1),
                                   k * cos.float().unsqueeze(1) + _rot(k) * sin.float().unsqueeze(1)),
                     r(2, heads, seq, hd), r(2, heads, seq, hd))

    target = torch.randint(0, vocab, (2 * rows,), device=DEV)

    def ce() -> float:
        return _pair(lambda x: LigerCrossEntropyFunction.apply(x, target, None)[0],
                     lambda x: F.cross_entropy(x, target), r(2 * rows, vocab))

    def flce() -> float:
        return _pair(lambda x, lw: LigerFusedLinearCrossEntropyFunction.apply(x, lw, target)[0],
                     lambda x, lw: F.cross_entropy(x @ lw.T, target), r(2 * rows, hidden), r(vocab, hidden) * 0.05)

    name = f"{str(dtype).replace('torch.', '')} h{hidden}"
    return [(f"rms_norm {name}", rms), (f"layer_norm {name}", ln), (f"swiglu {name}", swiglu),
            (f"geglu {name}", geglu), (f"rope {name}", rope), (f"cross_entropy {name}", ce),
            (f"fused_linear_cross_entropy {name}", flce)]


def main() -> dict[str, Any]:
    freeze = "--freeze" in sys.argv
    guard = None
    if freeze:
        import pyruntime

        guard = pyruntime.freeze(mode="error")
    import_s = time.perf_counter() - T_START
    results: list[dict[str, Any]] = []
    torch.manual_seed(0)
    t0 = time.perf_counter()
    for dtype, tol in ((torch.float32, 2e-3), (torch.bfloat16, 3e-2)):
        for hidden in (1024, 4096):
            for label, fn in ops(dtype, hidden):
                t = time.perf_counter()
                try:
                    err = fn()
                    _sync()
                    results.append({"op": label, "ok": err <= tol, "rel_err": round(err, 6),
                                    "ms": round((time.perf_counter() - t) * 1e3, 2)})
                except Exception as e:  # noqa: BLE001 - reported: a refused compile is the finding
                    results.append({"op": label, "ok": False, "error": f"{type(e).__name__}: {str(e)[:600]}"})
    first_s = time.perf_counter() - t0
    out: dict[str, Any] = {"frozen": freeze, "import_s": round(import_s, 3), "first_launches_s": round(first_s, 3),
                           "first_op_s": results[0].get("ms", 0) / 1e3, "ops": len(results),
                           "all_ok": all(r["ok"] for r in results), "results": results}
    if "--left-out" in sys.argv:
        x = torch.randn(8, 1000, device=DEV)
        try:
            LigerRMSNormFunction.apply(x, torch.ones(1000, device=DEV), EPS, 0.0, "llama", False)
            _sync()
            out["left_out"] = {"raised": None}
        except Exception as e:  # noqa: BLE001 - the expected JITCompileError, reported
            out["left_out"] = {"raised": type(e).__name__, "message": str(e)[:1500]}
    if guard is not None:
        out["misses"] = len(guard.misses)
        guard.release()
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
