#!/usr/bin/env bash
# Set up everything pyruntime needs on a fresh machine, idempotently:
# system headers (liblz4-dev, libxxhash-dev), a virtual environment in .venv,
# the package built from source with its C core, and the test/bench extras.
# Sourced by tests/run.sh and bench/run.sh; leaves $PY pointing at the venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PYRUNTIME_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

have_headers() { [ -f /usr/include/lz4.h ] && [ -f /usr/include/xxhash.h ] && command -v pkg-config >/dev/null; }

if ! have_headers; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "bootstrap: installing liblz4-dev libxxhash-dev pkg-config with apt-get" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq liblz4-dev libxxhash-dev pkg-config >/dev/null
  else
    echo "bootstrap: missing lz4.h/xxhash.h; install liblz4-dev and libxxhash-dev (Debian/Ubuntu) or lz4-devel and xxhash-devel (Fedora)" >&2
    exit 1
  fi
fi

# redis-server (Debian package) for the store tests and bench; without root
# or sudo they skip, saying why. moto's S3 server comes with the test extra.
if ! command -v redis-server >/dev/null && [ ! -x /usr/bin/redis-server ] && [ "${PYRUNTIME_SKIP_REDIS:-0}" != "1" ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "bootstrap: installing redis-server with apt-get (store tests)" >&2
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null || \
      echo "bootstrap: could not install redis-server; the redis store tests will be skipped" >&2
  else
    echo "bootstrap: redis-server missing and no root/sudo; the redis store tests will be skipped" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# Rebuild only when the build inputs changed since the last bootstrap.
stamp="$VENV/.pyruntime-build-stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/csrc/* | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$PY" -c "import pyruntime.core._c" 2>/dev/null; then
  echo "bootstrap: installing pyruntime and its dependencies into $VENV" >&2
  "$PY" -m pip install -q --upgrade pip setuptools wheel cffi 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$PY" -m pip install -q --no-build-isolation -e "$ROOT[test,plot]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$PY" -c "import pyruntime.core._c" || { echo "bootstrap: the C core did not build" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# torch is an optional extra: the integration tests and the bench's peers use it.
# 'torch==2.13.0' is the CPU build this workplace keeps on local disk.
if [ "${PYRUNTIME_SKIP_TORCH:-0}" != "1" ] && ! "$PY" -c "import torch" 2>/dev/null; then
  echo "bootstrap: installing torch==2.13.0 (optional extra; PYRUNTIME_SKIP_TORCH=1 skips it)" >&2
  "$PY" -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$PY" -c "import torch" 2>/dev/null || \
    echo "bootstrap: torch not installed; torch tests and peers will be skipped" >&2
fi
# a real third-party kernel package for the record/precompile/freeze tests (needs only torch and triton)
if [ "${PYRUNTIME_SKIP_TORCH:-0}" != "1" ] && "$PY" -c "import torch" 2>/dev/null \
    && ! "$PY" -c "import liger_kernel" 2>/dev/null; then
  echo "bootstrap: installing liger-kernel==0.8.5 (test-only, --no-deps)" >&2
  "$PY" -m pip install -q --no-deps "liger-kernel==0.8.5" 2>&1 | grep -v "^WARNING: Location" >&2 || true
fi
export PY
