#!/usr/bin/env bash
# Stop exactly the processes that start_dispatcher.sh and start_worker.sh started (by their
# PID files): SIGTERM, then SIGKILL after a grace period. Removes stale PID files.
#   ./cleanup.sh            stop workers and worker supervisors first (a supervisor stops its
#                           workers warm), then any supervised worker left behind, then the dispatcher
#   ./cleanup.sh --purge    also delete the SQLite database and the worker result caches
#   GRACE_SECONDS=N         how long to wait after SIGTERM (default 15)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/common.sh
ensure_venv
RUN="$(run_dir)"
GRACE_SECONDS="${GRACE_SECONDS:-15}"
purge=0
for arg in "$@"; do
    case "$arg" in
        --purge) purge=1 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "unknown option: $arg" >&2; exit 2 ;;
    esac
done

# alive PID: true while the process exists and is not a zombie waiting to be reaped.
alive() {
    local state
    state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != "Z" ]
}

stop_pidfile() {
    local pidfile="$1" name pid waited=0
    name="$(basename "$pidfile" .pid)"
    if ! pid_is_ours "$pidfile"; then
        echo "removed stale PID file for $name"
        rm -f "$pidfile"
        return
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    while alive "$pid" && [ "$waited" -lt $((GRACE_SECONDS * 10)) ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        echo "killed $name (pid $pid) after ${GRACE_SECONDS}s grace"
    else
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

found=0
shopt -s nullglob
for pidfile in "$RUN"/worker-*.pid; do found=1; stop_pidfile "$pidfile" & done
wait
# Supervised workers record their PIDs in children/; their supervisor has stopped them above
# and removed the files, so these are only ones whose supervisor was killed.
for pidfile in "$RUN"/children/worker-*.pid; do found=1; stop_pidfile "$pidfile" & done
wait
for pidfile in "$RUN"/dispatcher*.pid; do found=1; stop_pidfile "$pidfile" & done
wait
[ "$found" -eq 1 ] || echo "nothing to stop (no PID files in $RUN)"

if [ "$purge" -eq 1 ]; then
    db="$("$PYTHON" -c 'from shared.config import load_config; print(load_config().sqlite_path or "")')"
    if [ -n "$db" ]; then
        rm -f "$db" "$db-wal" "$db-shm" && echo "removed database $db"
    fi
    rm -rf "$RUN/cache" && echo "removed worker caches in $RUN/cache"
fi
