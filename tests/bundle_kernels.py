"""Small real Triton kernels for the bundle tests, compiled for
GPUTarget("cuda", 90, 32), which needs no GPU.

:func:`compile_samples` compiles them into a cache directory the way a
launcher would (``TRITON_CACHE_DIR`` pointing at it) and returns the kernel
directory names (the hashes the bundler records).
"""

from __future__ import annotations

import os
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
def scale_relu_kernel(x_ptr, out_ptr, alpha, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.maximum(x * alpha, 0.0), mask=mask)


@triton.jit
def row_sum_kernel(x_ptr, out_ptr, stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * stride + cols, mask=cols < n_cols, other=0.0)
    tl.store(out_ptr + row, tl.sum(x, axis=0))


@triton.jit
def softmax_kernel(x_ptr, out_ptr, stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=-float("inf"))
    x = x - tl.max(x, axis=0)
    e = tl.exp(x)
    tl.store(out_ptr + row * stride + cols, e / tl.sum(e, axis=0), mask=mask)


# (function, signature, constexprs)
SAMPLES: list[tuple[Any, dict[str, str], dict[str, Any]]] = [
    (add_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32",
                  "BLOCK": "constexpr"}, {"BLOCK": 1024}),
    (scale_relu_kernel, {"x_ptr": "*fp16", "out_ptr": "*fp16", "alpha": "fp32", "n": "i32",
                         "BLOCK": "constexpr"}, {"BLOCK": 512}),
    (row_sum_kernel, {"x_ptr": "*fp32", "out_ptr": "*fp32", "stride": "i32", "n_cols": "i32",
                      "BLOCK": "constexpr"}, {"BLOCK": 256}),
    (softmax_kernel, {"x_ptr": "*fp32", "out_ptr": "*fp32", "stride": "i32", "n_cols": "i32",
                      "BLOCK": "constexpr"}, {"BLOCK": 128}),
]


def compile_samples(cache_dir: str, samples: list | None = None, **options: Any) -> list[str]:
    """Compile ``samples`` (default :data:`SAMPLES`) for cuda:90 into
    ``cache_dir``; return the kernel directory names, in order."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    before = set(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else set()
    old = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    hashes = []
    try:
        for fn, signature, constexprs in samples or SAMPLES:
            triton.compile(ASTSource(fn, signature, constexprs),
                           target=GPUTarget("cuda", 90, 32), options=options or None)
            new = sorted(set(os.listdir(cache_dir)) - before - set(hashes))
            new = [d for d in new if not d.startswith("tmp.")]
            hashes.extend(new)
    finally:
        if old is None:
            del os.environ["TRITON_CACHE_DIR"]
        else:
            os.environ["TRITON_CACHE_DIR"] = old
    return hashes


_SHARED: dict[str, Any] = {}


def shared_cache(tmp_path_factory: Any) -> tuple[str, list[str]]:
    """A Triton cache with :data:`SAMPLES` compiled into it, made once per
    test session and shared by every bundle test module (read-only: tests
    copy or restore from it, never change it)."""
    if "cache" not in _SHARED:
        cache_dir = str(tmp_path_factory.mktemp("triton-cache"))
        _SHARED["cache"] = (cache_dir, compile_samples(cache_dir))
    return _SHARED["cache"]
