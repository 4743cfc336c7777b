#!/usr/bin/env bash
# Run a dispatcher in the foreground (Ctrl-C stops it):
#   ./start_dispatcher.sh [PORT] [--host H] [--log-level L]
# PORT (or --port PORT) defaults to DISPATCHER_PORT; DATABASE_URL comes from the environment or
# .env. Several dispatchers (different ports) can share one PostgreSQL DATABASE_URL; each
# records its PID in run/dispatcher-PORT.pid for ./cleanup.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
args=("$@")
port=""
if [ $# -ge 1 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
    port="$1"
    args=(--port "$1" "${@:2}")
fi
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --port) port="${args[$((i + 1))]:-}" ;;
        --port=*) port="${args[$i]#--port=}" ;;
    esac
done
source scripts/common.sh
ensure_venv
RUN="$(run_dir)"
mkdir -p "$RUN"
if [ -z "$port" ]; then
    port="$("$PYTHON" -c 'from shared.config import load_config; print(load_config().dispatcher_port)')"
fi
if ! [[ "$port" =~ ^[0-9]+$ ]]; then
    echo "error: the port must be a number, got '$port'" >&2
    exit 2
fi
pidfile="$RUN/dispatcher-$port.pid"
if pid_is_ours "$pidfile"; then
    echo "error: a dispatcher is already running on port $port (pid $(cat "$pidfile")); stop it with ./cleanup.sh" >&2
    exit 1
fi
echo $$ > "$pidfile"
exec "$PYTHON" -m dispatcher "${args[@]}"
