"""Kernel modules for the precompile-at-scale tests, written to a temporary
directory at test time and reached through ``python_path`` (never imported
by the test process).

Each module appends its process id to ``<module>.imports`` next to it every
time its top level runs, so a test can count the imports and see which
process made them. Options: ``sleep_s`` (a slow import: a build that is
still running when a test kills its worker), ``refuse_under`` (a process id:
the import raises in any process whose parent is that one, i.e. in the
sidecar of a pool the test process made, and works in the workers it forks),
``exit_in_forkserver`` (the import kills the process when it is a Dask fork
server preloading it).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from pyruntime.kernels import KernelSpec

MODULE = '''
import os
import time

if {exit_in_forkserver} and os.environ.get("PYRUNTIME_PRELOAD_WHERE") == "forkserver":
    os._exit(3)
if os.getppid() == {refuse_under}:
    raise RuntimeError("this module refuses to be imported by a direct child of the test process")
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "{name}.imports"), "a") as f:
    f.write(f"{{os.getpid()}}\\n")
time.sleep({sleep_s})

import triton
import triton.language as tl


@triton.jit
def axpy_kernel(x_ptr, y_ptr, out_ptr, alpha, n, BLOCK: tl.constexpr, RELU: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    z = alpha * tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask)
    if RELU:
        z = tl.maximum(z, 0.0)
    tl.store(out_ptr + offs, z, mask=mask)
'''

SIGNATURE = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "alpha": "fp32", "n": "i32"}


def write_module(directory: Path, name: str, *, sleep_s: float = 0.0, refuse_under: int = -1,
                 exit_in_forkserver: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(MODULE.format(name=name, sleep_s=sleep_s, refuse_under=refuse_under,
                                  exit_in_forkserver=exit_in_forkserver))
    return path


def imports_of(directory: Path, name: str) -> list[int]:
    """The process ids that ran the module's top level, in order."""
    log = directory / f"{name}.imports"
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def specs(directory: Path, name: str, n: int, target: str = "cuda:90") -> list[KernelSpec]:
    """``n`` distinct variants (BLOCK x num_warps x RELU) of the module's kernel."""
    combos = itertools.product((64, 128, 256, 512, 1024), (1, 2, 4, 8), (False, True))
    out = []
    for block, warps, relu in itertools.islice(combos, n):
        out.append(KernelSpec(fn=f"{name}:axpy_kernel", python_path=[str(directory)], signature=SIGNATURE,
                              constexprs={"BLOCK": block, "RELU": relu}, options={"num_warps": warps},
                              target=target))
    return out


def toml_list(directory: Path, name: str, n: int, extra: str = "") -> str:
    """The same ``n`` variants as a kernel-list file (python_path relative to ``directory``)."""
    lines = ['target = "cuda:90"', 'python_path = ["."]', ""]
    for s in specs(directory, name, n):
        c = s.constexprs
        lines += ["[[kernels]]", f'fn = "{s.fn}"',
                  'signature = { x_ptr = "*fp32", y_ptr = "*fp32", out_ptr = "*fp32", alpha = "fp32", n = "i32" }',
                  f"constexprs = {{ BLOCK = {c['BLOCK']}, RELU = {str(c['RELU']).lower()} }}",
                  f"options = {{ num_warps = {s.options['num_warps']} }}", ""]
    return "\n".join(lines) + extra
