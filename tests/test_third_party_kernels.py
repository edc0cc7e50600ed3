"""A real third-party kernel package (liger-kernel) through record,
precompile, bundle, restore and the frozen JIT, with no GPU: Triton's own JIT
specialises and keys liger's kernels as launched by liger's own Python code
(:mod:`liger_launches`, the stand-in driver of :mod:`standin`).

The GPU run of the same path, with launches and timings, is
``tests/gpu/liger_e2e.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import standin

pytest.importorskip("torch")
pytest.importorskip("liger_kernel")

from pyruntime import TritonBundle  # noqa: E402
from pyruntime.kernels import load_kernel_list  # noqa: E402

pytestmark = pytest.mark.timeout(420)

RECORD = """
import json
import liger_launches as L, pyruntime
L.install()
with pyruntime.record_launches({path!r}):
    for name, fn in L.launches():
        fn()
print(json.dumps({{"launched": len(L.launches())}}))
"""

FROZEN = """
import json
import liger_launches as L, pyruntime
from pyruntime.errors import JITCompileError
L.install()
errors, left = [], None
with pyruntime.freeze(mode="error"):
    for name, fn in L.launches():
        try:
            fn()
        except JITCompileError as e:
            errors.append(f"{name}: {e}")
    try:
        L.launches(hidden=(1000,))[0][1]()  # RMSNorm over 1000 columns: no bundled kernel fits
    except JITCompileError as e:
        left = str(e)
print(json.dumps({"errors": errors, "left": left}))
"""


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_liger_kernels_recorded_precompiled_restored_and_frozen(tmp_path: Path) -> None:
    jit_cache, kernels = tmp_path / "jit-cache", tmp_path / "liger.toml"
    rec = standin.run(RECORD.format(path=str(kernels)), tmp_path, env={"TRITON_CACHE_DIR": str(jit_cache)})
    jit_keys = standin.cache_dirs(jit_cache)
    specs = load_kernel_list(kernels)
    assert rec["launched"] == 16 and len(jit_keys) == 16 and len(specs) == 16
    assert {s.fn.split(":")[0] for s in specs} == {f"liger_kernel.ops.{m}" for m in
                                                   ("rms_norm", "layer_norm", "swiglu", "geglu")}

    # the recorded list, built by the CLI with no GPU: exactly the JIT's keys
    build, bundle = tmp_path / "build-cache", tmp_path / "liger.prtb"
    env = dict(os.environ, TRITON_DEFAULT_FP_FUSION="1", CUDA_VISIBLE_DEVICES="")
    env.pop("TRITON_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "pyruntime", "precompile", str(kernels), "--target", "cuda:90",
                           "--cache-dir", str(build), "--bundle", str(bundle), "--no-host-code", "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert standin.cache_dirs(build) == jit_keys

    # restored into an empty cache: every launch loads, nothing is written; a left-out shape is refused
    restored = tmp_path / "restored"
    TritonBundle.load(bundle).restore(cache_dir=restored, on_mismatch="error")
    before = _files(restored)
    res = standin.run(FROZEN, tmp_path, env={"TRITON_CACHE_DIR": str(restored)})
    assert res["errors"] == []
    left = res["left"]
    assert left and "_rms_norm_forward_kernel" in left and "divisibility" in left, left
    assert _files(restored) == before
