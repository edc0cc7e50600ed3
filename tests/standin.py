"""Triton's real JIT on a machine with no GPU, for the freeze and record tests.

The JIT asks its driver only "which device, which stream, which target"
before it compiles, so a stand-in driver that answers those lets
``kernel.warmup(...)`` run Triton's real specialisation, cache key, hooks,
cache lookup and compile (without launching). Scripts run in a subprocess
(``run``): the active driver, ``knobs`` hooks and the JIT's in-memory kernel
cache are per process.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)


@triton.jit
def bias_kernel(x_ptr, bias_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m)
    if bias_ptr is not None:
        x += tl.load(bias_ptr + offs, mask=m)
    tl.store(out_ptr + offs, x, mask=m)


@triton.jit(do_not_specialize=["n"], do_not_specialize_on_alignment=["x_ptr"])
def dns_kernel(x_ptr, out_ptr, n, stride, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs * stride, mask=m), mask=m)


@triton.jit
def ann_kernel(x_ptr, out_ptr, n: tl.int64, scale: tl.float32, BLOCK: tl.constexpr, ACT: tl.constexpr = "none"):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m) * scale
    if ACT == "relu":
        x = tl.maximum(x, 0.0)
    tl.store(out_ptr + offs, x, mask=m)


def make_local():
    """A kernel defined inside a function: no kernel list can name it."""
    @triton.jit
    def local_kernel(x_ptr, BLOCK: tl.constexpr):
        tl.store(x_ptr + tl.arange(0, BLOCK), 1.0)
    return local_kernel


@triton.autotune(configs=[triton.Config({"BLOCK": 64}, num_warps=2), triton.Config({"BLOCK": 128}, num_warps=4),
                          triton.Config({"BLOCK": 256}, num_warps=8)], key=["n"])
@triton.jit
def tuned_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) * 2, mask=m)
'''

ADD_SIG = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}


def write_kernels(directory: Path, module: str = "tkern") -> Path:
    p = Path(directory) / f"{module}.py"
    p.write_text(KERNELS)
    return p


class StandInDriver:
    """Answers what the JIT asks before compiling; nothing else."""

    def __init__(self, target: tuple[str, Any, int] = ("cuda", 90, 32)) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget(*target)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self) -> Any:
        return self.target

    def is_active(self) -> bool:
        return True


def install(target: tuple[str, Any, int] = ("cuda", 90, 32)) -> None:
    from triton.runtime import driver

    driver.set_active(StandInDriver(target))


def tensor(dtype: str = "fp32", aligned: bool = True) -> Any:
    """A tensor stand-in: ``aligned=False`` gives a pointer 8 bytes off 16."""
    import triton.language as tl
    from triton.runtime.jit import MockTensor

    class Unaligned(MockTensor):
        @staticmethod
        def data_ptr() -> int:
            return 8

    dt = {"fp32": tl.float32, "fp16": tl.float16}[dtype]
    return MockTensor(dt) if aligned else Unaligned(dt)


class InlineExecutor(cf.Executor):
    """Runs each job at submit time, in this process (precompile without a pool)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:  # type: ignore[override]
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:
            fut.set_exception(e)
        return fut


def cache_dirs(cache: str | os.PathLike[str]) -> set[str]:
    """Kernel directories (those with Triton's __grp__ file) in a cache."""
    out = set()
    for d in os.listdir(cache):
        p = os.path.join(cache, d)
        if os.path.isdir(p) and any(f.startswith("__grp__") for f in os.listdir(p)):
            out.add(d)
    return out


PRELUDE = '''
import json, os, sys, warnings
sys.path[:0] = [{here!r}, {kdir!r}]
warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
import standin
'''


def run(code: str, kdir: Path, env: dict[str, str] | None = None, timeout: float = 240) -> dict[str, Any]:
    """Run ``code`` (after a prelude that imports this module and puts
    ``kdir`` on sys.path) in a fresh interpreter; its last stdout line is JSON."""
    script = PRELUDE.format(here=HERE, kdir=str(kdir)) + textwrap.dedent(code)
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYRUNTIME_JIT", "PYRUNTIME_RECORD")}
    full_env.update(TRITON_DEFAULT_FP_FUSION="1", **(env or {}))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full_env,
                         timeout=timeout, cwd=str(kdir))
    assert out.returncode == 0, f"rc={out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])
