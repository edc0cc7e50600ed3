"""torch.compile of a small transformers GPT-2: Inductor's own compile pool
vs pyruntime's, then a second process with the exported Triton bundle
restored into an empty cache. Prints one JSON object with the figures.

    python tests/gpu/gpt2_compile.py                 # GPU: 4 layers, 512 wide, fp16, 4 x 256 tokens
    python tests/gpu/gpt2_compile.py --tiny          # any device, tiny config (smoke test)

Every phase runs in a fresh process of its own (this script with
``--phase``), so no in-memory cache or warm pool carries over:

``own``        Inductor's own pool, empty caches: the cold compile.
``pyruntime``  ``use_pyruntime_pool()``, empty caches: the cold compile on our
               pool; the Triton kernels it compiled are recorded and exported
               to ``<workdir>/gpt2.bundle``.
``restored``   ``use_pyruntime_pool()``, empty Inductor and Triton caches, the
               bundle restored first (timed apart): only Triton's cache is warm.
``warm``       ``use_pyruntime_pool()`` with the ``pyruntime`` phase's caches:
               every torch cache warm (reference).

Compile time is the wall time of the first call of the compiled model
(Dynamo, AOT, Inductor, Triton compiles, the run itself), synchronised.
Outputs of every phase are compared with the ``own`` phase's (and eager).

Without CUDA it runs on the CPU with the tiny config (Inductor builds C++
there; ``cpp=True`` puts those builds on our pool) and says so: a smoke
test of the logic, not the measurement. Without transformers it uses a
small built-in GPT-style model and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

PHASES = ("own", "pyruntime", "restored", "warm")


def log(msg: str) -> None:
    print(f"[gpt2_compile] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- the model
def _builtin_gpt(torch: Any, cfg: dict[str, Any]) -> Any:
    """A GPT-2-shaped model in plain torch, for machines without transformers."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, d: int, h: int) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.h = h

        def forward(self, x: Any) -> Any:
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
            return x + self.out(torch.nn.functional.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg["width"]
            self.wte, self.wpe = nn.Embedding(cfg["vocab"], d), nn.Embedding(cfg["seq"], d)
            self.blocks = nn.ModuleList(Block(d, cfg["heads"]) for _ in range(cfg["layers"]))
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, cfg["vocab"], bias=False)

        def forward(self, ids: Any) -> Any:
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.ln(x))

    return GPT()


def build_model(torch: Any, cfg: dict[str, Any], device: str) -> tuple[Any, Any, str]:
    """(model, input ids, model kind); random weights, the same in every process."""
    torch.manual_seed(0)
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        conf = GPT2Config(n_layer=cfg["layers"], n_embd=cfg["width"], n_head=cfg["heads"],
                          n_positions=cfg["seq"], vocab_size=cfg["vocab"],
                          bos_token_id=cfg["vocab"] - 1, eos_token_id=cfg["vocab"] - 1)
        inner = GPT2LMHeadModel(conf)

        class LogitsOnly(torch.nn.Module):  # a plain tensor out: simple to compare and compile
            def __init__(self) -> None:
                super().__init__()
                self.m = inner

            def forward(self, ids: Any) -> Any:
                return self.m(input_ids=ids, use_cache=False).logits

        model, kind = LogitsOnly(), "transformers.GPT2LMHeadModel"
    except ImportError as e:
        log(f"transformers not importable ({e}); using the built-in GPT-style model")
        model, kind = _builtin_gpt(torch, cfg), "builtin-gpt"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[cfg["dtype"]]
    model = model.eval().to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), generator=gen).to(device)
    return model, ids, kind


# ------------------------------------------------------------- one phase
def _count_kernel_dirs(path: str) -> int:
    if not os.path.isdir(path):
        return 0
    return sum(1 for e in os.scandir(path) if e.is_dir() and not e.name.startswith("tmp."))


def run_phase(args: argparse.Namespace) -> dict[str, Any]:
    import faulthandler

    # a phase that hangs prints every thread's stack before its parent kills it
    faulthandler.dump_traceback_later(max(5.0, args.phase_timeout - 10), exit=True)
    cfg = json.loads(args.cfg)
    phase_dir = args.phase_dir
    inductor_dir = os.path.join(phase_dir, "inductor")
    triton_dir = os.path.join(phase_dir, "triton")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_dir  # before torch reads them
    os.environ["TRITON_CACHE_DIR"] = triton_dir
    t_import = time.perf_counter()
    import torch

    device = cfg["device"]
    out: dict[str, Any] = {"phase": args.phase, "torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    import pyruntime

    out["pyruntime"] = pyruntime.__version__
    try:
        import pyruntime.torch as pt
    except ImportError as e:
        raise SystemExit(f"pyruntime.torch is not importable ({e}): is the installed pyruntime built "
                         "with the pyruntime.torch package?")
    from torch._inductor import async_compile

    out["compile_threads"] = async_compile.get_compile_threads()
    model, ids, out["model"] = build_model(torch, cfg, device)
    out["import_and_build_s"] = round(time.perf_counter() - t_import, 3)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if args.phase == "own":
        with torch.no_grad():
            eager = model(ids)
        sync()
        torch.save(eager.float().cpu(), os.path.join(phase_dir, "eager.pt"))

    patch = None
    recorder = None
    if args.phase == "restored":
        t = time.perf_counter()
        result = pt.restore_triton_bundle(args.bundle, triton_dir)
        out["restore_s"] = round(time.perf_counter() - t, 4)
        out["kernels_restored"] = len(result.restored)
        out["kernels_incompatible"] = len(result.incompatible)
    if args.phase != "own":
        patch = pt.use_pyruntime_pool(cpp=(device == "cpu"))
    if args.phase == "pyruntime":
        recorder = pt.record_triton_kernels().start()

    compiled = torch.compile(model)
    with torch.no_grad():
        sync()
        t = time.perf_counter()
        got = compiled(ids)
        sync()
        out["compile_s"] = round(time.perf_counter() - t, 3)
        calls = []
        for _ in range(3):
            t = time.perf_counter()
            compiled(ids)
            sync()
            calls.append(time.perf_counter() - t)
        out["steady_call_s"] = round(min(calls), 5)

    if recorder is not None:
        recorder.stop()
        t = time.perf_counter()
        bundle = recorder.save(args.bundle)
        out["export_s"] = round(time.perf_counter() - t, 4)
        out["kernels_recorded"] = len(recorder.entries)
        out["bundle_kernels"] = len(bundle)
        out["bundle_bytes"] = os.path.getsize(args.bundle)
        out["bundle_raw_bytes"] = bundle.size
    out["triton_cache_kernel_dirs"] = _count_kernel_dirs(triton_dir)
    if patch is not None:
        out["pyruntime_pool_jobs"] = patch.jobs
        if patch.router is not None:
            out["cpp_builds_on_pool"] = patch.router.routed
        patch.restore()
    torch.save(got.float().cpu(), args.out)
    return out


# ------------------------------------------------------------- orchestration
def compare(torch: Any, a_path: str, b_path: str, tol: float) -> dict[str, Any]:
    a, b = torch.load(a_path), torch.load(b_path)
    diff = (a - b).abs().max().item() if a.shape == b.shape else float("inf")
    return {"same_shape": a.shape == b.shape, "bitwise_equal": bool(a.shape == b.shape and torch.equal(a, b)),
            "max_abs_diff": diff, "allclose": bool(a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--phase-dir", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help="where caches, outputs and the bundle go (default: a temp dir, removed)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--tiny", action="store_true", help="tiny config (2 layers, 64 wide, 1 x 32 tokens, fp32)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset, in order")
    ap.add_argument("--phase-timeout", type=float, default=280.0, help="seconds per phase process")
    args = ap.parse_args()

    if args.phase:  # a phase process
        res = run_phase(args)
        with open(args.result, "w") as f:
            json.dump(res, f)
        return 0

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device available"}))
        return 0
    note = None
    if device == "cpu" or args.tiny:
        if device == "cpu":
            note = "no CUDA device: CPU smoke test with the tiny config; these are not the GPU figures"
            log(note)
        cfg = {"layers": 2, "width": 64, "heads": 4, "batch": 1, "seq": 32, "vocab": 1000,
               "dtype": "fp32" if device == "cpu" else args.dtype}
    else:
        cfg = {"layers": args.layers, "width": args.width, "heads": args.heads, "batch": args.batch,
               "seq": args.seq, "vocab": args.vocab, "dtype": args.dtype}
    cfg["device"] = device
    phases = [p for p in args.phases.split(",") if p]
    bad = [p for p in phases if p not in PHASES]
    if bad:
        ap.error(f"unknown phase(s) {bad}; choose from {PHASES}")
    if "restored" in phases and "pyruntime" not in phases:
        ap.error("the restored phase needs the pyruntime phase (it exports the bundle)")

    workdir = args.workdir or tempfile.mkdtemp(prefix="pyruntime-gpt2-")
    os.makedirs(workdir, exist_ok=True)
    bundle = os.path.join(workdir, "gpt2.bundle")
    report: dict[str, Any] = {"device": device, "config": cfg, "phases": {}}
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    if note:
        report["note"] = note
    env = dict(os.environ)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    env.pop("TRITON_CACHE_DIR", None)
    ok = True
    try:
        for phase in phases:
            # warm reuses the pyruntime phase's caches; every other phase starts empty
            phase_dir = os.path.join(workdir, "pyruntime" if phase == "warm" else phase)
            if phase != "warm":
                shutil.rmtree(phase_dir, ignore_errors=True)
            os.makedirs(phase_dir, exist_ok=True)
            result_path = os.path.join(workdir, f"{phase}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--phase-dir", phase_dir,
                   "--cfg", json.dumps(cfg), "--bundle", bundle, "--result", result_path,
                   "--out", os.path.join(workdir, f"{phase}_out.pt"),
                   "--phase-timeout", str(args.phase_timeout)]
            log(f"phase {phase} ...")
            t = time.perf_counter()
            try:
                proc = subprocess.run(cmd, env=env, timeout=args.phase_timeout, stdout=sys.stderr)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            wall = round(time.perf_counter() - t, 2)
            if rc != 0 or not os.path.exists(result_path):
                report["phases"][phase] = {"error": f"phase process failed ({rc})", "process_s": wall}
                ok = False
                if phase == "pyruntime":
                    break  # nothing to restore
                continue
            with open(result_path) as f:
                res = json.load(f)
            res["process_s"] = wall
            report["phases"][phase] = res
            log(f"phase {phase}: compile {res.get('compile_s')} s")

        tol = 2e-2 if cfg["dtype"] in ("fp16", "bf16") else 1e-4
        own_out = os.path.join(workdir, "own_out.pt")
        outs = {p: os.path.join(workdir, f"{p}_out.pt") for p in phases}
        checks: dict[str, Any] = {"tolerance": tol}
        if os.path.exists(own_out):
            eager = os.path.join(workdir, "own", "eager.pt")
            if os.path.exists(eager):
                checks["own_vs_eager"] = compare(torch, own_out, eager, tol)
            for p in phases:
                if p != "own" and os.path.exists(outs[p]):
                    checks[f"{p}_vs_own"] = compare(torch, outs[p], own_out, tol)
                    ok = ok and checks[f"{p}_vs_own"]["allclose"]
        report["checks"] = checks
        ph = report["phases"]

        def c(p: str) -> Any:
            return ph.get(p, {}).get("compile_s")

        report["summary"] = {
            "cold_compile_own_pool_s": c("own"),
            "cold_compile_pyruntime_pool_s": c("pyruntime"),
            "second_process_bundle_restored_compile_s": c("restored"),
            "bundle_restore_s": ph.get("restored", {}).get("restore_s"),
            "warm_all_caches_compile_s": c("warm"),
            "bundle_kernels": ph.get("pyruntime", {}).get("bundle_kernels"),
            "bundle_bytes": ph.get("pyruntime", {}).get("bundle_bytes"),
            "outputs_match": ok,
        }
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
