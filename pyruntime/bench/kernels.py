"""Sample ``@triton.jit`` kernels for compile benchmarks and tests.

A varied set, like what a model's launcher ships: element-wise binary ops
with activations, a fused bias + activation kernel with several constexpr
switches, softmax, row reductions, layer norm / RMS norm, and a grouped
matmul with ``tl.dot``. Everything is written with portable ``tl`` calls
(no libdevice), so every kernel builds for both ``cuda:*`` and ``hip:*``.

:func:`sample_specs` turns them into distinct :class:`KernelSpec` variants
(constexprs, ``num_warps``/``num_stages`` and pointer dtypes vary), taking
one from each kernel family in turn so that any prefix is varied. Importing
this module imports triton; ``pyruntime.bench`` itself does not.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Iterator

import triton
import triton.language as tl

from ..kernels import KernelSpec

__all__ = [
    "bias_act_kernel",
    "ew_binary_kernel",
    "layernorm_kernel",
    "matmul_kernel",
    "row_reduce_kernel",
    "sample_specs",
    "softmax_kernel",
]

ACTIVATIONS = ("none", "relu", "gelu", "silu", "sigmoid")


@triton.jit
def _activation(x, ACT: tl.constexpr):
    if ACT == "relu":
        x = tl.maximum(x, 0.0)
    elif ACT == "gelu":  # sigmoid approximation: portable, no libdevice tanh/erf
        x = x * tl.sigmoid(1.702 * x)
    elif ACT == "silu":
        x = x * tl.sigmoid(x)
    elif ACT == "sigmoid":
        x = tl.sigmoid(x)
    return x


@triton.jit
def ew_binary_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK: tl.constexpr, OP: tl.constexpr,
                     ACT: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
    if OP == "add":
        z = x + y
    elif OP == "mul":
        z = x * y
    else:
        z = x - y
    tl.store(out_ptr + offs, _activation(z, ACT), mask=mask)


@triton.jit
def bias_act_kernel(x_ptr, bias_ptr, out_ptr, n_elements, n_cols, scale, BLOCK: tl.constexpr,
                    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SCALE: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + offs % n_cols, mask=mask).to(tl.float32)
    if SCALE:
        x = x * scale
    tl.store(out_ptr + offs, _activation(x, ACT), mask=mask)


@triton.jit
def softmax_kernel(out_ptr, in_ptr, in_stride, out_stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(in_ptr + row * in_stride + cols, mask=mask, other=-float("inf")).to(tl.float32)
    x = x - tl.max(x, axis=0)
    num = tl.exp(x)
    tl.store(out_ptr + row * out_stride + cols, num / tl.sum(num, axis=0), mask=mask)


@triton.jit
def row_reduce_kernel(x_ptr, out_ptr, stride, n_cols, BLOCK: tl.constexpr, OP: tl.constexpr):
    row = tl.program_id(0)
    if OP == "max":
        acc = tl.full([BLOCK], -float("inf"), tl.float32)
    else:
        acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        if OP == "max":
            v = tl.load(x_ptr + row * stride + cols, mask=mask, other=-float("inf")).to(tl.float32)
            acc = tl.maximum(acc, v)
        else:
            v = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            if OP == "sumsq":
                v = v * v
            acc += v
    if OP == "max":
        tl.store(out_ptr + row, tl.max(acc, axis=0))
    else:
        tl.store(out_ptr + row, tl.sum(acc, axis=0))


@triton.jit
def layernorm_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, stride, n_cols, eps,
                     BLOCK: tl.constexpr, RMS: tl.constexpr):
    row = tl.program_id(0)
    x_ptr += row * stride
    y_ptr += row * stride
    mean = 0.0
    if not RMS:
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        mean = tl.sum(acc, axis=0) / n_cols
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        d = tl.where(cols < n_cols, x - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n_cols + eps)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask).to(tl.float32)
        y = (x - mean) * rstd * w
        if not RMS:
            y += tl.load(b_ptr + cols, mask=mask).to(tl.float32)
        tl.store(y_ptr + cols, y, mask=mask)


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                  ACT: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: neighbouring programs share A rows and B columns in L2.
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        av = tl.load(a, mask=(rm[:, None] < M) & (rk[None, :] < k_left), other=0.0)
        bv = tl.load(b, mask=(rk[:, None] < k_left) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(av, bv, acc)
        a += BLOCK_K * stride_ak
        b += BLOCK_K * stride_bk
    acc = _activation(acc, ACT)
    c = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


# ---------------------------------------------------------------- variants

_MOD = __name__
DTYPES = ("fp32", "fp16", "bf16")


def _ptrs(dtype: str, *names: str) -> dict[str, str]:
    return {n: f"*{dtype}" for n in names}


def _ew_binary() -> Iterator[dict[str, Any]]:
    for op, act, dt, block, warps in itertools.product(("add", "mul", "sub"), ACTIVATIONS, DTYPES,
                                                       (512, 1024, 2048), (4, 8)):
        yield dict(fn=f"{_MOD}:ew_binary_kernel",
                   signature={**_ptrs(dt, "x_ptr", "y_ptr", "out_ptr"), "n_elements": "i32"},
                   constexprs={"BLOCK": block, "OP": op, "ACT": act}, options={"num_warps": warps},
                   divisibility=["x_ptr", "y_ptr", "out_ptr"])


def _bias_act() -> Iterator[dict[str, Any]]:
    for has_bias, scale, act, dt, block in itertools.product((True, False), (True, False), ACTIVATIONS, DTYPES,
                                                             (256, 1024)):
        yield dict(fn=f"{_MOD}:bias_act_kernel",
                   signature={**_ptrs(dt, "x_ptr", "bias_ptr", "out_ptr"), "n_elements": "i32", "n_cols": "i32",
                              "scale": "fp32"},
                   constexprs={"BLOCK": block, "HAS_BIAS": has_bias, "ACT": act, "SCALE": scale},
                   options={"num_warps": 4}, divisibility=["x_ptr", "bias_ptr", "out_ptr"])


def _softmax() -> Iterator[dict[str, Any]]:
    for dt, block, warps in itertools.product(DTYPES, (256, 512, 1024, 2048, 4096), (4, 8)):
        yield dict(fn=f"{_MOD}:softmax_kernel",
                   signature={**_ptrs(dt, "out_ptr", "in_ptr"), "in_stride": "i32", "out_stride": "i32",
                              "n_cols": "i32"},
                   constexprs={"BLOCK": block}, options={"num_warps": warps},
                   divisibility=["out_ptr", "in_ptr", "in_stride", "out_stride"])


def _row_reduce() -> Iterator[dict[str, Any]]:
    for op, dt, block, warps in itertools.product(("sum", "max", "sumsq"), DTYPES, (256, 1024), (2, 4)):
        yield dict(fn=f"{_MOD}:row_reduce_kernel",
                   signature={"x_ptr": f"*{dt}", "out_ptr": "*fp32", "stride": "i32", "n_cols": "i32"},
                   constexprs={"BLOCK": block, "OP": op}, options={"num_warps": warps},
                   divisibility=["x_ptr", "out_ptr", "stride"])


def _layernorm() -> Iterator[dict[str, Any]]:
    for rms, dt, block, warps in itertools.product((False, True), DTYPES, (512, 1024, 2048), (4, 8)):
        yield dict(fn=f"{_MOD}:layernorm_kernel",
                   signature={**_ptrs(dt, "x_ptr", "y_ptr", "w_ptr", "b_ptr"), "mean_ptr": "*fp32",
                              "rstd_ptr": "*fp32", "stride": "i32", "n_cols": "i32", "eps": "fp32"},
                   constexprs={"BLOCK": block, "RMS": rms}, options={"num_warps": warps},
                   divisibility=["x_ptr", "y_ptr", "w_ptr", "b_ptr", "stride"])


def _matmul() -> Iterator[dict[str, Any]]:
    tiles = ((64, 64, 32), (128, 64, 32), (64, 128, 32), (128, 128, 32), (128, 128, 64), (64, 64, 64))
    for (bm, bn, bk), dt, act, warps, stages in itertools.product(tiles, DTYPES, ("none", "relu"), (4, 8), (2, 3)):
        yield dict(fn=f"{_MOD}:matmul_kernel",
                   signature={"a_ptr": f"*{dt}", "b_ptr": f"*{dt}", "c_ptr": f"*{dt}", "M": "i32", "N": "i32",
                              "K": "i32", "stride_am": "i32", "stride_ak": "i32", "stride_bk": "i32",
                              "stride_bn": "i32", "stride_cm": "i32", "stride_cn": "i32"},
                   constexprs={"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "ACT": act},
                   options={"num_warps": warps, "num_stages": stages},
                   divisibility=["a_ptr", "b_ptr", "c_ptr", "stride_am", "stride_bk", "stride_cm"])


FAMILIES = (_ew_binary, _softmax, _matmul, _row_reduce, _layernorm, _bias_act)


def sample_specs(n: int, target: str = "cuda:90", *, seed: int = 0) -> list[KernelSpec]:
    """``n`` distinct specs for ``target``, one kernel family after another.

    Each family's variants are shuffled with ``seed`` so a short prefix still
    mixes dtypes, block sizes and warp counts; the result is deterministic.
    Raises ValueError when ``n`` exceeds the variants available (over 700).
    """
    if n < 0:
        raise ValueError("n must be non-negative")
    rng = random.Random(seed)
    pools: list[list[dict[str, Any]]] = []
    for family in FAMILIES:
        variants = list(family())
        rng.shuffle(variants)
        pools.append(variants)
    out: list[KernelSpec] = []
    seen: set[str] = set()
    for group in itertools.zip_longest(*pools):
        for fields in group:
            if fields is None:
                continue
            spec = KernelSpec(target=target, **fields)
            if spec.key() in seen:
                continue
            seen.add(spec.key())
            out.append(spec)
            if len(out) == n:
                return out
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct sample kernels exist; asked for {n}")
    return out
