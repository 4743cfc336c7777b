#!/usr/bin/env bash
# One command on a fresh clone: set up .venv, start a dispatcher and two workers (one worker
# supervisor running worker-1 and worker-2, as ./start_worker.sh worker --processes 2) on the
# SQLite default, submit a batch of prime tasks (both algorithms), show live progress and the
# results, print /stats, then stop exactly the processes this script started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/common.sh
ensure_venv
RUN="$(run_dir)"
LOGS="$RUN/logs"
mkdir -p "$LOGS"
URL="$("$PYTHON" -c 'from shared.config import load_config; print(load_config().dispatcher_url)')"

dispatcher_pid=""
supervisor_pid=""
stop_started() {
    if [ -n "$supervisor_pid" ]; then  # it stops its workers warm, then exits
        kill -TERM "$supervisor_pid" 2>/dev/null || true
        wait "$supervisor_pid" 2>/dev/null || true
    fi
    if [ -n "$dispatcher_pid" ]; then
        kill -TERM "$dispatcher_pid" 2>/dev/null || true
        wait "$dispatcher_pid" 2>/dev/null || true
    fi
    for pidfile in "$RUN"/dispatcher-*.pid "$RUN"/worker-worker.pid; do
        pid_is_ours "$pidfile" || rm -f "$pidfile"
    done
    echo "stopped the dispatcher and workers this script started (logs in $LOGS)"
}
trap stop_started EXIT

echo "== starting the dispatcher on $URL (log: $LOGS/dispatcher.log)"
./start_dispatcher.sh > "$LOGS/dispatcher.log" 2>&1 &
dispatcher_pid=$!
if ! "$PYTHON" -c "
import sys
from shared.cluster import wait_until
import requests
def up():
    try:
        return requests.get('$URL/health', timeout=1).ok
    except requests.RequestException:
        return False
wait_until(up, 30, 0.1, 'dispatcher health')
" 2>/dev/null; then
    echo "error: the dispatcher did not come up; last lines of its log:" >&2
    tail -n 5 "$LOGS/dispatcher.log" >&2
    exit 1
fi

echo "== starting a worker supervisor with workers worker-1 and worker-2 (log: $LOGS/workers.log)"
./start_worker.sh worker --processes 2 > "$LOGS/workers.log" 2>&1 &
supervisor_pid=$!

echo "== submitting 6 sieve tasks up to 10^9, then 4 trial-division tasks up to 10^7"
"$PYTHON" add_task.py 6 1000000000 sieve --wait --timeout 600
"$PYTHON" add_task.py 4 10000000 trial_division --wait --timeout 600

echo "== /stats"
"$PYTHON" - "$URL" <<'PY'
import json, sys, requests
stats = requests.get(sys.argv[1] + "/stats", timeout=10).json()
print(json.dumps({k: stats[k] for k in ("tasks", "throughput", "reclaims")}, indent=2))
for w in stats["workers"]["details"]:
    print(f"worker {w['worker_id']}: {w['status']}, {w['tasks_completed']} tasks completed")
PY
echo "== done. Run it yourself: ./start_dispatcher.sh, ./start_worker.sh worker-1 (or one"
echo "   command per host: ./start_worker.sh host-a --processes auto),"
echo "   python3 add_task.py 5 100000, curl $URL/stats, ./cleanup.sh"
