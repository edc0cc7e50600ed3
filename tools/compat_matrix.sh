#!/usr/bin/env bash
# Compatibility matrix of the release wheel: CPython x Triton, each cell in a
# fresh venv.
#
#   bash tools/compat_matrix.sh [--wheel W] [--pythons "3.10 3.11 3.12 3.13"]
#        [--tritons "3.6.0 3.7.1 3.8.0 3.9.0"] [--ci] [--out FILE.md] [--work DIR]
#
#   --wheel W    the wheel to test (default: the newest dist/pyruntime-*-manylinux*.whl;
#                bash tools/build_wheels.sh makes it)
#   --ci         only the oldest and the newest CPython (3.10, 3.13), each
#                with the newest Triton that has a wheel for it
#   --out FILE   the markdown table (default: bench/results/<date>-wheels-matrix.md;
#                written after every cell, so a stopped run keeps what it had)
#   --work DIR   venvs, logs and a copy of tests/ (default: /tmp/prt-compat);
#                each cell's venv is removed when the cell ends
#
# A cell: `python -m venv`, `pip install <wheel> triton==X pytest hypothesis
# pytest-timeout`, a check that `import pyruntime` is the wheel's (not this
# tree's) with the C backend, then tests/test_framing.py test_hashing.py
# test_packing.py (C core, against the twin) and tests/test_jit_keys.py
# (precompiled keys = the JIT's keys, under that Triton) from a copy of
# tests/ outside the tree, and tools/compat_roundtrip.py (precompile for
# cuda:90 without a GPU, bundle, restore, compare). A Triton release without
# a wheel for that CPython is "no wheel", not a failure. Exit status: 1 when a
# cell failed. Interpreters: pyenv's X.Y.*, else pythonX.Y on PATH.
# Triton wheels are 180-280 MB each: run it with nice, in the background.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WHEEL="" PYTHONS="3.10 3.11 3.12 3.13" TRITONS="3.6.0 3.7.1 3.8.0 3.9.0" CI_MODE=0
OUTFILE="" WORK="${PYRUNTIME_COMPAT_WORK:-/tmp/prt-compat}"
TESTS="test_framing.py test_hashing.py test_packing.py test_jit_keys.py"
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) WHEEL="$2"; shift ;;
    --pythons) PYTHONS="$2"; shift ;;
    --tritons) TRITONS="$2"; shift ;;
    --ci) CI_MODE=1 ;;
    --out) OUTFILE="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    -h|--help) sed -n 2,30p "$0"; exit 0 ;;
    *) echo "compat_matrix: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$WHEEL" ]; then
  WHEEL="$(ls -t "$ROOT"/dist/pyruntime-*-manylinux*.whl 2>/dev/null | head -1)"
fi
[ -n "$WHEEL" ] && [ -f "$WHEEL" ] || { echo "compat_matrix: no wheel (bash tools/build_wheels.sh, or --wheel)" >&2; exit 2; }
WHEEL="$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")"
[ "$CI_MODE" = 1 ] && PYTHONS="3.10 3.13"
DATE="$(date +%F)"
[ -n "$OUTFILE" ] || OUTFILE="$ROOT/bench/results/$DATE-wheels-matrix.md"
mkdir -p "$WORK/logs" "$(dirname "$OUTFILE")"
export PIP_DISABLE_PIP_VERSION_CHECK=1
log() { echo "compat_matrix: $*" >&2; }

find_python() {  # X.Y -> an interpreter of that version
  local want="$1" p
  for p in "$(pyenv root 2>/dev/null)"/versions/"$want".*/bin/python"$want" \
           /root/.pyenv/versions/"$want".*/bin/python"$want" python"$want"; do
    if "$p" -c "import sys, venv; sys.exit(sys.version_info[:2] != tuple(map(int, '$want'.split('.'))))" 2>/dev/null; then
      command -v "$p"; return 0
    fi
  done
  return 1
}

# The tests run from a copy, so that `import pyruntime` can only be the wheel.
TESTDIR="$WORK/suite"
rm -rf "$TESTDIR" && mkdir -p "$TESTDIR"
cp -r "$ROOT/tests" "$TESTDIR/tests"
cp "$ROOT/pyproject.toml" "$TESTDIR/"          # pytest's ini options (markers, timeout)
cp "$ROOT/tools/compat_roundtrip.py" "$TESTDIR/"
find "$TESTDIR" -name __pycache__ -prune -exec rm -rf {} +

declare -A CELL DETAIL
rows=()
write_table() {
  {
    echo "# Wheel compatibility matrix, $DATE"
    echo
    echo "- wheel: \`$(basename "$WHEEL")\` (sha256 \`$(sha256sum "$WHEEL" | cut -c1-16)…\`)"
    if [ -f "$WHEEL.build.txt" ]; then sed 's/^/- wheel /' "$WHEEL.build.txt" | grep -v '^- wheel sha256'
    else echo "- wheel built from: unknown (no $(basename "$WHEEL").build.txt)"; fi
    echo "- machine: $(uname -srm), $(nproc) cores, $(ldd --version 2>/dev/null | head -1 | sed 's/^ldd //'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    echo "- command: \`bash tools/compat_matrix.sh$([ "$CI_MODE" = 1 ] && echo ' --ci')\`; per cell a fresh venv with the wheel and \`triton==X\`"
    echo "- each cell: \`$TESTS\` (pytest, C core and twin) + \`tools/compat_roundtrip.py\` (precompile 3 kernels for cuda:90 without a GPU, bundle, restore, compare); **pass** = both; *no wheel* = that Triton has no wheel for that CPython on PyPI"
    echo
    local header="| CPython |" sep="|---|" t p
    for t in $TRITONS; do header+=" Triton $t |"; sep+="---|"; done
    echo "$header"; echo "$sep"
    for p in $PYTHONS; do
      local row="| $p |"
      for t in $TRITONS; do row+=" ${CELL[$p/$t]:-not run} |"; done
      echo "$row"
    done
    echo
    echo "Details (tests: pytest's summary; round trip: kernels built/restored; seconds for the whole cell):"
    echo
    for p in $PYTHONS; do for t in $TRITONS; do
      [ -n "${DETAIL[$p/$t]:-}" ] && echo "- $p / $t: ${DETAIL[$p/$t]}"
    done; done
  } > "$OUTFILE"
}

failed=0
for p in $PYTHONS; do
  py="$(find_python "$p")" || { for t in $TRITONS; do CELL[$p/$t]="no interpreter"; done; log "no CPython $p"; write_table; continue; }
  tritons="$TRITONS"
  if [ "$CI_MODE" = 1 ]; then
    # the newest Triton that has a wheel for this CPython
    tritons=""
    # (the wheel it downloads is what the cell installs: --find-links below)
    rm -rf "$WORK/probe"
    for t in $(echo "$TRITONS" | tr ' ' '\n' | sort -rV); do
      if "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$p" -d "$WORK/probe" "triton==$t" >/dev/null 2>&1; then
        tritons="$t"; break
      fi
      CELL[$p/$t]="*no wheel*"
    done
    [ -n "$tritons" ] || { log "no Triton wheel for CPython $p"; failed=1; continue; }
  fi
  for t in $tritons; do
    cell="$p-$t" venv="$WORK/venv-$p-$t" logf="$WORK/logs/$p-$t.log"
    log "cell CPython $p ($py) x Triton $t (log: $logf)"
    start=$SECONDS
    rm -rf "$venv"
    : > "$logf"
    "$py" -m venv "$venv" >>"$logf" 2>&1
    vpy="$venv/bin/python"
    links=()
    [ -d "$WORK/probe" ] && links=(--find-links "$WORK/probe")
    if ! "$vpy" -m pip install --no-input "${links[@]}" "$WHEEL" "triton==$t" pytest pytest-timeout hypothesis >>"$logf" 2>&1; then
      if grep -q "No matching distribution found for triton" "$logf"; then
        CELL[$p/$t]="*no wheel*"
      else
        CELL[$p/$t]="**FAIL** (install)"; failed=1
      fi
      rm -rf "$venv"; write_table; continue
    fi
    where="$(cd "$TESTDIR" && "$vpy" -c 'import pyruntime, pyruntime.core as n, triton; print(n.BACKEND, triton.__version__, pyruntime.__file__)' 2>>"$logf")"
    echo "import: $where" >>"$logf"
    case "$where" in
      "c $t $venv/"*) ;;
      *) CELL[$p/$t]="**FAIL** (import: ${where:-error})"; failed=1; rm -rf "$venv"; write_table; continue ;;
    esac
    tests_args=()
    for f in $TESTS; do tests_args+=("tests/$f"); done
    (cd "$TESTDIR" && "$vpy" -m pytest -q -p no:cacheprovider "${tests_args[@]}") >>"$logf" 2>&1
    trc=$?
    summary="$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|error).* =+$|[0-9]+ (passed|failed)' "$logf" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')"
    rt="$(cd "$TESTDIR" && "$vpy" compat_roundtrip.py 2>>"$logf")"
    rrc=$?
    echo "roundtrip: $rt (rc $rrc)" >>"$logf"
    secs=$((SECONDS - start))
    kern="$(echo "$rt" | "$vpy" -c 'import json,sys; d=json.loads(sys.stdin.read() or "{}"); print(d.get("kernels","?"))' 2>/dev/null)"
    if [ $trc -eq 0 ] && [ $rrc -eq 0 ]; then
      CELL[$p/$t]="**pass**"
    else
      what=""
      [ $trc -ne 0 ] && what+="tests"
      [ $rrc -ne 0 ] && what+="${what:+, }round trip"
      CELL[$p/$t]="**FAIL** ($what)"; failed=1
    fi
    DETAIL[$p/$t]="tests: ${summary:-no summary (rc $trc)}; round trip: $([ $rrc -eq 0 ] && echo "$kern kernels" || echo "failed, see log") ; ${secs} s"
    log "  -> ${CELL[$p/$t]} (${DETAIL[$p/$t]})"
    rm -rf "$venv"
    write_table
  done
done
rm -rf "$WORK/probe"
write_table
log "table: $OUTFILE"
exit $failed
