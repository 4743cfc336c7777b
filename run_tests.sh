#!/usr/bin/env bash
# Set up .venv with the pinned requirements and run the whole test suite.
# Extra arguments go to pytest, e.g. ./run_tests.sh -m "not e2e" or ./run_tests.sh -k sieve
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/common.sh
ensure_venv dev
start=$(date +%s)
status=0
"$PYTHON" -m pytest "$@" || status=$?
echo "test suite took $(( $(date +%s) - start ))s"
exit "$status"
