#!/usr/bin/env bash
# The release (manylinux) wheel through the existing GPU check
# (tests/gpu/run_on_gpu.sh) on the GPU machine, which has Python 3.12, its
# own torch and Triton, and no network.
#
# Here, no GPU needed:
#   bash tools/gpu_wheel_check.sh --stage [--triton 3.6.0]
#     stages build/gpu-wheel/: whl/ = dist/'s manylinux wheel (built by
#     tools/build_wheels.sh when missing) + cp312 wheels of cffi, pycparser,
#     lz4 and xxhash; gpu/ = kernels.prtb + build.json from
#     `tests/gpu/e2e.py build`, run in a fresh Python 3.12 venv with that
#     wheel and triton==<the GPU machine's Triton> (default 3.6.0: Triton's
#     cache keys depend on its version and on the Python minor version).
# There, with the device tool, from the repository root:
#   run(command="bash tools/gpu_wheel_check.sh", carry=["build/gpu-wheel"])
#     puts build/gpu-wheel/whl into .whl/ and build/gpu-wheel/gpu into .gpu/
#     (of the device's copy), runs tests/gpu/run_on_gpu.sh (installs .whl/
#     into /tmp/site: restore, launch, compare, no-JIT proof; scale; GPT-2),
#     then checks that the pyruntime it ran is the manylinux wheel with the C
#     backend, and writes $OUT/wheel_check.txt.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STAGE_DIR="$ROOT/build/gpu-wheel"

if [ "${1:-}" = "--stage" ]; then
  set -e
  TRITON="3.6.0"
  [ "${2:-}" = "--triton" ] && TRITON="$3"
  whl="$(ls -t dist/pyruntime-*-manylinux*.whl 2>/dev/null | head -1)"
  if [ -z "$whl" ]; then
    bash tools/build_wheels.sh
    whl="$(ls -t dist/pyruntime-*-manylinux*.whl | head -1)"
  fi
  py312=""
  for p in "$(pyenv root 2>/dev/null)"/versions/3.12.*/bin/python3.12 /root/.pyenv/versions/3.12.*/bin/python3.12 python3.12; do
    "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { py312="$p"; break; }
  done
  [ -n "$py312" ] || { echo "gpu_wheel_check: needs CPython 3.12 here" >&2; exit 1; }
  rm -rf "$STAGE_DIR" && mkdir -p "$STAGE_DIR/whl" "$STAGE_DIR/gpu"
  cp "$whl" "$STAGE_DIR/whl/"
  "$py312" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$STAGE_DIR/whl" cffi pycparser lz4 xxhash
  venv="$STAGE_DIR/venv"
  "$py312" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "$whl" "triton==$TRITON"
  (cd "$STAGE_DIR" && env -u TRITON_CACHE_DIR "$venv/bin/python" "$ROOT/tests/gpu/e2e.py" build "$STAGE_DIR/gpu" >/dev/null)
  rm -rf "$venv" "$STAGE_DIR/gpu/cache"
  echo "$(basename "$whl") sha256 $(sha256sum "$whl" | cut -d' ' -f1); bundle for Python 3.12 + Triton $TRITON" > "$STAGE_DIR/STAGED"
  ls -la "$STAGE_DIR/whl" "$STAGE_DIR/gpu"
  echo "gpu_wheel_check: staged; on the GPU machine: bash tools/gpu_wheel_check.sh (carry build/gpu-wheel)"
  exit 0
fi

# --- on the GPU machine ---------------------------------------------------------
# It replaces .whl/ and .gpu/: only on the GPU machine's copy of the tree.
command -v nvidia-smi >/dev/null || { echo "gpu_wheel_check: no nvidia-smi: run this on the GPU machine (--stage here)" >&2; exit 1; }
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
[ -f "$STAGE_DIR/STAGED" ] || { echo "gpu_wheel_check: $STAGE_DIR not staged (run --stage here first, carry it)" >&2; exit 1; }
rm -rf .whl .gpu && mkdir -p .whl .gpu
cp "$STAGE_DIR"/whl/*.whl .whl/
cp "$STAGE_DIR"/gpu/kernels.prtb "$STAGE_DIR"/gpu/build.json .gpu/
cat "$STAGE_DIR/STAGED"
bash tests/gpu/run_on_gpu.sh
rc=$?
{
  echo "staged: $(cat "$STAGE_DIR/STAGED")"
  echo "run_on_gpu.sh rc=$rc"
  python3 -c 'import platform, sys; print("python", sys.version.split()[0], "libc", *platform.libc_ver())'
  grep -h '^Tag:' /tmp/site/pyruntime-*.dist-info/WHEEL
  PYTHONPATH=/tmp/site python3 -c 'import pyruntime, pyruntime.core as n; from pyruntime.core import _c; print("backend", n.BACKEND, _c.__file__, "xxh3", _c.ffi.string(_c.lib.prt_xxh_impl_name()).decode())'
} 2>&1 | tee "$OUT/wheel_check.txt"
grep -q 'Tag: cp310-abi3-manylinux_2_17_x86_64' "$OUT/wheel_check.txt" && grep -q '^backend c ' "$OUT/wheel_check.txt" || rc=1
echo "gpu_wheel_check: rc=$rc"
exit $rc
