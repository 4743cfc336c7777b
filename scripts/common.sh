# Sourced by the project's shell scripts (not run directly): the virtualenv and the run dir.
# Callers have already done `set -euo pipefail` and `cd` to the repository root.

VENV="${VENV:-.venv}"
PYTHON="$VENV/bin/python"

# ensure_venv [dev]: create .venv with python3 >= 3.11 and install the pinned requirements
# whenever a requirements file is newer than the last install.
ensure_venv() {
    local req="requirements.txt" stamp="$VENV/.installed"
    if [ "${1:-}" = "dev" ]; then req="requirements-dev.txt"; stamp="$VENV/.installed-dev"; fi
    if [ ! -x "$PYTHON" ]; then
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { echo "error: Python 3.11 or newer is required (python3 is $(python3 -V 2>&1))" >&2; exit 1; }
        echo "creating virtualenv in $VENV" >&2
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ "$req" -nt "$stamp" ]; then
        echo "installing $req into $VENV" >&2
        "$PYTHON" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
        touch "$stamp" "$VENV/.installed"  # the dev set includes the runtime set
    fi
}

# ensure_debian_packages PKG...: install the Debian packages that are missing (apt-get, as
# root); otherwise say which are missing. The tests that need them fail with that name.
ensure_debian_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian packages: ${missing[*]}" >&2
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 \
                 && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
    else
        echo "warning: Debian packages missing (install them as root): ${missing[*]}" >&2
    fi
}

# run_dir: where PID files, worker caches and logs go (RUN_DIR from .env or the environment).
run_dir() {
    "$PYTHON" -c 'from shared.config import load_config; print(load_config().run_path)'
}

# pid_is_ours PIDFILE: true when the PID in the file is alive and still runs our module
# (the dispatcher, a worker, or a worker supervisor).
pid_is_ours() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -Eq -- '-m (dispatcher|worker|worker\.supervisor)( |$)'
}
