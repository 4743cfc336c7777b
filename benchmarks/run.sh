#!/usr/bin/env bash
# Benchmark this project against Huey, Celery, RQ, Dramatiq, Procrastinate and PgQueuer.
#   benchmarks/run.sh [--quick] [--repeats N] [--project-root DIR] [--only drain,roundtrip,...]
# Sets up .venv with requirements-dev.txt plus requirements-bench.txt (the peers' packages,
# never part of requirements.txt), installs Debian's primesieve CLI when missing and running
# as root, starts a local Redis when none answers, checks that PostgreSQL answers on
# 127.0.0.1:5432, then runs python -m benchmarks.compare.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/common.sh
ensure_venv dev

stamp="$VENV/.installed-bench"
if [ ! -f "$stamp" ] || [ requirements-bench.txt -nt "$stamp" ]; then
    echo "installing requirements-bench.txt into $VENV" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt >&2
    touch "$stamp"
fi

if ! command -v primesieve >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's primesieve CLI" >&2
        { apt-get update -qq && apt-get install -y -qq primesieve; } >&2 \
            || echo "warning: primesieve could not be installed; that comparison is skipped" >&2
    else
        echo "note: no primesieve CLI (apt-get install primesieve); that comparison is skipped" >&2
    fi
fi

if ! "$PYTHON" -c 'import redis, sys; redis.Redis(socket_connect_timeout=1).ping()' 2>/dev/null; then
    if command -v redis-server >/dev/null 2>&1; then
        echo "starting redis-server on 127.0.0.1:6379" >&2
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >&2
    else
        echo "note: no Redis on 127.0.0.1:6379; the Redis peers are skipped" >&2
    fi
fi

# The PostgreSQL systems (ours-pg, procrastinate, pgqueuer, pg-bare) skip themselves, with the
# reason, when the server does not answer; this says so up front.
pg_problem=$("$PYTHON" -c 'from benchmarks.pg import pg_reason; print(pg_reason() or "")' 2>&1) \
    || pg_problem="the PostgreSQL check failed: $pg_problem"
if [ -n "$pg_problem" ]; then
    echo "note: $pg_problem; the PostgreSQL systems are skipped" >&2
fi

exec "$PYTHON" -m benchmarks.compare "$@"
