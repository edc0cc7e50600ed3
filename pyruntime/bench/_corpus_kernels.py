"""A handful of real Triton kernels used to seed the bench's cache corpus.

They are compiled for ``GPUTarget("cuda", 90, 32)`` (no GPU needed) and the
resulting cache directories are replicated (see ``_corpus``). Importing this
module imports triton; only the corpus builder's child process does that.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x + y, mask=mask)


@triton.jit
def gelu_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def softmax_kernel(out_ptr, in_ptr, in_stride, out_stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(in_ptr + row * in_stride + cols, mask=mask, other=-float("inf")).to(tl.float32)
    x = x - tl.max(x, axis=0)
    num = tl.exp(x)
    y = num / tl.sum(num, axis=0)
    tl.store(out_ptr + row * out_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def layer_norm_kernel(x_ptr, y_ptr, w_ptr, b_ptr, stride, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=mask)
    b = tl.load(b_ptr + cols, mask=mask)
    tl.store(y_ptr + row * stride + cols, (xc * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def sum_rows_kernel(x_ptr, out_ptr, stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + row * stride + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    tl.store(out_ptr + row, tl.sum(acc, axis=0))


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                  stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        acc += tl.dot(tl.load(a), tl.load(b))
        a += BLOCK_K * stride_ak
        b += BLOCK_K * stride_bk
    c = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def _sig(**kw: str) -> dict[str, str]:
    return dict(kw)


_MM = _sig(a_ptr="*fp16", b_ptr="*fp16", c_ptr="*fp16", M="i32", N="i32", K="i32",
           stride_am="i32", stride_ak="i32", stride_bk="i32", stride_bn="i32",
           stride_cm="i32", stride_cn="i32")

# (function, signature, constexprs, options)
SEEDS: list[tuple[Any, dict[str, str], dict[str, Any], dict[str, Any]]] = [
    (add_kernel, _sig(x_ptr="*fp32", y_ptr="*fp32", out_ptr="*fp32", n="i32"), {"BLOCK": 1024}, {}),
    (add_kernel, _sig(x_ptr="*fp16", y_ptr="*fp16", out_ptr="*fp16", n="i32"), {"BLOCK": 256}, {}),
    (gelu_kernel, _sig(x_ptr="*bf16", out_ptr="*bf16", n="i32"), {"BLOCK": 2048}, {"num_warps": 8}),
    (softmax_kernel, _sig(out_ptr="*fp16", in_ptr="*fp16", in_stride="i32", out_stride="i32",
                          n_cols="i32"), {"BLOCK": 1024}, {"num_warps": 4}),
    (layer_norm_kernel, _sig(x_ptr="*fp16", y_ptr="*fp16", w_ptr="*fp32", b_ptr="*fp32",
                             stride="i32", n_cols="i32", eps="fp32"), {"BLOCK": 2048},
     {"num_warps": 8}),
    (sum_rows_kernel, _sig(x_ptr="*fp32", out_ptr="*fp32", stride="i32", n_cols="i32"),
     {"BLOCK": 512}, {}),
    (matmul_kernel, _MM, {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, {"num_warps": 4,
                                                                       "num_stages": 3}),
    (matmul_kernel, _MM, {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, {"num_warps": 8,
                                                                         "num_stages": 4}),
]


def compile_seed(i: int) -> str:
    """Compile seed ``i`` for cuda:90 into TRITON_CACHE_DIR; returns its hash."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, sig, consts, opts = SEEDS[i]
    full = dict(sig)
    for k in consts:
        full[k] = "constexpr"
    src = ASTSource(fn=fn, signature=full, constexprs=dict(consts))
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(opts))
    return kernel.hash
