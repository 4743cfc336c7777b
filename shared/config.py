"""System-wide configuration: `.env` loaded once, the environment wins, one frozen typed object.

No other module reads ``os.environ``; entry points call :func:`load_config` and pass the
result down. Every key is documented in ``.env`` and in the README's configuration table.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from shared.utils import split_urls

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
MAX_WORKER_PROCESSES = 1024
_MODULE_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range; the message names the key."""


@dataclass(frozen=True)
class Config:
    """Every tunable of the dispatcher, the workers and the clients."""

    dispatcher_host: str = "127.0.0.1"
    dispatcher_port: int = 5000
    dispatcher_url: str = "http://127.0.0.1:5000"
    database_url: str = "sqlite:///data/tasks.db"
    database_pool_size: int = 10
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 2.0
    lease_duration: float = 100.0
    checkpoint_interval: float = 2.0
    monitor_interval: float = 0.25
    max_attempts: int = 10
    default_max_retries: int = 3
    """Retries of a task whose function raised, unless its submission says (max_retries)."""
    default_retry_backoff: float = 1.0
    """Base of the retry backoff, seconds (doubling per retry, with jitter)."""
    crash_loop_limit: int = 3
    """Workers a task may kill in a row at the same checkpoint before it fails."""
    timeout_grace: float = 2.0
    """How long a worker lets a task run past its timeout before ending itself."""
    max_connections: int = 10_000
    max_request_bytes: int = 16 * 1024 * 1024
    max_params_bytes: int = 64 * 1024
    max_result_bytes: int = 1024 * 1024
    max_checkpoint_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    max_batch_size: int = 10_000
    max_wait_seconds: float = 30.0
    sqlite_busy_timeout_ms: int = 5_000
    poll_wait: float = 1.0
    backoff_max: float = 5.0
    prefetch_max: int = 128
    events_kept: int = 1000
    """How many of the newest timeline events (reclaims, dead workers...) the database keeps."""
    run_dir: str = "run"
    log_level: str = "INFO"
    log_format: str = "text"
    """``text`` (one line per record, as always) or ``json`` (one JSON object per line, with
    ``task_id``, ``worker_id`` and ``attempt`` fields on every line about a task)."""
    result_ttl: float = 7 * 24 * 3600.0
    """Seconds a finished task (result, checkpoint, idempotency key) is kept; <= 0: forever."""
    task_modules: str = ""
    """Comma-separated import paths of the operator's task modules (besides the built-ins)."""
    auth_required: str = "auto"
    """auto (on unless the dispatcher binds a loopback address), true or false."""
    dispatcher_token: str = field(default="", repr=False)
    """The bearer token clients and workers send (``tq_<id>_<secret>``); empty: none. Kept out
    of ``repr`` so a logged config never shows it."""
    token_cache_seconds: float = 5.0
    allowed_hosts: str = ""
    """Extra Host header names accepted (comma-separated; ``*`` accepts any)."""
    cors_origins: str = ""
    """Browser origins allowed to call the API cross-origin (comma-separated)."""
    body_budget_bytes: int = 16 * 1024 * 1024
    max_error_bytes: int = 10_000
    max_list_field_bytes: int = 1024
    rate_limit: str = "20000/minute"
    max_pending_per_client: int = 100_000
    worker_processes: str = "1"
    """Worker processes ``start_worker.sh`` runs under one supervisor: a count or ``auto``."""

    @property
    def auth_enabled(self) -> bool:
        """Whether requests must carry a bearer token (AUTH_REQUIRED, auto by bind address)."""
        if self.auth_required == "auto":
            return not is_loopback(self.dispatcher_host)
        return self.auth_required == "true"

    @property
    def allowed_host_names(self) -> frozenset[str]:
        """The Host names ALLOWED_HOSTS lists, lower-cased."""
        return frozenset(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def cors_origin_list(self) -> frozenset[str]:
        """The origins CORS_ORIGINS lists (scheme://host[:port], no trailing slash)."""
        return frozenset(o.strip().rstrip("/") for o in self.cors_origins.split(",")
                         if o.strip())

    @property
    def sqlite_path(self) -> Path | None:
        """Filesystem path of the SQLite database, or None for another backend."""
        prefix = "sqlite:///"
        if not self.database_url.startswith(prefix):
            return None
        return resolve_path(self.database_url[len(prefix):])

    @property
    def postgres_url(self) -> str | None:
        """The PostgreSQL connection URL, or None for another backend."""
        if self.database_url.startswith(("postgresql://", "postgres://")):
            return self.database_url
        return None

    @property
    def task_module_names(self) -> tuple[str, ...]:
        """The import paths listed in TASK_MODULES, in order."""
        return tuple(name.strip() for name in self.task_modules.split(",") if name.strip())

    @property
    def dispatcher_urls(self) -> tuple[str, ...]:
        """The dispatcher base URLs ``DISPATCHER_URL`` lists (comma-separated), in order."""
        return split_urls(self.dispatcher_url)

    @property
    def worker_process_count(self) -> int:
        """How many worker processes ``WORKER_PROCESSES`` asks for (``auto``: usable CPU cores)."""
        return resolve_process_count(self.worker_processes)

    @property
    def run_path(self) -> Path:
        """Directory for PID files, worker caches and logs."""
        return resolve_path(self.run_dir)

    def with_overrides(self, **changes: Any) -> "Config":
        """Return a copy with the given fields changed, validated like a loaded config."""
        new = replace(self, **{k: v for k, v in changes.items() if v is not None})
        _check(new)
        return new


def is_loopback(host: str) -> bool:
    """True for a loopback address or name (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def resolve_path(raw: str) -> Path:
    """Resolve a configured path: absolute as given, relative to the repository root."""
    path = Path(raw).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def resolve_process_count(raw: str, key: str = "WORKER_PROCESSES") -> int:
    """A worker process count: a number 1-1024, or ``auto`` for the CPU cores this process may use."""
    text = raw.strip().lower()
    if text == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKER_PROCESSES:
        raise ConfigError(f"{key} must be 1-{MAX_WORKER_PROCESSES} or auto, got {raw!r}")
    return int(text)


def _positive(value: float) -> bool:
    return value > 0


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "dispatcher_port": (lambda v: 1 <= v <= 65535, "must be a port number 1-65535"),
    "heartbeat_interval": (_positive, "must be > 0"),
    "heartbeat_timeout": (_positive, "must be > 0"),
    "lease_duration": (_positive, "must be > 0"),
    "checkpoint_interval": (_positive, "must be > 0"),
    "monitor_interval": (_positive, "must be > 0"),
    "result_ttl": (lambda v: v == v and abs(v) != float("inf"), "must be a finite number"),
    "default_max_retries": (lambda v: 0 <= v <= 1000, "must be 0-1000"),
    "default_retry_backoff": (lambda v: 0 <= v <= 3600, "must be 0-3600"),
    "crash_loop_limit": (lambda v: 2 <= v <= 1000, "must be 2-1000"),
    "timeout_grace": (lambda v: 0 < v <= 3600, "must be > 0 and <= 3600"),
    "max_attempts": (lambda v: 1 <= v <= 100, "must be 1-100"),
    "auth_required": (lambda v: v in ("auto", "true", "false"), "must be auto, true or false"),
    "token_cache_seconds": (lambda v: 0 <= v <= 60, "must be 0-60"),
    "body_budget_bytes": (lambda v: v >= 1024, "must be >= 1024"),
    "max_error_bytes": (lambda v: 64 <= v <= 1_000_000, "must be 64-1000000"),
    "max_list_field_bytes": (lambda v: 64 <= v <= 1_000_000, "must be 64-1000000"),
    "max_pending_per_client": (lambda v: v >= 1, "must be >= 1"),
    "rate_limit": (lambda v: _rate_ok(v), "must be like 20000/minute (limits notation)"),
    "dispatcher_token": (lambda v: v == "" or _TOKEN_TEXT.fullmatch(v) is not None,
                         "must be a token printed by python -m dispatcher.tokens create"),
    "database_pool_size": (lambda v: 1 <= v <= 1000, "must be 1-1000"),
    "max_connections": (lambda v: 10 <= v <= 1_000_000, "must be 10-1000000"),
    "max_request_bytes": (lambda v: v >= 1024, "must be >= 1024"),
    "max_params_bytes": (lambda v: v >= 64, "must be >= 64"),
    "max_result_bytes": (lambda v: v >= 64, "must be >= 64"),
    "max_checkpoint_bytes": (lambda v: v >= 64, "must be >= 64"),
    "max_json_depth": (lambda v: 4 <= v <= 256, "must be 4-256"),
    "max_batch_size": (lambda v: 1 <= v <= 100_000, "must be 1-100000"),
    "max_wait_seconds": (lambda v: 0 <= v <= 3600, "must be 0-3600"),
    "sqlite_busy_timeout_ms": (lambda v: v >= 0, "must be >= 0"),
    "poll_wait": (lambda v: 0 <= v <= 30, "must be 0-30"),
    "backoff_max": (_positive, "must be > 0"),
    "prefetch_max": (lambda v: 1 <= v <= 1000, "must be 1-1000"),
    "events_kept": (lambda v: 10 <= v <= 1_000_000, "must be 10-1000000"),
    "log_level": (lambda v: v in LOG_LEVELS, "must be one of " + ", ".join(LOG_LEVELS)),
    "log_format": (lambda v: v in LOG_FORMATS, "must be one of " + ", ".join(LOG_FORMATS)),
    "database_url": (
        lambda v: v.startswith(("sqlite:///", "postgresql://", "postgres://")),
        "must start with sqlite:/// or postgresql://",
    ),
    "worker_processes": (
        lambda v: v.lower() == "auto" or (v.isdigit() and 1 <= int(v) <= MAX_WORKER_PROCESSES),
        f"must be 1-{MAX_WORKER_PROCESSES} or auto",
    ),
    "task_modules": (
        lambda v: all(_MODULE_PATH.fullmatch(n.strip()) for n in v.split(",") if n.strip()),
        "must be comma-separated Python import paths (e.g. examples.wordcount)",
    ),
}


_TOKEN_TEXT = re.compile(r"[A-Za-z0-9_\-]{1,200}")


def _rate_ok(text: str) -> bool:
    from limits import parse_many

    try:
        return bool(parse_many(text))
    except ValueError:
        return False


def _check(config: Config) -> None:
    for name, (ok, problem) in _RULES.items():
        value = getattr(config, name)
        if not ok(value):
            raise ConfigError(f"{name.upper()} {problem}, got {value!r}")
    check_dispatcher_urls(config.dispatcher_url)
    for name in ("max_params_bytes", "max_result_bytes", "max_checkpoint_bytes"):
        # One item must fit in a request with room to spare, or a worker could never deliver it.
        if getattr(config, name) * 2 > config.max_request_bytes:
            raise ConfigError(
                f"{name.upper()} ({getattr(config, name)}) must be at most half of "
                f"MAX_REQUEST_BYTES ({config.max_request_bytes})"
            )
    if config.heartbeat_timeout <= config.heartbeat_interval:
        raise ConfigError(
            f"HEARTBEAT_TIMEOUT ({config.heartbeat_timeout}) must be greater than "
            f"HEARTBEAT_INTERVAL ({config.heartbeat_interval})"
        )


def check_dispatcher_urls(raw: str, key: str = "DISPATCHER_URL") -> tuple[str, ...]:
    """The URLs of a dispatcher list (``DISPATCHER_URL``, ``--url``); errors name the bad entry."""
    try:
        return split_urls(raw)
    except ValueError as exc:
        raise ConfigError(f"{key} must be a comma-separated list of http(s) URLs: {exc}") from None


def _convert(name: str, raw: str, kind: type) -> Any:
    text = raw.strip()
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    if name == "LOG_FORMAT":
        return text.lower()
    if name == "AUTH_REQUIRED":
        return {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false",
                "off": "false"}.get(text.lower(), text.lower())
    return text.upper() if name == "LOG_LEVEL" else text


def load_config(
    env: Mapping[str, str] | None = None, dotenv_path: Path | None = None
) -> Config:
    """Load `.env` (if present) overlaid by ``env`` (default: the process environment).

    A key set in the environment wins over the file. ``DISPATCHER_URL`` defaults to the
    host and port when neither source sets it.
    """
    path = dotenv_path if dotenv_path is not None else REPO_ROOT / ".env"
    merged: dict[str, str] = {}
    if path.is_file():
        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ if env is None else env)
    values: dict[str, Any] = {}
    for spec in fields(Config):
        key = spec.name.upper()
        if key in merged and merged[key].strip() != "":
            values[spec.name] = _convert(key, merged[key], type(spec.default))
    if "dispatcher_url" not in values:
        host = values.get("dispatcher_host", Config.dispatcher_host)
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        port = values.get("dispatcher_port", Config.dispatcher_port)
        values["dispatcher_url"] = f"http://{host}:{port}"
    config = Config(**values)
    _check(config)
    return config
