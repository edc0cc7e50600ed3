"""Launches of a real third-party kernel package (liger-kernel) through its
own Python entry points, on a machine without a GPU: Triton's JIT runs with
the stand-in driver of :mod:`standin`, torch tensors on the CPU stand in for
GPU ones, and ``kernel[grid](...)`` warms up (specialises, keys, looks up,
compiles) instead of launching. For ``tests/test_third_party_kernels.py``.
"""

from __future__ import annotations

from typing import Any, Callable

import standin


def install() -> None:
    """The stand-in driver, and ``kernel[grid](...)`` as a warmup."""
    from triton.runtime.jit import JITFunction

    standin.install()

    def warm(self: Any, grid: Any) -> Callable[..., Any]:
        return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=True, **kwargs)

    JITFunction.__getitem__ = warm  # type: ignore[method-assign]


def launches(hidden: tuple[int, ...] = (1024, 4096)) -> list[tuple[str, Callable[[], Any]]]:
    """RMSNorm, LayerNorm, SwiGLU and GEGLU forwards, fp32 and bf16."""
    import torch
    from liger_kernel.ops.geglu import geglu_forward
    from liger_kernel.ops.layer_norm import layer_norm_forward
    from liger_kernel.ops.rms_norm import rms_norm_forward
    from liger_kernel.ops.swiglu import swiglu_forward

    out = []
    for dt in (torch.float32, torch.bfloat16):
        for h in hidden:
            x, w, b = torch.randn(8, h, dtype=dt), torch.ones(h, dtype=dt), torch.zeros(h, dtype=dt)
            name = f"{str(dt).replace('torch.', '')} h{h}"
            out += [(f"rms_norm {name}", lambda x=x, w=w: rms_norm_forward(x, w, 1e-6, 0.0, "llama", None)),
                    (f"layer_norm {name}", lambda x=x, w=w, b=b: layer_norm_forward(x, w, b, 1e-6)),
                    (f"swiglu {name}", lambda x=x: swiglu_forward(x, x)),
                    (f"geglu {name}", lambda x=x: geglu_forward(x, x))]
    return out
