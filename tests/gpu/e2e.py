"""End to end on a real GPU: kernels precompiled without a GPU, bundled,
restored into an empty Triton cache on the GPU machine, launched, checked
against torch, with proof that no JIT compile happened.

    python tests/gpu/e2e.py build OUT_DIR      # here: no GPU, Triton = the GPU machine's
    python tests/gpu/e2e.py run BUNDLE         # there: restore, launch, compare, prove
    python tests/gpu/e2e.py scale              # there: precompile target=local, W = 1, 4, 16

Each launch below is described once (``LAUNCHES``); the build step derives
the KernelSpec from the launch's arguments with the JIT's own specialisation
rules (16-byte aligned pointers and ints divisible by 16 get
``tt.divisibility=16``, an int equal to 1 becomes a constexpr), so the
precompiled cache key is the one Triton's JIT computes at launch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

KERNELS = "pyruntime.bench.kernels"


@dataclass
class Arg:
    """One launch argument: a tensor (``shape``, ``dtype``), an int or a float."""

    name: str
    kind: str  # "tensor", "int", "float"
    value: Any = None  # int/float value; for tensors: shape
    dtype: str = "fp32"  # tensors: fp16 | fp32
    role: str = "in"  # tensors: in | out
    view_cols: int | None = None  # tensors: a [:, :view_cols] view of a wider buffer


@dataclass
class Launch:
    label: str
    kernel: str
    args: list[Arg]
    constexprs: dict[str, Any]
    grid: tuple[int, ...]
    reference: str  # name of the torch reference below
    options: dict[str, Any] = field(default_factory=lambda: {"num_warps": 4})


def _t(name, shape, dtype, role="in", view_cols=None):
    return Arg(name, "tensor", shape, dtype, role, view_cols)


def _i(name, v):
    return Arg(name, "int", v)


def _f(name, v):
    return Arg(name, "float", v)


def _ew(label, op, act, dt, block, warps):
    n = 100003  # not a multiple of 16: no divisibility on n_elements
    return Launch(label, "ew_binary_kernel",
                  [_t("x_ptr", (n,), dt), _t("y_ptr", (n,), dt), _t("out_ptr", (n,), dt, "out"), _i("n_elements", n)],
                  {"BLOCK": block, "OP": op, "ACT": act}, ((n + block - 1) // block,), "ew_binary",
                  {"num_warps": warps})


def _matmul(label, dt, tiles, act, warps, stages):
    m, n, k = 500, 300, 200
    bm, bn, bk = tiles
    return Launch(label, "matmul_kernel",
                  [_t("a_ptr", (m, k), dt), _t("b_ptr", (k, n), dt), _t("c_ptr", (m, n), dt, "out"),
                   _i("M", m), _i("N", n), _i("K", k), _i("stride_am", k), _i("stride_ak", 1),
                   _i("stride_bk", n), _i("stride_bn", 1), _i("stride_cm", n), _i("stride_cn", 1)],
                  {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "ACT": act},
                  (((m + bm - 1) // bm) * ((n + bn - 1) // bn),), "matmul",
                  {"num_warps": warps, "num_stages": stages})


LAUNCHES = [
    _ew("ew add relu fp16", "add", "relu", "fp16", 1024, 4),
    _ew("ew mul gelu fp32", "mul", "gelu", "fp32", 2048, 8),
    _ew("ew sub silu fp16", "sub", "silu", "fp16", 512, 4),
    _ew("ew add sigmoid fp32", "add", "sigmoid", "fp32", 1024, 4),
    Launch("bias+act fp16", "bias_act_kernel",
           [_t("x_ptr", (333, 96), "fp16"), _t("bias_ptr", (96,), "fp16"), _t("out_ptr", (333, 96), "fp16", "out"),
            _i("n_elements", 333 * 96), _i("n_cols", 96), _f("scale", 0.5)],
           {"BLOCK": 1024, "HAS_BIAS": True, "ACT": "silu", "SCALE": True}, ((333 * 96 + 1023) // 1024,), "bias_act"),
    Launch("softmax fp16", "softmax_kernel",
           [_t("out_ptr", (257, 1024), "fp16", "out", 1000), _t("in_ptr", (257, 1024), "fp16", "in", 1000),
            _i("in_stride", 1024), _i("out_stride", 1024), _i("n_cols", 1000)],
           {"BLOCK": 1024}, (257,), "softmax"),
    Launch("softmax fp32", "softmax_kernel",
           [_t("out_ptr", (129, 800), "fp32", "out", 777), _t("in_ptr", (129, 800), "fp32", "in", 777),
            _i("in_stride", 800), _i("out_stride", 800), _i("n_cols", 777)],
           {"BLOCK": 1024}, (129,), "softmax", {"num_warps": 8}),
    Launch("row sum fp32", "row_reduce_kernel",
           [_t("x_ptr", (130, 5000), "fp32"), _t("out_ptr", (130,), "fp32", "out"), _i("stride", 5000),
            _i("n_cols", 5000)], {"BLOCK": 1024, "OP": "sum"}, (130,), "row_reduce"),
    Launch("row max fp16", "row_reduce_kernel",
           [_t("x_ptr", (130, 5000), "fp16"), _t("out_ptr", (130,), "fp32", "out"), _i("stride", 5000),
            _i("n_cols", 5000)], {"BLOCK": 256, "OP": "max"}, (130,), "row_reduce", {"num_warps": 2}),
    Launch("layernorm fp16", "layernorm_kernel",
           [_t("x_ptr", (64, 1024), "fp16", "in", 1000), _t("y_ptr", (64, 1024), "fp16", "out", 1000),
            _t("w_ptr", (1000,), "fp16"), _t("b_ptr", (1000,), "fp16"), _t("mean_ptr", (64,), "fp32", "out"),
            _t("rstd_ptr", (64,), "fp32", "out"), _i("stride", 1024), _i("n_cols", 1000), _f("eps", 1e-5)],
           {"BLOCK": 512, "RMS": False}, (64,), "layernorm"),
    Launch("rmsnorm fp32", "layernorm_kernel",
           [_t("x_ptr", (64, 1024), "fp32", "in", 1000), _t("y_ptr", (64, 1024), "fp32", "out", 1000),
            _t("w_ptr", (1000,), "fp32"), _t("b_ptr", (1000,), "fp32"), _t("mean_ptr", (64,), "fp32", "out"),
            _t("rstd_ptr", (64,), "fp32", "out"), _i("stride", 1024), _i("n_cols", 1000), _f("eps", 1e-5)],
           {"BLOCK": 1024, "RMS": True}, (64,), "layernorm", {"num_warps": 8}),
    _matmul("matmul fp16 64x64x32", "fp16", (64, 64, 32), "none", 4, 2),
    _matmul("matmul fp16 128x128x64 relu", "fp16", (128, 128, 64), "relu", 8, 3),
    _matmul("matmul fp16 128x64x32", "fp16", (128, 64, 32), "none", 4, 3),
]


def spec_for(launch: Launch, target: str):
    """The KernelSpec the JIT will look up for this launch (its specialisation rules)."""
    from pyruntime.kernels import KernelSpec

    signature, constexprs, div = {}, dict(launch.constexprs), []
    for a in launch.args:
        if a.kind == "tensor":
            signature[a.name] = f"*{a.dtype}"
            div.append(a.name)  # torch allocations are 256-byte aligned
        elif a.kind == "int":
            if a.value == 1:
                constexprs[a.name] = 1
            else:
                signature[a.name] = "i32" if -2**31 <= a.value < 2**31 else "i64"
                if a.value % 16 == 0:
                    div.append(a.name)
        else:
            signature[a.name] = "fp32"
    return KernelSpec(fn=f"{KERNELS}:{launch.kernel}", signature=signature, constexprs=constexprs,
                      options=dict(launch.options), divisibility=div, target=target, name=launch.label)


# ------------------------------------------------------------------ build
def build(out_dir: str) -> dict[str, Any]:
    import importlib.metadata as md

    from pyruntime import collect_dir
    from pyruntime.precompile import precompile

    cache = os.path.join(out_dir, "cache")
    os.makedirs(cache, exist_ok=True)
    specs = [spec_for(la, "cuda:90") for la in LAUNCHES]
    t0 = time.perf_counter()
    results = precompile(specs, workers=2, cache_dir=cache, progress=False)
    wall = time.perf_counter() - t0
    failed = [(r.spec.label(), r.error) for r in results if r.error]
    if failed:
        raise SystemExit(f"precompile failed: {failed}")
    hashes = [r.cache_key for r in results]
    bundle = collect_dir(cache, hashes)
    path = os.path.join(out_dir, "kernels.prtb")
    size = bundle.save(path)
    info = {"kernels": len(specs), "distinct_cache_keys": len(set(hashes)), "precompile_wall_s": round(wall, 2),
            "bundle_bytes": size, "triton": md.version("triton"), "keys": dict(zip([la.label for la in LAUNCHES], hashes))}
    with open(os.path.join(out_dir, "build.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


# ------------------------------------------------------------------- run
def _refs() -> dict[str, Callable[..., None]]:
    import torch

    def act(x, name):
        return {"none": lambda v: v, "relu": torch.relu, "gelu": lambda v: v * torch.sigmoid(1.702 * v),
                "silu": lambda v: v * torch.sigmoid(v), "sigmoid": torch.sigmoid}[name](x)

    def ew_binary(t, c):
        x, y = t["x_ptr"].float(), t["y_ptr"].float()
        z = {"add": x + y, "mul": x * y, "sub": x - y}[c["OP"]]
        return {"out_ptr": act(z, c["ACT"])}

    def bias_act(t, c):
        x = t["x_ptr"].float() + t["bias_ptr"].float()
        return {"out_ptr": act(x * 0.5, c["ACT"])}

    def softmax(t, c):
        return {"out_ptr": torch.softmax(t["in_ptr"].float(), dim=-1)}

    def row_reduce(t, c):
        x = t["x_ptr"].float()
        return {"out_ptr": {"sum": x.sum(-1), "max": x.amax(-1), "sumsq": (x * x).sum(-1)}[c["OP"]]}

    def layernorm(t, c):
        x = t["x_ptr"].float()
        mean = torch.zeros(x.shape[0], device=x.device) if c["RMS"] else x.mean(-1)
        rstd = 1.0 / torch.sqrt(((x - mean[:, None]) ** 2).mean(-1) + 1e-5)
        y = (x - mean[:, None]) * rstd[:, None] * t["w_ptr"].float()
        if not c["RMS"]:
            y = y + t["b_ptr"].float()
        return {"y_ptr": y, "mean_ptr": mean, "rstd_ptr": rstd}

    def matmul(t, c):
        return {"c_ptr": act(t["a_ptr"].float() @ t["b_ptr"].float(), c["ACT"])}

    return locals()


def _launch_one(launch: Launch, refs: dict[str, Callable[..., Any]]) -> dict[str, Any]:
    import torch

    import pyruntime.bench.kernels as K

    dt = {"fp16": torch.float16, "fp32": torch.float32}
    gen = torch.Generator(device="cuda").manual_seed(0)
    tensors, call = {}, []
    for a in launch.args:
        if a.kind == "tensor":
            buf = torch.randn(a.value, dtype=dt[a.dtype], device="cuda", generator=gen)
            if a.role == "out":
                buf.zero_()
            t = buf[:, : a.view_cols] if a.view_cols else buf
            tensors[a.name] = t
            call.append(buf)  # the kernel gets the base pointer; strides come as ints
        else:
            call.append(a.value)
    fn = getattr(K, launch.kernel)
    t0 = time.perf_counter()
    fn[launch.grid](*call, **launch.constexprs, **launch.options)
    torch.cuda.synchronize()
    first_launch_ms = (time.perf_counter() - t0) * 1e3
    expect = refs[launch.reference](tensors, launch.constexprs)
    worst = 0.0
    ok = True
    for name, ref in expect.items():
        got = tensors[name].float()
        half = any(a.name == name and a.dtype == "fp16" for a in launch.args)
        rtol, atol = (1e-2, 1e-2) if half else (1e-4, 1e-4)
        try:
            torch.testing.assert_close(got, ref.to(got.device), rtol=rtol, atol=atol)
        except AssertionError as e:
            ok = False
            print(f"MISMATCH {launch.label} {name}: {str(e).splitlines()[0:4]}", file=sys.stderr)
        rel = ((got - ref).abs() / (ref.abs() + atol)).max().item()
        worst = max(worst, rel)
    return {"label": launch.label, "ok": ok, "max_rel_err": worst, "first_launch_ms": round(first_launch_ms, 2)}


def run(bundle_path: str) -> dict[str, Any]:
    import tempfile

    cache = tempfile.mkdtemp(prefix="triton-cache-")
    os.environ["TRITON_CACHE_DIR"] = cache  # before anything imports triton
    from pyruntime import TritonBundle, hash_dir
    from pyruntime import core as native

    t0 = time.perf_counter()
    bundle = TritonBundle.load(bundle_path)
    res = bundle.restore(cache_dir=cache, on_mismatch="error")
    restore_ms = (time.perf_counter() - t0) * 1e3
    before_dirs = sorted(os.listdir(cache))
    before = hash_dir(cache)
    digests_before = {d: hash_dir(os.path.join(cache, d)) for d in before_dirs}

    import torch
    import triton

    refs = _refs()
    results = [_launch_one(la, refs) for la in LAUNCHES]
    after_dirs = sorted(os.listdir(cache))
    after = hash_dir(cache)
    new_dirs = sorted(set(after_dirs) - set(before_dirs))
    # A JIT compile writes a kernel directory (a .cubin and a __grp__*.json);
    # Triton also builds host-side launcher stubs (.so, compiled by gcc for this
    # machine's Python and driver) into the same cache on first use.
    new_kernels, new_other = [], {}
    for d in new_dirs:
        files = sorted(os.listdir(os.path.join(cache, d)))
        if any(f.endswith(".cubin") or f.startswith("__grp__") for f in files):
            new_kernels.append(d)
        else:
            new_other[d] = files
    changed = [d for d in before_dirs if d in after_dirs and
               hash_dir(os.path.join(cache, d)) != digests_before[d]]
    return {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "pyruntime_backend": native.BACKEND, "restored_kernels": len(before_dirs), "restore_ms": round(restore_ms, 2),
        "restore_result": repr(res)[:300],
        "cache_digest_before": before, "cache_digest_after": after, "cache_unchanged": before == after,
        "new_cache_entries": len(new_dirs), "new_kernel_dirs": new_kernels,
        "new_non_kernel_entries": new_other, "restored_kernel_dirs_changed": changed,
        "no_jit_compile": not new_kernels and not changed, "all_correct": all(r["ok"] for r in results), "launches": results,
        "TRITON_env": {k: v for k, v in os.environ.items() if k.startswith("TRITON")},
    }


def scale() -> dict[str, Any]:
    import shutil
    import tempfile

    from pyruntime.precompile import precompile

    specs = [spec_for(la, "local") for la in LAUNCHES]
    from pyruntime.bench.kernels import sample_specs

    specs += sample_specs(36, "local")
    out = {"kernels": len(specs), "runs": []}
    for w in (1, 4, 16):
        cache = tempfile.mkdtemp(prefix=f"scale-{w}-")
        t0 = time.perf_counter()
        results = precompile(specs, workers=w, cache_dir=cache, progress=False)
        wall = time.perf_counter() - t0
        errs = [r.error for r in results if r.error]
        out["runs"].append({"workers": w, "wall_s": round(wall, 2), "kernels_per_s": round(len(specs) / wall, 2),
                            "sum_compile_s": round(sum(r.compile_time_s for r in results), 2),
                            "failed": len(errs), "first_error": errs[0][:300] if errs else None})
        shutil.rmtree(cache, ignore_errors=True)
    base = out["runs"][0]["wall_s"]
    for r in out["runs"]:
        r["speedup_vs_1"] = round(base / r["wall_s"], 2)
    return out


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "build":
        print(json.dumps(build(sys.argv[2]), indent=2))
    elif cmd == "run":
        print(json.dumps(run(sys.argv[2]), indent=2))
    elif cmd == "scale":
        print(json.dumps(scale(), indent=2))
    else:
        raise SystemExit(__doc__)
