#!/usr/bin/env bash
# Run the dispatcher in the foreground (Ctrl-C stops it). Extra arguments go to
# `python -m dispatcher.app` (--host, --port, --threads, --log-level).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/common.sh
ensure_venv
RUN="$(run_dir)"
mkdir -p "$RUN"
pidfile="$RUN/dispatcher.pid"
if pid_is_ours "$pidfile"; then
    echo "error: a dispatcher is already running (pid $(cat "$pidfile")); stop it with ./cleanup.sh" >&2
    exit 1
fi
echo $$ > "$pidfile"
exec "$PYTHON" -m dispatcher.app "$@"
