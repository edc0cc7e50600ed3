#!/usr/bin/env bash
# The bundle suite of `python -m pyruntime.bench` on the lent GPU host (16
# cores), to see how the bundle figures scale beyond the 2-core CI VM. Needs
# .whl/ as for run_on_gpu.sh (pyruntime abi3 wheel + cffi, pycparser, lz4 for
# cp312). The corpus is compiled there with the installed Triton. Results in $OUT.
set -uo pipefail
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
cd /tmp  # not the repository root: import the installed wheel, not the source tree
python3 -c 'import pyruntime, pyruntime.core as n; print(pyruntime.__file__, n.BACKEND)'
timeout 540 python3 -m pyruntime.bench --suite bundle --no-progress \
    --json "$OUT/bundle.json" --markdown "$OUT/bundle.md" 2>&1 | tail -70
