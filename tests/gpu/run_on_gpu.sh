#!/usr/bin/env bash
# The whole GPU check in one call of the device tool (issues 6 and 8).
# Prepared here: .whl/ (the pyruntime abi3 wheel built with
# PYRUNTIME_STATIC_DEPS=1, plus cffi, pycparser, lz4 for cp312) and .gpu/
# (kernels.prtb + build.json from `tests/gpu/e2e.py build` under Triton 3.6).
# Run there from the repository root; results land in $OUT.
# GPU_CHECK_SKIP="scale gpt2" leaves those parts out (a 10-minute call).
set -uo pipefail
skip() { case " ${GPU_CHECK_SKIP:-} " in *" $1 "*) echo "== $1: skipped (GPU_CHECK_SKIP)"; return 0;; esac; return 1; }
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; uname -r;
  python3 -c 'import sys, torch, triton, pyruntime, pyruntime.core as n; print(sys.version.split()[0], torch.__version__, triton.__version__, pyruntime.__version__, n.BACKEND, pyruntime.__file__)'; } \
  2>&1 | tee "$OUT/env.txt"
cp .gpu/build.json "$OUT/build.json"
echo "== e2e run (restore, launch, compare, no-JIT proof)"
timeout 150 python3 tests/gpu/e2e.py run .gpu/kernels.prtb > "$OUT/e2e_run.json" 2> "$OUT/e2e_run.err"; echo "rc=$?"
tail -c 1500 "$OUT/e2e_run.json"; tail -5 "$OUT/e2e_run.err"
if ! skip scale; then
  echo "== precompile target=local, W = 1, 4, 16"
  timeout 200 python3 tests/gpu/e2e.py scale > "$OUT/e2e_scale.json" 2> "$OUT/e2e_scale.err"; echo "rc=$?"
  cat "$OUT/e2e_scale.json"; tail -5 "$OUT/e2e_scale.err"
fi
if ! skip gpt2; then
  echo "== GPT-2 under torch.compile"
  timeout 330 python3 tests/gpu/gpt2_compile.py > "$OUT/gpt2.json" 2> "$OUT/gpt2.err"; echo "rc=$?"
  tail -c 2500 "$OUT/gpt2.json"; tail -8 "$OUT/gpt2.err"
fi
