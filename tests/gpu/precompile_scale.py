"""On the GPU machine: precompile wall time with W = 1, 4, 16 workers and no
GPU visible, for a real kernel package whose import is expensive (issue
"Precompile at fleet scale": kernel modules imported once).

    # there (Python 3.12, Triton 3.6, torch 2.11, pyruntime importable; no network)
    python3 tests/gpu/precompile_scale.py > precompile_scale.json 2> precompile_scale.err

What it does, all in child processes (this one never touches CUDA):

1. The kernel list. With ``liger_kernel`` installed (and a GPU), a child
   runs a few liger ops (RMSNorm, LayerNorm, SwiGLU, GEGLU, RoPE, cross
   entropy, fused linear cross entropy; forward and backward, two dtypes
   and two sizes) under ``pyruntime.record_launches``: the list holds the
   kernels they really launched, with their exact specialisations. Without
   liger (or when fewer than 8 kernels were recorded), a module written to
   a temporary directory that imports torch (the real cost of a kernel
   package) and re-exports pyruntime's sample kernels, with 32 sample
   specs naming it.
2. ``python -m pyruntime precompile LIST --target cuda:90 --workers W
   --json R.json --no-host-code -q`` with ``CUDA_VISIBLE_DEVICES=""`` (no
   GPU visible) into a fresh cache, for W = 1, 4, 16: the sidecar imports
   the modules once and forks the workers. Peers in the same run:
   ``--pool process`` at W = 16 (a spawn ProcessPoolExecutor: every worker
   imports the modules itself, as before this change), one process that
   imports the modules and builds every kernel in turn (what a JIT does),
   and ``--executor dask-local:W`` when Dask is installed.
3. Prints JSON: per run the wall time (the command, from outside), the
   report's import and compile times, the model ``one import + sum of
   compile times / W`` and wall / model (goal: at most 1.1), and the
   environment.

Options: ``--workers 1,4,16``, ``--rounds N`` (default 1), ``--target cuda:90``,
``--kernels N`` (the fallback list's size, 32).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

RECORD = r'''
import json, sys, types
import torch
import pyruntime

path = sys.argv[1]
done, failed = [], []

def attempt(name, fn):
    try:
        fn()
        torch.cuda.synchronize()
        done.append(name)
    except Exception as e:
        failed.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")

with pyruntime.record_launches(path):
    import liger_kernel.transformers as lt
    dev = "cuda"
    for dtype in (torch.float32, torch.bfloat16):
        for hidden in (1024, 4096):
            x = lambda *s: torch.randn(*s, device=dev, dtype=dtype, requires_grad=True)
            attempt(f"rms_norm {dtype} {hidden}", lambda: lt.LigerRMSNorm(hidden).to(dev, dtype)(x(8, hidden)).sum().backward())
            attempt(f"layer_norm {dtype} {hidden}", lambda: lt.LigerLayerNorm(hidden).to(dev, dtype)(x(8, hidden)).sum().backward())
            cfg = types.SimpleNamespace(hidden_size=hidden, intermediate_size=2 * hidden, hidden_act="silu",
                                        hidden_activation="gelu_pytorch_tanh")
            attempt(f"swiglu {dtype} {hidden}", lambda: lt.LigerSwiGLUMLP(cfg).to(dev, dtype)(x(8, hidden)).sum().backward())
            cfg2 = types.SimpleNamespace(**{**vars(cfg), "hidden_act": "gelu_pytorch_tanh"})
            attempt(f"geglu {dtype} {hidden}", lambda: lt.LigerGEGLUMLP(cfg2).to(dev, dtype)(x(8, hidden)).sum().backward())
            def rope():
                q, k = x(2, 8, 16, hidden // 32), x(2, 8, 16, hidden // 32)
                cos = torch.randn(1, 16, hidden // 32, device=dev, dtype=dtype)
                sin = torch.randn(1, 16, hidden // 32, device=dev, dtype=dtype)
                a, b = lt.liger_rotary_pos_emb(q, k, cos, sin)
                (a.sum() + b.sum()).backward()
            attempt(f"rope {dtype} {hidden}", rope)
            vocab = 8 * hidden
            attempt(f"cross_entropy {dtype} {hidden}", lambda: lt.LigerCrossEntropyLoss()(
                x(16, vocab), torch.randint(0, vocab, (16,), device=dev)).backward())
            def flce():
                w = torch.randn(vocab, hidden, device=dev, dtype=dtype, requires_grad=True)
                lt.LigerFusedLinearCrossEntropyLoss()(w, x(16, hidden), torch.randint(0, vocab, (16,), device=dev)).backward()
            attempt(f"fused_linear_cross_entropy {dtype} {hidden}", flce)
print(json.dumps({"done": done, "failed": failed}))
'''

FALLBACK_MODULE = '''
"""A kernel package stand-in: importing it imports torch, as real ones do."""
import torch  # noqa: F401
from pyruntime.bench.kernels import *  # noqa: F401,F403
from pyruntime.bench.kernels import _activation  # noqa: F401
'''


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def env_no_gpu() -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("PYRUNTIME_BUNDLE", None)
    return env


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cores": os.cpu_count(),
                            "machine": platform.platform()}
    for mod in ("torch", "triton", "pyruntime", "liger_kernel", "distributed"):
        spec = importlib.util.find_spec(mod)
        info[mod] = None
        if spec is not None:
            try:
                from importlib import metadata

                info[mod] = metadata.version({"liger_kernel": "liger-kernel", "distributed": "distributed"}.get(mod, mod))
            except Exception:
                info[mod] = "installed"
    try:
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


def record_liger(work: str) -> tuple[str | None, dict[str, Any]]:
    path = os.path.join(work, "liger.toml")
    log("recording liger-kernel launches on the GPU")
    proc = subprocess.run([sys.executable, "-c", RECORD, path], capture_output=True, text=True, timeout=300)
    info: dict[str, Any] = {"returncode": proc.returncode, "stderr_tail": proc.stderr[-1500:]}
    try:
        info.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        pass
    if not os.path.exists(path):
        return None, info
    from pyruntime.kernels import load_kernel_list

    specs = load_kernel_list(path)
    info["kernels"] = len(specs)
    info["modules"] = sorted({s.fn.split(":")[0] for s in specs if s.fn} | {s.source for s in specs if s.source})
    return (path if len(specs) >= 8 else None), info


def fallback_list(work: str, n: int = 32) -> str:
    from pyruntime.bench._compile_import import heavy_specs

    mod_dir = os.path.join(work, "fallback")
    os.makedirs(mod_dir, exist_ok=True)
    with open(os.path.join(mod_dir, "prt_kernel_package.py"), "w") as f:
        f.write(textwrap.dedent(FALLBACK_MODULE))
    entries = []
    for s in heavy_specs(n):
        d = s.to_dict()
        d["fn"] = "prt_kernel_package:" + d["fn"].split(":", 1)[1]
        d.pop("target", None)
        entries.append(d)
    path = os.path.join(work, "fallback.json")
    with open(path, "w") as f:
        json.dump({"version": 1, "python_path": [mod_dir], "kernels": entries}, f)
    return path


def precompile_cli(kernels: str, target: str, cache: str, report: str, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pyruntime", "precompile", kernels, "--target", target, "--cache-dir", cache,
           "--json", report, "--no-host-code", "--no-resume", "-q", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env_no_gpu(), capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"command_wall_s": round(wall, 2), "returncode": proc.returncode}
    try:
        doc = json.load(open(report))
    except (OSError, ValueError):
        out["error"] = (proc.stdout[-800:] + proc.stderr[-800:]).strip()
        return out
    res = doc["results"]
    out.update({
        "wall_s": round(doc["wall_s"], 2), "kernels": len(res), "counts": doc.get("counts"),
        "import_s": round(doc.get("import_s", 0.0), 2), "compile_sum_s": round(doc.get("compile_s", 0.0), 2),
        "imports": doc.get("imports"), "worker_pids": len({r.get("worker_pid") for r in res}),
        "first_error": next((r["error"][:300] for r in res if r.get("error")), None),
    })
    return out


def serial(kernels: str, target: str, cache: str) -> dict[str, Any]:
    code = textwrap.dedent(f"""
        import json, os, sys, time
        from pyruntime.kernels import load_kernel_list
        from pyruntime.precompile import compile_spec
        from pyruntime.kernel_imports import import_kernel
        specs = [s.with_target({target!r}) for s in load_kernel_list({kernels!r})]
        env = {{"TRITON_CACHE_DIR": {cache!r}}}
        os.environ.update(env)
        t0 = time.perf_counter()
        imp = 0.0
        for s in specs:
            imp += import_kernel(s)
        rs = [compile_spec(s, env, {{}}) for s in specs]
        wall = time.perf_counter() - t0
        print(json.dumps({{"wall_s": wall, "import_s": imp, "compile_sum_s": sum(r.compile_time_s for r in rs),
                           "failed": sum(not r.ok for r in rs)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=env_no_gpu(), capture_output=True, text=True,
                          timeout=900)
    try:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in json.loads(proc.stdout).items()}
    except ValueError:
        return {"error": proc.stderr[-800:]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--target", default="cuda:90")
    ap.add_argument("--kernels", type=int, default=32, help="kernels in the fallback list (no liger)")
    args = ap.parse_args()
    ws = [int(x) for x in args.workers.split(",")]
    work = tempfile.mkdtemp(prefix="prt-precompile-scale-")
    out: dict[str, Any] = {"environment": environment(), "target": args.target, "workers": ws, "runs": []}
    kernels = None
    if out["environment"].get("liger_kernel") and out["environment"].get("gpu"):
        kernels, out["recording"] = record_liger(work)
    if kernels is None:
        kernels = fallback_list(work, args.kernels)
        out["kernel_source"] = "fallback: a module importing torch + pyruntime's sample kernels"
    else:
        out["kernel_source"] = "liger-kernel, recorded launches"
    out["kernel_list"] = kernels
    # a throw-away import, so every run below finds the page cache equally warm
    subprocess.run([sys.executable, "-c", "import torch, triton, pyruntime.precompile"], env=env_no_gpu(),
                   timeout=300)
    plan: list[tuple[str, int]] = [("serial", 1)] + [("pyruntime", w) for w in ws] + [("--pool process", max(ws))]
    if out["environment"].get("distributed"):
        plan += [("dask-local", w) for w in ws]
    for rnd in range(args.rounds):
        for impl, w in plan:
            cache = os.path.join(work, f"cache-{impl.strip('-').replace(' ', '_')}-{w}-{rnd}")
            report = cache + ".json"
            log(f"round {rnd + 1}: {impl} W={w}")
            if impl == "serial":
                r = serial(kernels, args.target, cache)
            elif impl == "pyruntime":
                r = precompile_cli(kernels, args.target, cache, report, "--workers", str(w))
            elif impl == "--pool process":
                r = precompile_cli(kernels, args.target, cache, report, "--workers", str(w), "--pool", "process")
            else:
                r = precompile_cli(kernels, args.target, cache, report, "--executor", f"dask-local:{w}")
            if "wall_s" in r and "compile_sum_s" in r:
                one_import = r.get("import_s", 0.0)
                if impl in ("--pool process", "dask-local") and r.get("imports"):
                    per_pid: dict[Any, float] = {}
                    for m in r["imports"]:
                        per_pid[m.get("pid")] = per_pid.get(m.get("pid"), 0.0) + m["seconds"]
                    one_import = sorted(per_pid.values())[len(per_pid) // 2]
                model = one_import + r["compile_sum_s"] / w
                r.update({"one_import_s": round(one_import, 2), "model_s": round(model, 2),
                          "wall_over_model": round(r["wall_s"] / model, 3) if model else None})
            r.update({"impl": impl, "workers": w, "round": rnd + 1})
            out["runs"].append(r)
            log(json.dumps({k: v for k, v in r.items() if k != "imports"}))
            shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
