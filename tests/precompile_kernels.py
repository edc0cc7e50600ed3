"""Kernel sources for the precompile tests, written to files at test time so
specs reach them by ``source=`` (loaded with reload_python_module in the
workers, never imported by the test process)."""

from __future__ import annotations

from pathlib import Path

from pyruntime.kernels import KernelSpec

GOOD_SOURCE = '''
import triton
import triton.language as tl


@triton.jit
def scale_add(x_ptr, y_ptr, out_ptr, alpha, n, BLOCK: tl.constexpr, RELU: tl.constexpr = False):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    z = tl.load(x_ptr + offs, mask=mask) * alpha + tl.load(y_ptr + offs, mask=mask)
    if RELU:
        z = tl.maximum(z, 0.0)
    tl.store(out_ptr + offs, z, mask=mask)


@triton.jit
def row_max(x_ptr, out_ptr, stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * stride + cols, mask=cols < n_cols, other=-float("inf"))
    tl.store(out_ptr + row, tl.max(x, axis=0))


@triton.autotune(configs=[triton.Config({"BLOCK": 64})], key=["n"])
@triton.jit
def tuned_copy(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


not_a_kernel = 42
'''

# Triton rejects this at code generation: the diagnostic names the line.
BROKEN_SOURCE = '''
import triton
import triton.language as tl


@triton.jit
def broken_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, missing_name * 2, mask=offs < n)
'''

# Kills whichever process loads it: stands in for a compiler crash.
CRASH_SOURCE = '''
import os
os._exit(7)
'''

SCALE_ADD_SIG = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "alpha": "fp32", "n": "i32"}
ROW_MAX_SIG = {"x_ptr": "*fp16", "out_ptr": "*fp32", "stride": "i32", "n_cols": "i32"}


def write_sources(directory: Path) -> dict[str, Path]:
    paths = {}
    for name, text in (("good", GOOD_SOURCE), ("broken", BROKEN_SOURCE), ("crash", CRASH_SOURCE)):
        p = directory / f"{name}_kernels.py"
        p.write_text(text)
        paths[name] = p
    return paths


def good_specs(paths: dict[str, Path], target: str = "cuda:90") -> list[KernelSpec]:
    """Five distinct, valid specs."""
    good = str(paths["good"])
    return [
        KernelSpec(source=good, function="scale_add", signature=SCALE_ADD_SIG, constexprs={"BLOCK": 128},
                   target=target),
        KernelSpec(source=good, function="scale_add", signature=SCALE_ADD_SIG,
                   constexprs={"BLOCK": 256, "RELU": True}, options={"num_warps": 8}, target=target,
                   divisibility=["x_ptr", "y_ptr", "out_ptr"]),
        KernelSpec(source=good, function="row_max", signature=ROW_MAX_SIG, constexprs={"BLOCK": 256},
                   target=target),
        KernelSpec(source=good, function="row_max", signature=ROW_MAX_SIG, constexprs={"BLOCK": 512},
                   options={"num_warps": 2}, target=target),
        KernelSpec(source=good, function="tuned_copy", signature={"x_ptr": "*fp16", "out_ptr": "*fp16", "n": "i32"},
                   constexprs={"BLOCK": 64}, target=target),
    ]


def broken_spec(paths: dict[str, Path], target: str = "cuda:90") -> KernelSpec:
    return KernelSpec(source=str(paths["broken"]), function="broken_kernel", signature={"x_ptr": "*fp32", "n": "i32"},
                      constexprs={"BLOCK": 64}, target=target, name="broken")


def crash_spec(paths: dict[str, Path], target: str = "cuda:90") -> KernelSpec:
    return KernelSpec(source=str(paths["crash"]), function="anything", signature={"x_ptr": "*fp32"},
                      target=target, name="crasher")
