"""A precompiled kernel must land under the cache key Triton's JIT computes
when the kernel is launched; otherwise a launcher JIT-compiles anyway.

There is no GPU here, so Triton's JIT runs against a stand-in for the device
driver that only answers "which device, which stream, which target" (the JIT
asks nothing else before compiling), and ``warmup`` compiles without
launching. Everything else is Triton's real JIT: its argument
specialisation, cache key and compile. If the keys match, the JIT finds the
precompiled directory and writes nothing new to the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

pytestmark = pytest.mark.timeout(600)

SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    sys.path.insert(0, {gpu_dir!r})
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import MockTensor
    import e2e
    import pyruntime.bench.kernels as K
    from pyruntime.precompile import precompile

    class StandInDriver:
        def get_current_device(self): return 0
        def get_current_stream(self, device): return 0
        def get_current_target(self): return GPUTarget("cuda", 90, 32)
        def is_active(self): return True

    cache = os.environ["TRITON_CACHE_DIR"]
    launches = e2e.LAUNCHES
    results = precompile([e2e.spec_for(la, "cuda:90") for la in launches], workers=2, cache_dir=cache)
    assert not [r.error for r in results if r.error], [r.error for r in results if r.error]
    before = set(os.listdir(cache))
    driver.set_active(StandInDriver())
    dt = {{"fp16": tl.float16, "fp32": tl.float32}}
    for la in launches:
        args = [MockTensor(dt[a.dtype]) if a.kind == "tensor" else a.value for a in la.args]
        getattr(K, la.kernel).warmup(*args, grid=la.grid, **la.constexprs, **la.options)
    new = sorted(set(os.listdir(cache)) - before)
    print(json.dumps({{"kernels": len(launches), "new": new,
                      "keys": {{la.label: r.cache_key for la, r in zip(launches, results)}}}}))
    """
)


def test_precompiled_keys_match_the_jit(tmp_path):
    gpu_dir = os.path.join(os.path.dirname(__file__), "gpu")
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(gpu_dir=gpu_dir)], capture_output=True,
                         text=True, env=env, timeout=580)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["kernels"] >= 14
    assert report["new"] == [], f"the JIT compiled {len(report['new'])} kernels the precompile missed"


HAND_WRITTEN = '''
from pyruntime.kernels import KernelSpec
from pyruntime.precompile import precompile
from pyruntime.specialize import jit_unspecialised_attr

F, H = "*fp32", "*fp16"
specs = [
    # do_not_specialize=["n"]: no attribute entry for n, never the constexpr 1;
    # do_not_specialize_on_alignment=["x_ptr"]: an entry, never divisibility
    KernelSpec(fn="tkern:dns_kernel", signature={"x_ptr": F, "out_ptr": F, "n": "i32", "stride": "i32"},
               constexprs={"BLOCK": 64}, divisibility=["out_ptr", "stride"]),
    KernelSpec(fn="tkern:dns_kernel", signature={"x_ptr": F, "out_ptr": F, "n": "i32", "stride": "i32"},
               constexprs={"BLOCK": 64}, divisibility=["out_ptr"]),
    # annotations type the argument whatever its value; annotated floats get no entry
    KernelSpec(fn="tkern:ann_kernel", signature={"x_ptr": H, "out_ptr": H, "n": "i64", "scale": "fp32"},
               constexprs={"BLOCK": 128, "ACT": "relu"}, divisibility=["x_ptr", "out_ptr", "n"]),
    # None is the constexpr None; an int equal to 1 the constexpr 1
    KernelSpec(fn="tkern:bias_kernel", signature={"x_ptr": F, "out_ptr": F, "n": "i32"},
               constexprs={"BLOCK": 512, "bias_ptr": None}, divisibility=["x_ptr", "out_ptr", "n"]),
    KernelSpec(fn="tkern:add_kernel", signature={"x_ptr": F, "y_ptr": F, "out_ptr": F},
               constexprs={"BLOCK": 256, "n": 1}, divisibility=["x_ptr", "y_ptr", "out_ptr"]),
]
cache = os.environ["TRITON_CACHE_DIR"]
results = precompile(specs, pool=standin.InlineExecutor(), cache_dir=cache)
assert all(r.ok for r in results), [r.error for r in results]
before = standin.cache_dirs(cache)
standin.install()
import tkern
T, Hh = standin.tensor(), standin.tensor("fp16")
tkern.dns_kernel.warmup(T, T, 16, 16, BLOCK=64, grid=(1,))
tkern.dns_kernel.warmup(T, T, 1, 3, BLOCK=64, grid=(1,))
tkern.ann_kernel.warmup(Hh, Hh, 4096, 0.5, BLOCK=128, ACT="relu", grid=(1,))
tkern.bias_kernel.warmup(T, None, T, 4096, BLOCK=512, grid=(1,))
tkern.add_kernel.warmup(T, T, T, 1, BLOCK=256, grid=(1,))
print(json.dumps({"built": len(before), "new": sorted(standin.cache_dirs(cache) - before),
                  "rule": jit_unspecialised_attr()}))
'''


def test_do_not_specialize_annotations_none_and_ones_match_the_jit(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    import standin

    standin.write_kernels(tmp_path)
    report = standin.run(HAND_WRITTEN, tmp_path, env={"TRITON_CACHE_DIR": str(tmp_path / "cache")})
    assert report["built"] == 5
    assert report["rule"] is None  # the installed JIT gives a do_not_specialize argument no attribute entry
    assert report["new"] == [], f"the JIT compiled {len(report['new'])} kernels the precompile missed"
