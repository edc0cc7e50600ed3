"""Zero compiles at first launch with a third-party kernel package, on a
real GPU (prints one JSON document; exit 0 when every check held).

    python3 tests/gpu/liger_e2e.py [--work DIR] [--rounds 2] > liger_e2e.json

Needs liger-kernel, torch and a GPU; pyruntime and its dependencies
importable. Phases, each in fresh processes (``tests/gpu/liger_app.py`` is
the launcher):

1. ``record``: ``python -m pyruntime record -o liger.toml -- python
   liger_app.py`` into an empty Triton cache (the cold start: Triton
   compiles every kernel and builds its host modules with gcc). That cache,
   filled by Triton itself, is the warm reference below.
2. ``precompile``: the recorded list, with ``CUDA_VISIBLE_DEVICES=""``,
   ``--target cuda:90``, host code included, into an empty cache, bundled.
3. ``frozen``: the bundle restored (``python -m pyruntime bundle restore``)
   into an empty cache; ``gcc``/``cc``/``clang`` shims first on ``PATH``
   (and ``CC``) that log and fail; ``liger_app.py --freeze --left-out``.
   Must: every op correct, no JITCompileError for them, no compiler run, no
   new file in the cache, and the left-out launch (hidden 1000) refused
   with a message naming divisibility.
4. ``warm``: ``liger_app.py`` in a fresh process on the record phase's cache.

Phases 3 and 4 alternate ``--rounds`` times; the first-launch times
compared are medians (goal: frozen at most 1.2x warm).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "liger_app.py")
sys.path.insert(0, HERE)

from host_stubs_e2e import _files, _shims  # noqa: E402


def _run(cmd: list[str], env: dict[str, str], timeout: int = 300) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def _app(env: dict[str, str], *flags: str) -> dict[str, Any]:
    rc, out, err, wall = _run([sys.executable, APP, *flags], env)
    try:
        doc = json.loads(out)
    except ValueError:
        doc = {"all_ok": False, "error": (out[-1500:] + err[-1500:]).strip()}
    doc.update(returncode=rc, process_wall_s=round(wall, 3))
    doc.setdefault("stderr_tail", err[-800:])
    return doc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--target", default="cuda:90")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="liger-e2e-")
    os.makedirs(work, exist_ok=True)
    base = dict(os.environ, PYTHONUNBUFFERED="1")
    base.pop("TRITON_CACHE_DIR", None)
    report: dict[str, Any] = {"work": work}

    # 1. record (the cold start)
    warm_cache = os.path.join(work, "warm-cache")
    kernels = os.path.join(work, "liger.toml")
    env = dict(base, TRITON_CACHE_DIR=warm_cache)
    rc, out, err, wall = _run([sys.executable, "-m", "pyruntime", "record", "-o", kernels, "--", sys.executable, APP], env)
    try:
        cold = json.loads(out)
    except ValueError:
        cold = {"error": (out[-1000:] + err[-1500:]).strip()}
    cold.pop("results", None)
    report["record"] = {"returncode": rc, "process_wall_s": round(wall, 2), "app": cold,
                        "entries": sum(1 for ln in open(kernels) if ln.startswith("[[kernel")) if os.path.exists(kernels) else 0}

    # 2. precompile with no GPU visible, host code included, bundled
    build_cache = os.path.join(work, "build-cache")
    bundle = os.path.join(work, "liger.prtb")
    env = dict(base, CUDA_VISIBLE_DEVICES="", TRITON_CACHE_DIR=build_cache)
    rc, out, err, wall = _run([sys.executable, "-m", "pyruntime", "precompile", kernels, "--target", a.target,
                               "--cache-dir", build_cache, "--bundle", bundle, "--json",
                               os.path.join(work, "precompile.json"), "-q"], env, timeout=600)
    report["precompile"] = {"returncode": rc, "wall_s": round(wall, 2), "output": (out + err)[-1500:],
                            "bundle_bytes": os.path.getsize(bundle) if os.path.exists(bundle) else None}
    rc, out, err, _ = _run([sys.executable, "-m", "pyruntime", "bundle", "inspect", bundle], base)
    report["inspect"] = (out + err)[-2500:]

    # 3./4. frozen on the restored bundle, warm on Triton's own cache, alternating
    frozen_runs, warm_runs, checks_per_round = [], [], []
    for i in range(a.rounds):
        cache = os.path.join(work, f"frozen-cache-{i}")
        shim_dir, shim_log = _shims(os.path.join(work, f"shims-{i}"), refuse=True)
        env = dict(base, TRITON_CACHE_DIR=cache, CC=os.path.join(shim_dir, "cc"), CXX=os.path.join(shim_dir, "c++"),
                   PATH=shim_dir + os.pathsep + base.get("PATH", ""))
        rc, out, err, wall = _run([sys.executable, "-m", "pyruntime", "bundle", "restore", bundle, "--cache-dir",
                                   cache], env)
        restore = {"returncode": rc, "wall_s": round(wall, 3), "output": (out + err)[-600:]}
        before = _files(cache)
        frozen = _app(env, "--freeze", "--left-out")
        new = sorted(_files(cache) - before)
        runs = open(shim_log).read().splitlines() if os.path.exists(shim_log) else []
        frozen.update(restore=restore, new_cache_files=new[:40], compiler_runs=runs[:20])
        left = frozen.get("left_out", {})
        checks_per_round.append({
            "frozen all ops correct, none refused": bool(frozen.get("all_ok")),
            "no compiler ran": not runs,
            "no new cache entry": not new,
            "left-out launch raised JITCompileError": left.get("raised") == "JITCompileError",
            "its message names divisibility": "divisib" in left.get("message", ""),
        })
        frozen_runs.append(frozen)
        warm_runs.append(_app(dict(base, TRITON_CACHE_DIR=warm_cache)))

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r.get(key, float("nan")) for r in runs)

    f_first, w_first = med(frozen_runs, "first_launches_s"), med(warm_runs, "first_launches_s")
    f_proc, w_proc = med(frozen_runs, "process_wall_s"), med(warm_runs, "process_wall_s")
    checks = {k: all(c[k] for c in checks_per_round) for k in checks_per_round[0]}
    checks["warm all ops correct"] = all(r.get("all_ok") for r in warm_runs)
    checks["precompiled with no GPU visible"] = report["precompile"]["returncode"] == 0
    checks["first launches at most 1.2x warm"] = f_first <= 1.2 * w_first
    report.update(
        frozen=[{k: v for k, v in r.items() if k != "results"} | {"failed": [x for x in r.get("results", [])
                                                                          if not x.get("ok")]} for r in frozen_runs],
        warm=[{k: v for k, v in r.items() if k != "results"} for r in warm_runs],
        ops=[{"op": x["op"], "rel_err": x.get("rel_err"), "frozen_ms": x.get("ms")}
             for x in frozen_runs[0].get("results", [])],
        first_launches_s={"frozen_median": f_first, "warm_median": w_first, "ratio": round(f_first / w_first, 3),
                          "cold_record": cold.get("first_launches_s")},
        process_wall_s={"frozen_median": f_proc, "warm_median": w_proc, "ratio": round(f_proc / w_proc, 3)},
        checks=checks, ok=all(checks.values()),
    )
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
