"""Frozen launches end to end on a real GPU (prints one JSON document).

    python tests/gpu/freeze_e2e.py [--work DIR] [--target cuda:90]

Phases, each in its own process:

1. ``build`` with no GPU visible (``CUDA_VISIBLE_DEVICES=""``): precompile
   the launches of ``tests/gpu/e2e.py`` for the named target with pyruntime's
   precompile (one deliberately left out), then bundle them.
2. ``cold``: restore the bundle into an empty Triton cache and launch every
   kernel under ``pyruntime.freeze(mode="error")`` with a C-compiler shim
   first on ``PATH`` (and as ``CC``) that records its arguments and fails.
   Triton builds host-side C modules with that compiler on first use
   (``cuda_utils``; on Triton 3.6 also one ``__triton_launcher`` per kernel
   signature): they depend on the machine, not on the kernels, and bundles
   do not carry them, so this phase says what an empty cache really needs.
3. ``prime``: restore into a scratch cache and launch with the real
   compiler, once, to build those host modules; keep only them (cache
   entries without a kernel), as an image build step would.
4. ``frozen``: an empty cache again, the bundle restored plus the host
   modules, the failing compiler shim, ``freeze(mode="error")``: every
   launch must succeed, match torch, run no compiler and add no cache entry;
   then the left-out launches must raise ``JITCompileError`` naming the
   field that differs (and still add no cache entry).
5. ``warm``: a fresh process on that now fully warm cache, no freeze, the
   real compiler: first launches again, the reference for the timings (the
   first launch of a process also pays Triton's driver start, so totals are
   given without it too).
6. ``record``: ``python -m pyruntime record`` around a process that
   launches the same kernels plus an autotuned one (three configs, really
   benchmarked), into an empty cache; the recorded list is precompiled with
   no GPU visible and must give exactly the cache keys the JIT used.

``checks`` at the end says what held; ``ok`` is all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, ROOT]

import e2e  # noqa: E402

# launches left out of the bundle, each differing from a bundled one in one field
LEFT_OUT = [
    ("BLOCK", e2e._ew("ew add relu fp16 BLOCK=512", "add", "relu", "fp16", 512, 4)),
    ("n_elements divisibility", e2e.Launch(
        "ew add relu fp16 n%16==0", "ew_binary_kernel",
        [e2e._t("x_ptr", (100000,), "fp16"), e2e._t("y_ptr", (100000,), "fp16"),
         e2e._t("out_ptr", (100000,), "fp16", "out"), e2e._i("n_elements", 100000)],
        {"BLOCK": 1024, "OP": "add", "ACT": "relu"}, ((100000 + 1023) // 1024,), "ew_binary", {"num_warps": 4})),
]

AUTOTUNED = '''
import triton
import triton.language as tl


@triton.autotune(configs=[triton.Config({"BLOCK": 256}, num_warps=2), triton.Config({"BLOCK": 512}, num_warps=4),
                          triton.Config({"BLOCK": 1024}, num_warps=8)], key=["n"])
@triton.jit
def tuned_scale(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) * 2, mask=m)
'''

SHIM = """#!/bin/sh
echo "$0 $*" >> "{log}"
echo "pyruntime freeze_e2e: no C compiler here ($0)" >&2
exit 1
"""


def _entries(cache: str) -> dict[str, list[str]]:
    out = {}
    for d in sorted(os.listdir(cache)):
        p = os.path.join(cache, d)
        if os.path.isdir(p):
            out[d] = sorted(os.listdir(p))
    return out


def _is_kernel(files: list[str]) -> bool:
    return any(f.startswith("__grp__") for f in files) and any(f.endswith((".cubin", ".hsaco")) for f in files)


def _shim(work: str) -> tuple[str, str]:
    d = os.path.join(work, "cc-shim")
    log = os.path.join(work, "cc-shim.log")
    os.makedirs(d, exist_ok=True)
    for name in ("gcc", "cc", "clang", "g++", "c++"):
        p = os.path.join(d, name)
        with open(p, "w") as f:
            f.write(SHIM.format(log=log))
        os.chmod(p, os.stat(p).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return d, log


def _compiler_runs(log: str) -> list[str]:
    try:
        with open(log) as f:
            return [line.strip()[:300] for line in f if line.strip()]
    except FileNotFoundError:
        return []


# ------------------------------------------------------------------ phases (each in its own process)


def phase_build(work: str, target: str) -> dict[str, Any]:
    from pyruntime import collect_dir
    from pyruntime.precompile import precompile

    gpu_visible = None
    try:
        import torch

        gpu_visible = torch.cuda.is_available()
    except ImportError:
        pass
    cache = os.path.join(work, "build-cache")
    specs = [e2e.spec_for(la, target) for la in e2e.LAUNCHES]
    t0 = time.perf_counter()
    results = precompile(specs, workers=min(8, os.cpu_count() or 1), cache_dir=cache)
    wall = time.perf_counter() - t0
    errors = [f"{r.label}: {r.error}" for r in results if r.error]
    if errors:
        return {"ok": False, "errors": errors}
    keys = [r.cache_key for r in results]
    bundle = collect_dir(cache, keys)
    path = os.path.join(work, "kernels.prtb")
    size = bundle.save(path)
    with_spec = sum("pyruntime.spec.json" in os.listdir(os.path.join(cache, k)) for k in keys)
    return {"ok": True, "gpu_visible": gpu_visible, "kernels": len(specs), "precompile_wall_s": round(wall, 2),
            "bundle_bytes": size, "kernels_with_spec_record": with_spec, "bundle": path}


def _restore(bundle: str, cache: str) -> float:
    from pyruntime import TritonBundle

    t0 = time.perf_counter()
    TritonBundle.load(bundle).restore(cache_dir=cache, on_mismatch="error")
    return (time.perf_counter() - t0) * 1e3


def phase_cold(work: str, bundle: str) -> dict[str, Any]:
    cache = os.environ["TRITON_CACHE_DIR"]
    restore_ms = _restore(bundle, cache)
    import pyruntime
    from pyruntime.errors import JITCompileError

    refs = e2e._refs()
    errors = []
    with pyruntime.freeze(mode="error"):
        for la in e2e.LAUNCHES:
            try:
                e2e._launch_one(la, refs)
            except JITCompileError as e:
                errors.append({"label": la.label, "error": str(e).splitlines()[0][:500]})
            except Exception as e:
                errors.append({"label": la.label, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    return {"restore_ms": round(restore_ms, 2), "errors": errors}


def phase_prime(work: str, bundle: str) -> dict[str, Any]:
    cache = os.environ["TRITON_CACHE_DIR"]
    _restore(bundle, cache)
    refs = e2e._refs()
    t0 = time.perf_counter()
    for la in e2e.LAUNCHES:
        e2e._launch_one(la, refs)
    host = os.path.join(work, "host-modules")
    os.makedirs(host, exist_ok=True)
    kept = {}
    for d, files in _entries(cache).items():
        if not _is_kernel(files):
            shutil.copytree(os.path.join(cache, d), os.path.join(host, d), dirs_exist_ok=True)
            kept[d] = files
    return {"host_module_entries": len(kept), "host_modules": kept, "wall_s": round(time.perf_counter() - t0, 2)}


def phase_frozen(work: str, bundle: str) -> dict[str, Any]:
    cache = os.environ["TRITON_CACHE_DIR"]
    restore_ms = _restore(bundle, cache)
    host = os.path.join(work, "host-modules")
    for d in os.listdir(host):
        shutil.copytree(os.path.join(host, d), os.path.join(cache, d), dirs_exist_ok=True)
    before = _entries(cache)
    t_import = time.perf_counter()
    import torch
    import triton

    import pyruntime
    from pyruntime.errors import JITCompileError

    refs = e2e._refs()
    torch.cuda.synchronize()
    import_s = time.perf_counter() - t_import
    launches, errors, left_out = [], [], []
    with pyruntime.freeze(mode="error") as fz:
        for la in e2e.LAUNCHES:
            try:
                launches.append(e2e._launch_one(la, refs))
            except Exception as e:
                errors.append({"label": la.label, "error": f"{type(e).__name__}: {str(e)[:600]}"})
        second = {}
        for la in e2e.LAUNCHES[:4]:
            r = e2e._launch_one(la, refs)
            second[la.label] = r["first_launch_ms"]
        after_good = _entries(cache)
        for field, la in LEFT_OUT:
            try:
                e2e._launch_one(la, refs)
                left_out.append({"label": la.label, "raised": False, "expected_field": field})
            except JITCompileError as e:
                fields = [d.field for d in e.differences]
                left_out.append({"label": la.label, "raised": True, "expected_field": field, "fields": fields,
                                 "names_field": field in fields, "message": str(e)[:3000]})
            except Exception as e:
                left_out.append({"label": la.label, "raised": False, "expected_field": field,
                                 "error": f"{type(e).__name__}: {str(e)[:300]}"})
        misses = len(fz.misses)
    after = _entries(cache)
    return {
        "triton": triton.__version__, "torch": torch.__version__, "device": torch.cuda.get_device_name(),
        "restore_ms": round(restore_ms, 2), "import_and_init_s": round(import_s, 2),
        "launches": launches, "errors": errors, "misses": misses,
        "second_launch_ms": second, "left_out": left_out,
        "new_entries_after_bundled": sorted(set(after_good) - set(before)),
        "changed_entries": sorted(d for d in before if after.get(d) != before[d]),
        "new_entries_after_all": sorted(set(after) - set(before)),
        "first_launch_ms_total": round(sum(r["first_launch_ms"] for r in launches), 2),
    }


def phase_launch_all(work: str) -> dict[str, Any]:
    """The recorded process: every e2e launch, then an autotuned kernel (real autotuning)."""
    import torch

    refs = e2e._refs()
    launches = [e2e._launch_one(la, refs) for la in e2e.LAUNCHES]
    sys.path.insert(0, work)
    import tuned_gpu

    x = torch.randn(1 << 20, device="cuda")
    out = torch.empty_like(x)
    tuned_gpu.tuned_scale[lambda meta: (triton_cdiv(x.numel(), meta["BLOCK"]),)](x, out, x.numel())
    torch.cuda.synchronize()
    return {"ok": all(r["ok"] for r in launches) and bool(torch.allclose(out, x * 2)),
            "best": str(tuned_gpu.tuned_scale.best_config)}


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def phase_warm(work: str) -> dict[str, Any]:
    refs = e2e._refs()
    launches = [e2e._launch_one(la, refs) for la in e2e.LAUNCHES]
    return {"launches": launches, "first_launch_ms_total": round(sum(r["first_launch_ms"] for r in launches), 2)}


# ------------------------------------------------------------------ driver


def _phase(name: str, work: str, env: dict[str, str], *args: str, timeout: float = 600) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--work", work, *args], capture_output=True,
                         text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    try:
        data = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        data = {"crashed": True, "rc": out.returncode, "stdout": out.stdout[-2000:], "stderr": out.stderr[-4000:]}
    data["process_wall_s"] = round(wall, 2)
    if out.returncode != 0:
        data.setdefault("rc", out.returncode)
        data.setdefault("stderr_tail", out.stderr[-2000:])
    return data


def _record(work: str, base: dict[str, str]) -> dict[str, Any]:
    """Record a GPU run, precompile the list with no GPU visible, compare the cache keys."""
    with open(os.path.join(work, "tuned_gpu.py"), "w") as f:
        f.write(AUTOTUNED)
    rec_cache, built = os.path.join(work, "rec-cache"), os.path.join(work, "rec-built")
    for d in (rec_cache, built):
        shutil.rmtree(d, ignore_errors=True)
    lst = os.path.join(work, "recorded.toml")
    if os.path.exists(lst):
        os.unlink(lst)
    t0 = time.perf_counter()
    rec = subprocess.run([sys.executable, "-m", "pyruntime", "record", "-o", lst, "--", sys.executable, __file__,
                          "--phase", "launch_all", "--work", work], capture_output=True, text=True, timeout=400,
                         env=dict(base, TRITON_CACHE_DIR=rec_cache))
    out: dict[str, Any] = {"rc": rec.returncode, "record_wall_s": round(time.perf_counter() - t0, 2),
                           "stderr_tail": rec.stderr[-600:]}
    try:
        out["launch"] = json.loads(rec.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out["stdout_tail"] = rec.stdout[-1000:]
    if rec.returncode != 0 or not os.path.exists(lst):
        return out
    pre = subprocess.run([sys.executable, "-m", "pyruntime", "precompile", lst, "--cache-dir", built, "--workers",
                          str(min(8, os.cpu_count() or 1)), "-q"], capture_output=True, text=True, timeout=400,
                         env=dict(base, CUDA_VISIBLE_DEVICES=""))
    out["precompile_rc"] = pre.returncode
    if pre.returncode != 0:
        out["precompile_tail"] = (pre.stdout + pre.stderr)[-2000:]
        return out
    jit = {d for d, f in _entries(rec_cache).items() if _is_kernel(f)}
    pc = {d for d, f in _entries(built).items() if _is_kernel(f)}
    with open(lst) as f:
        text = f.read()
    out.update(entries=text.count("[[kernels]]"), jit_kernels=len(jit), precompiled=len(pc), same_keys=jit == pc,
               only_jit=sorted(jit - pc), only_precompiled=sorted(pc - jit),
               autotune_entries=text.count('fn = "tuned_gpu:tuned_scale"'))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None)
    ap.add_argument("--target", default="cuda:90")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        bundle = os.path.join(args.work, "kernels.prtb")
        fn = {"build": lambda: phase_build(args.work, args.target), "cold": lambda: phase_cold(args.work, bundle),
              "prime": lambda: phase_prime(args.work, bundle), "frozen": lambda: phase_frozen(args.work, bundle),
              "warm": lambda: phase_warm(args.work), "launch_all": lambda: phase_launch_all(args.work)}[args.phase]
        print(json.dumps(fn()))
        return 0

    work = args.work or tempfile.mkdtemp(prefix="freeze-e2e-")
    os.makedirs(work, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in ("PYRUNTIME_JIT", "PYRUNTIME_RECORD", "TRITON_CACHE_DIR")}
    base["PYTHONPATH"] = os.pathsep.join([ROOT] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else []))
    report: dict[str, Any] = {"target": args.target, "work": work}
    report["build"] = _phase("build", work, dict(base, CUDA_VISIBLE_DEVICES="",
                                                 TRITON_CACHE_DIR=os.path.join(work, "build-cache")),
                             "--target", args.target)
    if not report["build"].get("ok"):
        print(json.dumps(report, indent=1))
        return 1
    shim_dir, log = _shim(work)
    shimmed = dict(base, PATH=shim_dir + os.pathsep + base.get("PATH", ""), CC=os.path.join(shim_dir, "cc"))

    def fresh(name: str) -> str:
        d = os.path.join(work, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    open(log, "w").close()
    report["cold"] = _phase("cold", work, dict(shimmed, TRITON_CACHE_DIR=fresh("cold-cache")))
    report["cold"]["compiler_runs"] = _compiler_runs(log)
    report["prime"] = _phase("prime", work, dict(base, TRITON_CACHE_DIR=fresh("prime-cache")))
    open(log, "w").close()
    run_cache = fresh("run-cache")
    report["frozen"] = _phase("frozen", work, dict(shimmed, TRITON_CACHE_DIR=run_cache))
    report["frozen"]["compiler_runs"] = _compiler_runs(log)
    report["warm"] = _phase("warm", work, dict(base, TRITON_CACHE_DIR=run_cache))
    report["record"] = _record(work, base)
    fz = report["frozen"]
    launches = fz.get("launches", [])
    checks = {
        "built_with_no_gpu_visible": report["build"].get("gpu_visible") is False,
        "every_kernel_has_a_spec_record": report["build"].get("kernels_with_spec_record") == len(e2e.LAUNCHES),
        "frozen_no_error": not fz.get("errors") and len(launches) == len(e2e.LAUNCHES),
        "frozen_all_correct": bool(launches) and all(r["ok"] for r in launches),
        "frozen_no_compiler_run": fz.get("compiler_runs") == [],
        "frozen_no_new_cache_entry": fz.get("new_entries_after_all") == [] and fz.get("changed_entries") == [],
        "left_out_raise_naming_the_field": bool(fz.get("left_out")) and all(
            x.get("raised") and x.get("names_field") for x in fz["left_out"]),
        "recorded_list_precompiles_to_the_jits_keys": report["record"].get("same_keys") is True,
    }
    report["checks"] = checks
    report["ok"] = all(checks.values())
    warm = report["warm"].get("launches")
    if warm and launches:
        report["first_launch_ms"] = {
            "frozen_restored": fz.get("first_launch_ms_total"), "warm_process": report["warm"]["first_launch_ms_total"],
            "frozen_restored_after_first": round(sum(r["first_launch_ms"] for r in launches[1:]), 2),
            "warm_process_after_first": round(sum(r["first_launch_ms"] for r in warm[1:]), 2),
            "in_memory_second_launch": fz.get("second_launch_ms"),
        }
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
