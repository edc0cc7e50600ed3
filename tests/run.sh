#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine, then runs the suite.
#   bash tests/run.sh [pytest args]
# PYRUNTIME_HYPOTHESIS_PROFILE=dev|ci|thorough picks the fuzzing depth (ci).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/.ci/bootstrap.sh"
cd "$ROOT"
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
