#!/usr/bin/env bash
# One device call for issue 17 (zero compiles at first launch), from the
# repository root on the GPU machine; carry build/gpu-wheel (staged by
# tools/gpu_wheel_check.sh --stage), .whl (liger-kernel wheel) and .gpu/host
# (tests/gpu/host_stubs_e2e.py build, under Python 3.12 + Triton 3.6).
set -uo pipefail
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
export PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  build/gpu-wheel/whl/*.whl .whl/liger_kernel-*.whl || exit 1
export PYTHONPATH=/tmp/site
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc
  python3 -c 'import sys, torch, triton, pyruntime, pyruntime.core as n, liger_kernel; print(sys.version.split()[0], torch.__version__, triton.__version__, pyruntime.__version__, n.BACKEND, pyruntime.__file__)'; } 2>&1 | tee "$OUT/env.txt"
echo "== host code built on the CPU VM: compiler refused"
timeout 150 python3 tests/gpu/host_stubs_e2e.py run .gpu/host/kernels.prtb > "$OUT/host_stubs_run.json" 2> "$OUT/host_stubs_run.err"; echo "rc=$?"
echo "== baseline: no host code, compiler allowed"
timeout 150 python3 tests/gpu/host_stubs_e2e.py baseline .gpu/host/kernels.prtb > "$OUT/host_stubs_baseline.json" 2> "$OUT/host_stubs_baseline.err"; echo "rc=$?"
echo "== liger-kernel: record, precompile with no GPU, frozen vs warm"
timeout 400 python3 tests/gpu/liger_e2e.py --work /tmp/lw --rounds 2 > "$OUT/liger_e2e.json" 2> "$OUT/liger_e2e.err"; echo "rc=$?"
cp /tmp/lw/liger.toml /tmp/lw/precompile.json "$OUT/" 2>/dev/null
python3 - "$OUT" <<'PY'
import json, os, sys
o = sys.argv[1]
for f in ("host_stubs_run.json", "host_stubs_baseline.json", "liger_e2e.json"):
    try:
        d = json.load(open(os.path.join(o, f)))
    except Exception as e:
        print(f, "unreadable:", e); continue
    keep = {k: d.get(k) for k in ("ok", "mode", "compiler_run_count", "new_kernel_dirs", "new_host_modules",
                                  "cuda_utils_key_in_bundle", "all_first_launches_s", "all_correct", "checks",
                                  "first_launches_s", "process_wall_s", "precompile", "record") if k in d}
    print(f, json.dumps(keep)[:3000])
PY
