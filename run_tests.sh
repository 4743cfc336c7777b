#!/usr/bin/env bash
# Set up .venv with the pinned requirements and run the whole test suite.
# Extra arguments go to pytest, e.g. ./run_tests.sh -m "not e2e" or ./run_tests.sh -k sieve
# PostgreSQL cases run against TEST_POSTGRES_URL (default: the local server) in a database of
# their own; when it cannot be reached they are skipped, unless TASKQUEUE_REQUIRE_POSTGRES=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/common.sh
ensure_venv dev
# Test tools from Debian: libfaketime runs a dispatcher with a skewed clock; chromium is the
# browser the dashboard tests drive (through Playwright, never a downloaded browser build).
ensure_debian_packages faketime chromium
start=$(date +%s)
status=0
if [ $# -eq 0 ]; then
    # Everything but the chaos tests in three processes (most of them wait on real processes),
    # then the chaos tests one at a time: they measure timings that a busy machine distorts.
    "$PYTHON" -m pytest -m "not chaos" -n 3 --dist worksteal --durations=15 || status=$?
    "$PYTHON" -m pytest -m chaos || status=$?
else
    "$PYTHON" -m pytest "$@" || status=$?
fi
echo "test suite took $(( $(date +%s) - start ))s"
exit "$status"
