#!/usr/bin/env bash
# Run workers in the foreground: ./start_worker.sh WORKER_ID [--processes N|auto] [--url URL] [--burst] ...
# One process (the default, WORKER_PROCESSES=1): a plain worker named WORKER_ID.
# N > 1 (or auto = one per usable CPU core): a supervisor running WORKER_ID-1 ... WORKER_ID-N that
# restarts any worker that dies. Ctrl-C (or SIGTERM) checkpoints and releases the running tasks,
# then exits; a second one exits at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: $0 WORKER_ID [--processes N|auto] [worker options]" >&2
    exit 2
fi
worker_id="$1"
shift
if ! [[ "$worker_id" =~ ^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$ ]]; then
    echo "error: WORKER_ID may contain letters, digits and . _ : @ - (got '$worker_id')" >&2
    exit 2
fi
processes=""
rest=()
while [ $# -gt 0 ]; do
    case "$1" in
        --processes) [ $# -ge 2 ] || { echo "error: --processes needs a value" >&2; exit 2; }
                     processes="$2"; shift 2 ;;
        --processes=*) processes="${1#--processes=}"; shift ;;
        *) rest+=("$1"); shift ;;
    esac
done
source scripts/common.sh
ensure_venv
# One Python start for both answers: how many processes, and where PID files go.
plan="$("$PYTHON" - "$processes" <<'PY'
import sys
from shared.config import ConfigError, load_config, resolve_process_count
try:
    config = load_config()
    count = (config.worker_process_count if sys.argv[1] == ""
             else resolve_process_count(sys.argv[1], "--processes"))
except ConfigError as exc:
    print(f"configuration error: {exc}", file=sys.stderr)
    sys.exit(2)
print(count, config.run_path)
PY
)"
read -r count RUN <<< "$plan"
mkdir -p "$RUN"
pidfile="$RUN/worker-$worker_id.pid"
if pid_is_ours "$pidfile"; then
    echo "error: worker $worker_id is already running (pid $(cat "$pidfile"))" >&2
    exit 1
fi
echo $$ > "$pidfile"
if [ "$count" -eq 1 ]; then
    exec "$PYTHON" -m worker "$worker_id" "${rest[@]}"
fi
exec "$PYTHON" -m worker.supervisor "$worker_id" --processes "$count" "${rest[@]}"
