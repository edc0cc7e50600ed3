#!/usr/bin/env bash
# Run the C core's tests against a build made with -fsanitize=address,undefined,
# then its threaded tests (tests/test_kernel_dirs.py) against a
# -fsanitize=thread build.
#
#   bash tests/sanitize.sh [extra pytest args]
#
# The sanitized module is built in a temporary copy of the tree (csrc/ and
# the pyruntime package), so the normal in-tree build is never touched. The
# tests run from that copy with libasan preloaded; a generated check fails the
# run unless the C backend really is the sanitized module from the copy, and a
# positive control first proves that an out-of-bounds read in the module is
# caught (and, for TSan, that two threads copying into the same bytes are).
# PYTHONMALLOC=malloc routes Python's own small objects through malloc, so
# ASan sees the bounds of the buffers Python hands to C.
# Environment: PYTHON (default .venv/bin/python), PYRUNTIME_HYPOTHESIS_PROFILE.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
TESTS=(test_framing.py test_hashing.py test_packing.py test_fuzz_framing.py test_fuzz_packing.py test_fuzz_table.py
       test_fuzz_decoder.py test_format_doc.py test_kernel_dirs.py test_restore_hostile.py)
start=$(date +%s)

LIBASAN=$(gcc -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ] || [ "$LIBASAN" = libasan.so ]; then
    echo "sanitize.sh: libasan.so not found (Debian/Ubuntu: apt-get install gcc, which ships it)" >&2
    exit 2
fi
LIBASAN=$(readlink -f "$LIBASAN")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/prt-sanitize.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SRC="$WORK/src"
mkdir -p "$SRC/tests" "$SRC/docs"
cp -r "$ROOT/csrc" "$SRC/csrc"
# the package without any compiled module or bytecode of the normal build
tar -C "$ROOT" --exclude='*.so' --exclude='__pycache__' --exclude='_c.c' -cf - pyruntime | tar -C "$SRC" -xf -
cp "$ROOT/pyproject.toml" "$SRC/"
cp "$ROOT/docs/FORMAT.md" "$SRC/docs/"
cp "$ROOT/tests/conftest.py" "$ROOT/tests/_limits.py" "$ROOT/tests/_trees.py" "$ROOT/tests/hostile_bundles.py" "$SRC/tests/"
for t in "${TESTS[@]}"; do cp "$ROOT/tests/$t" "$SRC/tests/"; done

# control SANITIZER PATTERN CODE: the Python CODE, run in the copy, must
# fail with the sanitizer's report PATTERN (else the run proves nothing).
control() {
    local log="$WORK/control-$1.log" rc
    set +e
    (cd "$SRC" && "$PY" -c "$3") >"$log" 2>&1
    rc=$?
    set -e
    if [ $rc -eq 0 ] || ! grep -q "$2" "$log"; then
        echo "sanitize.sh: $1 did not report the control (exit $rc):" >&2
        cat "$log" >&2
        exit 1
    fi
    echo "   reported (exit $rc)"
}

echo "== building the sanitized C module in $SRC"
(cd "$SRC" && PYRUNTIME_SANITIZE=1 "$PY" csrc/build_ffi.py >"$WORK/build.log" 2>&1) || {
    cat "$WORK/build.log" >&2
    exit 1
}
SO=$(ls "$SRC"/pyruntime/core/_c*.so)
if ! nm -D "$SO" | grep __asan_ >/dev/null; then  # no -q: nm must not die of SIGPIPE under pipefail
    echo "sanitize.sh: $SO has no ASan instrumentation" >&2
    exit 1
fi

export PYTHONPATH="$SRC"
export LD_PRELOAD="$LIBASAN"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONMALLOC=malloc
export PYRUNTIME_SANITIZED_MODULE="$SO"
unset PYRUNTIME_PURE_PYTHON

echo "== positive control: an out-of-bounds read in the module must be caught"
control AddressSanitizer heap-buffer-overflow '
from pyruntime import core as native
b = native.backend
src = bytearray(1000)
dst = bytearray(1500)
e = b.ffi.new("prt_entry *", {"name_len": 1, "method": 0, "raw_size": 1500, "comp_size": 1500})
# told the source holds 2000 bytes, the module copies 500 past its end
b.lib.prt_unpack_data(b.ffi.from_buffer(src), 2000, e, 1, b.ffi.from_buffer(dst), 1500, b.ffi.NULL)
'

# Fails the run unless the tests use the sanitized module from the copy.
cat >"$SRC/tests/test_zz_sanitized_build.py" <<'EOF'
import os

import pyruntime
from pyruntime import core as native


def test_the_c_backend_is_the_sanitized_copy():
    want = os.environ["PYRUNTIME_SANITIZED_MODULE"]
    src = os.path.dirname(os.path.dirname(want))
    assert pyruntime.__file__.startswith(src + os.sep), pyruntime.__file__
    assert native.BACKEND == "c" and native.backends()[0].name == "c"
    import pyruntime.core._c as mod

    assert os.path.realpath(mod.__file__) == os.path.realpath(want)
    with open("/proc/self/maps") as f:
        maps = f.read()
    assert "libasan" in maps and os.path.realpath(want) in maps
EOF

echo "== running the core tests under ASan/UBSan"
(cd "$SRC" && "$PY" -m pytest -q -p no:cacheprovider -m "not slow" \
    "${TESTS[@]/#/tests/}" tests/test_zz_sanitized_build.py "$@")

# ThreadSanitizer over the tests that run the C threads (the worker pool,
# parallel unpacking and writing, background unpacking). TSan cannot start
# threads in a child forked from a threaded process: that one test is left
# to the other runs.
LIBTSAN=$(gcc -print-file-name=libtsan.so)
if [ ! -e "$LIBTSAN" ] || [ "$LIBTSAN" = libtsan.so ]; then
    echo "sanitize.sh: libtsan.so not found (Debian/Ubuntu: apt-get install gcc, which ships it)" >&2
    exit 2
fi
echo "== building the ThreadSanitizer C module"
# no object file of the ASan build may be reused
rm -f "$SRC"/pyruntime/core/_c*.so
find "$SRC" -name '*.o' -delete
(cd "$SRC" && PYRUNTIME_SANITIZE=thread "$PY" csrc/build_ffi.py >"$WORK/build-tsan.log" 2>&1) || {
    cat "$WORK/build-tsan.log" >&2
    exit 1
}
SO=$(ls "$SRC"/pyruntime/core/_c*.so)
if ! nm -D "$SO" | grep __tsan_ >/dev/null || nm -D "$SO" | grep __asan_ >/dev/null; then
    echo "sanitize.sh: $SO is not a TSan-only build" >&2
    exit 1
fi
export LD_PRELOAD=$(readlink -f "$LIBTSAN") PYRUNTIME_SANITIZED_MODULE="$SO"
export TSAN_OPTIONS=halt_on_error=1:exitcode=66
(cd "$SRC" && "$PY" -c '
import os, pyruntime.core._c as m
assert os.path.realpath(m.__file__) == os.path.realpath(os.environ["PYRUNTIME_SANITIZED_MODULE"])
assert "libtsan" in open("/proc/self/maps").read()')
echo "== positive control: two threads unpacking into the same bytes must be reported"
control ThreadSanitizer "data race" '
import os
from pyruntime import core as native
b = native.backend
data = os.urandom(200_000)  # incompressible: stored, copied with memcpy
blob = b.pack_stored([(b"e", b.pack_entry(data))])
u = b.unpack_begin(blob, 1 << 30, 1 << 32)
jobs = []
for _ in range(2):  # both write u._block: no lock orders the two copies
    job = b.ffi.new("prt_unpack_job *")
    job.data, job.len, job.entries, job.n = u._src, len(u._src), u._entries, 1
    job.first, job.count, job.out, job.out_len, job.nthreads = 0, 1, u._block, u._total, 1
    b.lib.prt_unpack_start(b.ffi.NULL, job, b.ffi.NULL)  # NULL pool: a thread of its own each
    jobs.append(job)
for job in jobs:
    b.lib.prt_unpack_finish(job, b.ffi.NULL)
'
echo "== running the threaded C tests under TSan"
(cd "$SRC" && "$PY" -m pytest -q -p no:cacheprovider -m "not slow" tests/test_kernel_dirs.py \
    tests/test_restore_hostile.py::test_the_writer_replaces_or_reports_non_directories_on_both_backends \
    --deselect tests/test_kernel_dirs.py::test_a_forked_child_gets_a_pool_of_its_own "$@")
echo "== sanitizer runs clean in $(( $(date +%s) - start )) s"
