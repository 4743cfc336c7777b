#!/usr/bin/env bash
# Run one worker in the foreground: ./start_worker.sh WORKER_ID [--url URL] [--burst] ...
# Ctrl-C (or SIGTERM) checkpoints and releases its task, then exits; a second one exits at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: $0 WORKER_ID [worker options]" >&2
    exit 2
fi
worker_id="$1"
if ! [[ "$worker_id" =~ ^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$ ]]; then
    echo "error: WORKER_ID may contain letters, digits and . _ : @ - (got '$worker_id')" >&2
    exit 2
fi
source scripts/common.sh
ensure_venv
RUN="$(run_dir)"
mkdir -p "$RUN"
pidfile="$RUN/worker-$worker_id.pid"
if pid_is_ours "$pidfile"; then
    echo "error: worker $worker_id is already running (pid $(cat "$pidfile"))" >&2
    exit 1
fi
echo $$ > "$pidfile"
exec "$PYTHON" -m worker "$@"
