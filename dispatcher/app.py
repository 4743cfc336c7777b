"""The dispatcher's app factory and its production entry point (waitress)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from flask import Flask

from dispatcher.db import SQLiteStore
from dispatcher.routes import api, register_error_handlers
from dispatcher.service import Dispatcher
from shared.config import Config, ConfigError, load_config
from shared.utils import configure_logging
from tasks.registry import Registry, TaskModuleError, load_registry

log = logging.getLogger(__name__)


def open_store(config: Config) -> SQLiteStore:
    """The store selected by DATABASE_URL."""
    path = config.sqlite_path
    if path is None:
        raise ConfigError(f"DATABASE_URL {config.database_url!r}: only sqlite:/// is supported")
    return SQLiteStore(path, config.sqlite_busy_timeout_ms)


def create_app(
    config: Config | None = None,
    *,
    clock: Callable[[], float] = time.time,
    start_monitor: bool = True,
    registry: Registry | None = None,
) -> Flask:
    """Build the dispatcher app; the heartbeat monitor starts unless told not to.

    Without a ``registry`` the task types are loaded from the config's TASK_MODULES.
    """
    config = config or load_config()
    registry = registry if registry is not None else load_registry(config.task_module_names)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    dispatcher = Dispatcher(open_store(config), config, clock, registry)
    app.extensions["taskqueue"] = dispatcher
    app.register_blueprint(api)
    register_error_handlers(app)
    if start_monitor:
        dispatcher.start_monitor()
    return app


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the task queue dispatcher.")
    parser.add_argument("--host", help="bind address (default DISPATCHER_HOST)")
    parser.add_argument("--port", type=int, help="port (default DISPATCHER_PORT)")
    parser.add_argument("--threads", type=int, help="request threads (default DISPATCHER_THREADS)")
    parser.add_argument("--log-level", help="LOG_LEVEL override")
    return parser.parse_args(argv)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Serve the dispatcher with waitress until SIGTERM/SIGINT."""
    from waitress import create_server

    args = _parse_args(argv)
    try:
        config = load_config().with_overrides(
            dispatcher_host=args.host, dispatcher_port=args.port,
            dispatcher_threads=args.threads,
            log_level=args.log_level.upper() if args.log_level else None,
        )
        registry = load_registry(config.task_module_names)
    except (ConfigError, TaskModuleError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    app = create_app(config, registry=registry)
    server = create_server(
        app, host=config.dispatcher_host, port=config.dispatcher_port,
        threads=config.dispatcher_threads,
        # Above Flask's limit, so a slightly larger body still gets Flask's JSON 413.
        max_request_body_size=config.max_request_bytes + (1 << 20),
        ident="taskqueue", connection_limit=max(100, config.dispatcher_threads * 4),
    )
    # waitress's loop has no stop flag to poll; turning the signal into SystemExit unwinds it.
    signal.signal(signal.SIGTERM, _raise_exit)
    log.info("dispatcher listening on http://%s:%s (database %s, %s threads); task types: %s",
             config.dispatcher_host, config.dispatcher_port, config.database_url,
             config.dispatcher_threads, ", ".join(registry.names))
    try:
        server.run()  # returns once SIGTERM/SIGINT unwinds the loop (waitress catches it)
    finally:
        log.info("dispatcher stopping")
        server.close()
        app.extensions["taskqueue"].close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
