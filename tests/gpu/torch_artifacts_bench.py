"""torch.compile cold start with one verified file, measured against torch's
own warm caches and its Mega-Cache, on real transformers models (random
weights, configs built here, no downloads). Prints one JSON object.

    python3 tests/gpu/torch_artifacts_bench.py                      # GPU: gpt2 and llama, 3 rounds
    python3 tests/gpu/torch_artifacts_bench.py --models gpt2 --reps 5
    python3 tests/gpu/torch_artifacts_bench.py --device cpu --tiny  # smoke test of the logic anywhere

Every measurement is a fresh process (this script with ``--phase``) with its
own Inductor cache (``TORCHINDUCTOR_CACHE_DIR``) and its own Triton home
(``TRITON_HOME``, where Triton builds its driver module before Inductor
points ``TRITON_CACHE_DIR`` at its own cache; ``TRITON_CACHE_DIR`` is left
unset, as in a plain run). Per model:

``cold``       empty caches: the first compile.
``export``     a second process on the cold run's caches (the first warm
               start: Inductor compiles a few Triton kernels only then, for
               the autotuned configs it reads back), which saves torch's
               Mega-Cache bytes (``save_cache_artifacts``) and the pyruntime
               file (``save_compile_artifacts``), each timed, after the first
               call. ``python -m pyruntime torch export`` runs two passes too.
``warm``       the same caches, every one of them warm (the reference).
``mega``       empty caches, ``torch.compiler.load_cache_artifacts`` of the
               cold run's bytes (load_s), then the first call.
``pyruntime``  empty caches, ``import pyruntime.torch`` and
               ``load_compile_artifacts`` of the cold run's file (load_s,
               verification included), then the first call; the load report's
               hits and misses per cache kind go into the result.

Every phase builds the model and calls ``torch.compile(model)`` (which
returns at once, having imported Dynamo) before anything is timed; the
load step comes after that, before the first call. ``compile_s`` is the
wall time of the first call of the compiled model (Dynamo tracing,
AOTAutograd, Inductor, kernel loads, autotuning, the call itself,
synchronised); ``total_s`` = load_s + compile_s. warm, mega and pyruntime
run ``--reps`` rounds, interleaved; the summary compares medians. Things
outside torch's and Triton's caches are shared and warm for every phase,
so they do not blur the comparison: the CUDA driver's JIT cache
(``CUDA_CACHE_PATH``) and Python's bytecode (``PYTHONPYCACHEPREFIX``), both
filled by the cold run. Outputs of every phase are compared with the cold
run's.

Goal (the issue): pyruntime total <= 1.1 x warm, and clearly below mega's
total; ``summary.<model>.goal_met`` says whether it held.

On the lent H200 (no network: pyruntime runs from the repository with its
pure-Python core, which needs the ``lz4`` wheel carried in ``.whl/``, see
docs/TORCH.md "Measuring"), from the repository root::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \\
      && PYTHONPATH=/tmp/site python3 tests/gpu/torch_artifacts_bench.py > $OUT/torch_artifacts.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("cold", "export", "warm", "mega", "pyruntime")


def log(msg: str) -> None:
    print(f"[torch_artifacts_bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- models
def model_config(name: str, tiny: bool) -> dict[str, Any]:
    if name == "gpt2":  # the GPT-2: 4 layers x 512, fp16, 4 x 256 tokens
        cfg = {"layers": 4, "width": 512, "heads": 8, "vocab": 50257, "batch": 4, "seq": 256}
    elif name == "llama":  # a small Llama (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention)
        cfg = {"layers": 4, "width": 512, "heads": 8, "kv_heads": 4, "ffn": 1376, "vocab": 32000,
               "batch": 4, "seq": 256}
    elif name == "bert":
        cfg = {"layers": 4, "width": 512, "heads": 8, "ffn": 2048, "vocab": 30522, "batch": 4, "seq": 256}
    else:
        raise SystemExit(f"unknown model {name!r}: gpt2, llama or bert")
    if tiny:
        cfg.update(layers=2, width=64, heads=4, vocab=1000, batch=1, seq=32, ffn=128)
        if "kv_heads" in cfg:
            cfg["kv_heads"] = 2
    cfg["name"] = name
    return cfg


def build_model(torch: Any, cfg: dict[str, Any], device: str, dtype: Any) -> tuple[Any, Any]:
    """(model returning a plain logits tensor, input ids); the same random
    weights and inputs in every process."""
    import transformers as tf

    torch.manual_seed(0)
    name = cfg["name"]
    if name == "gpt2":
        inner = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=cfg["layers"], n_embd=cfg["width"], n_head=cfg["heads"],
                                                 vocab_size=cfg["vocab"], n_positions=max(1024, cfg["seq"])))
    elif name == "llama":
        inner = tf.LlamaForCausalLM(tf.LlamaConfig(
            hidden_size=cfg["width"], intermediate_size=cfg["ffn"], num_hidden_layers=cfg["layers"],
            num_attention_heads=cfg["heads"], num_key_value_heads=cfg["kv_heads"], vocab_size=cfg["vocab"],
            max_position_embeddings=max(512, cfg["seq"])))
    else:
        inner = tf.BertForMaskedLM(tf.BertConfig(
            hidden_size=cfg["width"], num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
            intermediate_size=cfg["ffn"], vocab_size=cfg["vocab"], max_position_embeddings=max(512, cfg["seq"])))

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = inner

        def forward(self, ids: Any) -> Any:
            if name == "bert":
                return self.m(input_ids=ids).logits
            return self.m(input_ids=ids, use_cache=False).logits

    model = LogitsOnly().eval().to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), generator=gen).to(device)
    return model, ids


# ------------------------------------------------------------- one phase
class _Diagnostics:
    """Where the first call's time goes, to compare phases: Triton compiles
    (cache hits included) and C compiler runs in this process, Dynamo's
    timed regions, and the files the first call added to the caches."""

    def __init__(self, dirs: list[str]) -> None:
        self.dirs = [os.path.join(os.environ.get(d[1:], ""), "") if d.startswith("$") else d for d in dirs]
        self.before = self._files()
        self.triton_compiles: list[float] = []
        self.builds: list[tuple[str, float]] = []
        try:
            import triton
            import triton.runtime.build as tb

            compile_fn, build_fn = triton.compile, tb._build

            def compile_timed(*a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return compile_fn(*a, **k)
                finally:
                    self.triton_compiles.append(time.perf_counter() - t)

            def build_timed(name: str, *a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return build_fn(name, *a, **k)
                finally:
                    self.builds.append((name, round(time.perf_counter() - t, 3)))

            triton.compile, tb._build = compile_timed, build_timed
        except (ImportError, AttributeError):
            pass

    def _files(self) -> set[str]:
        out = set()
        for root in self.dirs:
            for dp, _, fs in os.walk(root):
                out.update(os.path.join(dp, f) for f in fs)
        return out

    def result(self) -> dict[str, Any]:
        new = sorted(self._files() - self.before)
        kinds: dict[str, int] = {}
        for f in new:
            rel = next((os.path.relpath(f, r) for r in self.dirs if f.startswith(r)), f)
            top = rel.split(os.sep)[0]
            key = f"{top if top in ('fxgraph', 'aotautograd', 'triton', 'cache', 'locks', 'dynamo') else '<xx>'}/*" \
                  f"{os.path.splitext(f)[1]}"
            kinds[key] = kinds.get(key, 0) + 1
        try:
            from torch._dynamo.utils import compilation_time_metrics

            timed = sorted(((k, round(sum(v), 4)) for k, v in compilation_time_metrics.items()),
                           key=lambda kv: -kv[1])[:25]
        except ImportError:
            timed = []
        return {"triton_compile_calls": len(self.triton_compiles),
                "triton_compile_s": round(sum(self.triton_compiles), 4),
                "c_builds": self.builds, "new_files": kinds, "new_file_names": [os.path.basename(f) for f in new][:30],
                "dynamo_timed": dict(timed)}


def run_phase(args: argparse.Namespace) -> dict[str, Any]:
    import faulthandler

    faulthandler.dump_traceback_later(max(5.0, args.phase_timeout - 10), exit=True)
    job = json.loads(args.job)
    t_start = time.perf_counter()
    import torch

    device, phase = job["device"], args.phase
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[job["dtype"]]

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    out: dict[str, Any] = {"phase": phase, "torch": torch.__version__}
    model, ids = build_model(torch, job["model"], device, dtype)
    # torch.compile() returns at once, importing Dynamo: every phase pays that here, before
    # anything is timed, so the load step's figure holds only what it adds
    compiled = torch.compile(model)
    out["startup_s"] = round(time.perf_counter() - t_start, 3)
    load_s = 0.0
    report = None
    if phase == "mega":
        data = Path(job["mega"]).read_bytes()
        t = time.perf_counter()
        info = torch.compiler.load_cache_artifacts(data)
        load_s = time.perf_counter() - t
        out["mega_loaded"] = {k: len(v) for k, v in info.artifacts.items()} if info is not None else None
    elif phase == "pyruntime":
        t = time.perf_counter()
        import pyruntime.torch as pt  # counted: it imports parts of Inductor the compile needs too

        report = pt.load_compile_artifacts(job["artifacts"])
        load_s = time.perf_counter() - t
        out["pyruntime_load_self_s"] = report.load_s
    watch = _Diagnostics(job["dirs"])
    with torch.no_grad():
        sync()
        t = time.perf_counter()
        got = compiled(ids)
        sync()
        compile_s = time.perf_counter() - t
        calls = []
        for _ in range(3):
            t = time.perf_counter()
            compiled(ids)
            sync()
            calls.append(time.perf_counter() - t)
    out.update(load_s=round(load_s, 4), compile_s=round(compile_s, 4), total_s=round(load_s + compile_s, 4),
               steady_call_s=round(min(calls), 6))
    out["diagnostics"] = watch.result()
    from torch._dynamo.utils import counters

    out["counters"] = {g: {k: v for k, v in counters[g].items() if "cache" in k} for g in ("inductor", "aot_autograd")}
    if report is not None:
        report.finish()
        out["report"] = {k: {f: getattr(r, f) for f in ("in_file", "loaded", "present", "skipped", "hits", "misses")}
                         for k, r in report.kinds.items()}
        reasons = [f"{k}: {x}" for k, r in report.kinds.items() for x in r.reasons]
        if reasons:
            out["report_reasons"] = reasons[:20]
    if phase == "export":
        t = time.perf_counter()
        saved = torch.compiler.save_cache_artifacts()
        out["mega_save_s"] = round(time.perf_counter() - t, 4)
        if saved is None:
            raise SystemExit("torch recorded no cache artifacts")
        Path(job["mega"]).write_bytes(saved[0])
        out["mega_bytes"] = len(saved[0])
        out["mega_entries"] = {k: len(v) for k, v in saved[1].artifacts.items()}
        import pyruntime.torch as pt

        t = time.perf_counter()
        summary = pt.save_compile_artifacts(job["artifacts"])
        out["pyruntime_save_s"] = round(time.perf_counter() - t, 4)
        out["pyruntime_bytes"] = summary.size
        out["pyruntime_parts"] = summary.counts
        if summary.notes:
            out["pyruntime_notes"] = summary.notes
    torch.save(got.float().cpu(), args.out)
    return out


# ------------------------------------------------------------- orchestration
def compare(torch: Any, a_path: str, b_path: str, tol: float) -> dict[str, Any]:
    a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
    same = a.shape == b.shape
    return {"bitwise_equal": bool(same and torch.equal(a, b)),
            "max_abs_diff": (a - b).abs().max().item() if same else None,
            "allclose": bool(same and torch.allclose(a, b, rtol=tol, atol=tol))}


def run_one(args: argparse.Namespace, phase: str, job: dict[str, Any], phase_dir: Path, shared: Path,
            tag: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("TRITON_CACHE_DIR", None)
    env.update({
        "TORCHINDUCTOR_CACHE_DIR": str(phase_dir / "inductor"),
        "TRITON_HOME": str(phase_dir / "triton_home"),
        "CUDA_CACHE_PATH": str(shared / "nv"),
        "PYTHONPYCACHEPREFIX": str(shared / "pyc"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
    })
    result = phase_dir.parent / f"{tag}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--job", json.dumps(job),
           "--result", str(result), "--out", str(phase_dir.parent / f"{tag}_out.pt"),
           "--phase-timeout", str(args.phase_timeout)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=args.phase_timeout, capture_output=True, text=True,
                              check=False)
        rc: Any = proc.returncode
        err = proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = "timeout", (e.stderr or b"").decode("utf-8", "replace") if isinstance(e.stderr, bytes) else (
            e.stderr or "")
    wall = round(time.perf_counter() - t, 2)
    if rc != 0 or not result.exists():
        return {"error": f"phase process failed ({rc})", "process_s": wall, "stderr_tail": err[-2500:]}
    res = json.loads(result.read_text())
    res["process_s"] = wall
    return res


def median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def bench_model(args: argparse.Namespace, torch: Any, name: str, device: str, workdir: Path) -> dict[str, Any]:
    cfg = model_config(name, args.tiny or device == "cpu")
    mdir = workdir / name
    shutil.rmtree(mdir, ignore_errors=True)
    mdir.mkdir(parents=True)
    shared = workdir / "shared"
    job = {"model": cfg, "device": device, "dtype": "fp32" if device == "cpu" else args.dtype,
           "mega": str(mdir / "mega.bin"), "artifacts": str(mdir / "model.prta"),
           "dirs": ["$TORCHINDUCTOR_CACHE_DIR", "$TRITON_HOME"]}
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
    log(f"{name}: cold ...")
    cold = run_one(args, "cold", job, mdir / "cold", shared, "cold")
    runs["cold"].append(cold)
    if "error" in cold:
        log(f"{name}: cold failed: {cold['stderr_tail'][-600:]}")
        return {"config": cfg, "runs": runs, "ok": False}
    log(f"{name}: cold compile {cold['compile_s']} s; export pass ...")
    export = run_one(args, "export", job, mdir / "cold", shared, "export")
    runs["export"].append(export)
    if "error" in export:
        log(f"{name}: export pass failed: {export['stderr_tail'][-600:]}")
        return {"config": cfg, "runs": runs, "ok": False}
    log(f"{name}: export pass compile {export['compile_s']} s; mega {export['mega_bytes']} B, "
        f"pyruntime file {export['pyruntime_bytes']} B")
    for r in range(args.reps):
        for phase in ("warm", "mega", "pyruntime"):
            pdir = mdir / "cold" if phase == "warm" else mdir / f"{phase}{r}"
            if phase != "warm":
                shutil.rmtree(pdir, ignore_errors=True)
            pdir.mkdir(parents=True, exist_ok=True)
            res = run_one(args, phase, job, pdir, shared, f"{phase}{r}")
            runs[phase].append(res)
            log(f"{name}: round {r} {phase}: " + (f"load {res['load_s']} + compile {res['compile_s']} s"
                                                   if "error" not in res else res["error"]))
            if phase != "warm" and not args.keep:
                shutil.rmtree(pdir, ignore_errors=True)
    tol = 2e-2 if job["dtype"] in ("fp16", "bf16") else 1e-4
    checks: dict[str, Any] = {"tolerance": tol}
    ok = all("error" not in x for xs in runs.values() for x in xs)
    cold_out = mdir / "cold_out.pt"
    for phase in ("warm", "mega", "pyruntime"):
        for r in range(args.reps):
            out = mdir / f"{phase}{r}_out.pt"
            if out.exists() and cold_out.exists():
                c = compare(torch, str(cold_out), str(out), tol)
                checks[f"{phase}{r}_vs_cold"] = c
                ok = ok and c["allclose"]

    def col(phase: str, key: str) -> list[float]:
        return [x[key] for x in runs[phase] if key in x]

    warm, mega, pyr = median(col("warm", "total_s")), median(col("mega", "total_s")), median(col("pyruntime",
                                                                                                 "total_s"))
    summary = {
        "cold_compile_s": cold.get("compile_s"),
        "export_pass_compile_s": export.get("compile_s"),
        "warm_compile_s_median": warm,
        "mega_load_s_median": median(col("mega", "load_s")),
        "mega_total_s_median": mega,
        "pyruntime_load_s_median": median(col("pyruntime", "load_s")),
        "pyruntime_total_s_median": pyr,
        "pyruntime_total_s_all": col("pyruntime", "total_s"),
        "warm_compile_s_all": col("warm", "total_s"),
        "mega_total_s_all": col("mega", "total_s"),
        "pyruntime_over_warm": round(pyr / warm, 3) if pyr and warm else None,
        "pyruntime_over_mega": round(pyr / mega, 3) if pyr and mega else None,
        "mega_bytes": export.get("mega_bytes"),
        "pyruntime_bytes": export.get("pyruntime_bytes"),
        "pyruntime_parts": export.get("pyruntime_parts"),
        "outputs_match": ok,
    }
    summary["goal_met"] = bool(pyr and warm and mega and pyr <= 1.1 * warm and pyr < mega)
    return {"config": cfg, "dtype": job["dtype"], "summary": summary, "checks": checks, "runs": runs, "ok": ok}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="gpt2,llama", help="comma-separated: gpt2, llama, bert (default gpt2,llama)")
    ap.add_argument("--reps", type=int, default=3, help="rounds of warm / mega / pyruntime per model (default 3)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (a smoke test of the logic)")
    ap.add_argument("--workdir", help="where caches and files go (default: a temporary directory, removed)")
    ap.add_argument("--keep", action="store_true", help="keep every phase's caches (with --workdir)")
    ap.add_argument("--phase-timeout", type=float, default=300.0, help="seconds per phase process (default 300)")
    args = ap.parse_args()

    if args.phase:
        res = run_phase(args)
        Path(args.result).write_text(json.dumps(res))
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device available"}))
        return 0
    try:
        import transformers
    except ImportError as e:
        print(json.dumps({"skipped": f"transformers is not importable ({e})"}))
        return 0
    report: dict[str, Any] = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
                              "python": sys.version.split()[0], "reps": args.reps, "models": {}}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    else:
        report["note"] = "CPU run with tiny configs: a smoke test of the logic, not the GPU figures"
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pyruntime-artifacts-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ok = True
    try:
        for name in [m for m in args.models.split(",") if m]:
            res = bench_model(args, torch, name, device, workdir)
            report["models"][name] = res
            ok = ok and res["ok"]
            if "summary" in res:
                s = res["summary"]
                log(f"{name}: warm {s['warm_compile_s_median']} s, mega {s['mega_total_s_median']} s, "
                    f"pyruntime {s['pyruntime_total_s_median']} s ({s['pyruntime_over_warm']} x warm); "
                    f"goal met: {s['goal_met']}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["summary"] = {m: r.get("summary") for m, r in report["models"].items()}
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
