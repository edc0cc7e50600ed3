#!/usr/bin/env bash
# The main job: sets everything up on a fresh machine, then runs the benchmarks.
#   bash bench/run.sh [--quick] [--suite NAME] [--json FILE]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/.ci/bootstrap.sh"
cd "$ROOT"
exec "$PY" -m pyruntime.bench "$@"
