"""The sample kernels behind a module whose import is expensive, as a
kernel package that imports torch is (``liger_kernel``: seconds).

Importing this module burns ``PYRUNTIME_BENCH_IMPORT_CPU_S`` seconds of CPU
(default 2.0; process CPU time, so a busy machine makes it slower in wall
time, as it would a real import) in a busy loop, then re-exports the
kernels of :mod:`pyruntime.bench.kernels`.
:func:`pyruntime.bench._compile_import.heavy_specs` gives specs whose ``fn``
names this module, so a build must import it: the compile suite's
import-once rows measure what that costs with W workers.
"""

from __future__ import annotations

import os
import time

from .kernels import (  # noqa: F401  (re-exported: specs name them through this module)
    bias_act_kernel,
    ew_binary_kernel,
    layernorm_kernel,
    matmul_kernel,
    row_reduce_kernel,
    softmax_kernel,
)

IMPORT_CPU_S = float(os.environ.get("PYRUNTIME_BENCH_IMPORT_CPU_S", "2.0"))


def _burn(seconds: float) -> int:
    start = time.process_time()
    n = 0
    while time.process_time() - start < seconds:
        for _ in range(10_000):
            n += 1
    return n


_burn(IMPORT_CPU_S)
