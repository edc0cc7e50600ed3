"""Helpers for the torch integration tests (workers import them by name).

Triton compiles a kernel for an explicit GPUTarget without any GPU; only
Inductor's driver selection (``set_driver_to_gpu``) insists on a device.
:func:`allow_gpu_compile_without_gpu` turns that one check into a no-op so
the real Inductor compile path runs here; the sidecar of a test pool imports
this module (``preload``) to do the same in its workers.
"""

from __future__ import annotations

import functools
import os

from torch._inductor.runtime import triton_helpers


def allow_gpu_compile_without_gpu() -> None:
    triton_helpers.set_driver_to_gpu = lambda: None


allow_gpu_compile_without_gpu()  # on import: in a sidecar before it forks


def kernel_source(kernel_name: str = "triton_poi_fused_add_0", scale: int = 2) -> str:
    """An Inductor-style pointwise kernel (as Inductor's codegen writes one)
    for sm_90; ``scale`` makes distinct kernels."""
    return f'''
import triton
import triton.language as tl
from torch._inductor.runtime import triton_helpers, triton_heuristics
from torch._inductor.runtime.triton_helpers import libdevice, math as tl_math
from torch._inductor.runtime.hints import AutotuneHint, ReductionHint, TileHint, DeviceProperties

@triton_heuristics.pointwise(
    size_hints={{'x': 1024}},
    filename=__file__,
    triton_meta={{'signature': {{'in_ptr0': '*fp32', 'out_ptr0': '*fp32', 'xnumel': 'i32', 'XBLOCK': 'constexpr'}}, 'device': DeviceProperties(type='cuda', index=0, multi_processor_count=132, cc=90, major=9, regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048, max_threads_per_block=1024, warp_size=32), 'constants': {{}}, 'configs': [{{(0,): [['tt.divisibility', 16]], (1,): [['tt.divisibility', 16]], (2,): [['tt.divisibility', 16]]}}]}},
    inductor_meta={{'grid_type': 'Grid1D', 'kernel_name': '{kernel_name}', 'mutated_arg_names': [], 'optimize_mem': True, 'no_x_dim': False, 'num_load': 1, 'num_reduction': 0, 'backend_hash': 'X', 'assert_indirect_indexing': True, 'autotune_local_cache': True, 'autotune_pointwise': True, 'autotune_remote_cache': None, 'force_disable_caches': False, 'dynamic_scale_rblock': True, 'max_autotune': False, 'max_autotune_pointwise': False, 'min_split_scan_rblock': 256, 'spill_threshold': 16, 'store_cubin': False}},
    min_elem_per_thread=0
)
@triton.jit
def {kernel_name}(in_ptr0, out_ptr0, xnumel, XBLOCK : tl.constexpr):
    xnumel = 1024
    xoffset = tl.program_id(0) * XBLOCK
    xindex = xoffset + tl.arange(0, XBLOCK)[:]
    xmask = xindex < xnumel
    x0 = xindex
    tmp0 = tl.load(in_ptr0 + (x0), xmask)
    tmp1 = tmp0 * {scale}
    tl.store(out_ptr0 + (x0), tmp1, xmask)
'''


def compile_kernel(kernel_name: str, source: str) -> list[str]:
    """Compile like an Inductor worker does; returns the kernels' cache keys
    (Triton cache directory names)."""
    from torch._inductor.codecache import _load_triton_kernel_from_source
    from torch._inductor.runtime.compile_tasks import _worker_compile_triton

    kernel, _us = _worker_compile_triton(
        functools.partial(_load_triton_kernel_from_source, kernel_name, source), {}, {})
    return cache_keys(kernel)


def cache_keys(kernel) -> list[str]:
    from torch._inductor.runtime.runtime_utils import triton_hash_to_path_key

    return [triton_hash_to_path_key(r.kernel.hash) for r in kernel.compile_results]


def failing_job(msg: str) -> None:
    raise ValueError(msg)


def getpid() -> int:
    return os.getpid()


def snapshot(root: str) -> dict[str, tuple[bytes, int]]:
    """Every file under root: relative path -> (bytes, mtime_ns)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (f.read(), os.stat(p).st_mtime_ns)
    return out
