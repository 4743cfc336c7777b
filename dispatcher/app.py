"""The dispatcher's app factory and its server (gevent's WSGI server; see ``__main__.py``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from flask import Flask

from dispatcher.auth import TokenCache
from dispatcher.dashboard import dashboard
from dispatcher.db import StoreError, open_store
from dispatcher.guard import Guard
from dispatcher.routes import api, register_error_handlers, register_request_metrics
from dispatcher.runtime import on_gevent
from dispatcher.server import make_server
from dispatcher.service import Dispatcher
from shared.config import Config, ConfigError, is_loopback, load_config
from shared.utils import configure_logging
from tasks.registry import Registry, TaskModuleError, load_registry

log = logging.getLogger(__name__)


def create_app(
    config: Config | None = None,
    *,
    clock: Callable[[], float] | None = None,
    start_monitor: bool = True,
    registry: Registry | None = None,
) -> Flask:
    """Build the dispatcher app; the heartbeat monitor starts unless told not to.

    ``clock`` replaces the store's clock (tests inject a fake one). Without a ``registry``
    the task types are loaded from the config's TASK_MODULES.
    """
    config = config or load_config()
    registry = registry if registry is not None else load_registry(config.task_module_names)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    dispatcher = Dispatcher(open_store(config, clock), config, registry)
    app.extensions["taskqueue"] = dispatcher
    guard = Guard(config, TokenCache(dispatcher.store.token, config.token_cache_seconds))
    app.extensions["taskqueue_guard"] = guard
    register_request_metrics(app)  # first: refusals by the guard (401, 403, 415...) count too
    guard.install(app)
    app.register_blueprint(api)
    app.register_blueprint(dashboard)
    register_error_handlers(app)
    if start_monitor:
        dispatcher.start_monitor()
    return app


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dispatcher",
                                     description="Run the task queue dispatcher.")
    parser.add_argument("--host", help="bind address (default DISPATCHER_HOST)")
    parser.add_argument("--port", type=int, help="port (default DISPATCHER_PORT)")
    parser.add_argument("--log-level", help="LOG_LEVEL override")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve the dispatcher until SIGTERM/SIGINT; run it as ``python -m dispatcher``.

    Every connection is a greenlet (gevent), so a waiting long poll costs a socket, not a
    thread, and hundreds of idle workers do not starve anyone; the entry point patches the
    standard library before anything else is imported, which this function checks.
    """
    if not on_gevent():
        print("error: start the dispatcher with `python -m dispatcher` (it runs on gevent)",
              file=sys.stderr)
        return 2
    import gevent

    args = _parse_args(argv)
    try:
        config = load_config().with_overrides(
            dispatcher_host=args.host, dispatcher_port=args.port,
            log_level=args.log_level.upper() if args.log_level else None,
        )
        configure_logging(config.log_level, log_format=config.log_format)
        check_exposure(config)
        registry = load_registry(config.task_module_names)
        app = create_app(config, registry=registry)
    except (ConfigError, StoreError, TaskModuleError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    server = make_server(app, config.dispatcher_host, config.dispatcher_port,
                         config.max_connections)

    def stop() -> None:
        app.extensions["taskqueue"].stop_waiting()  # idle workers' long polls end now
        server.stop(1.0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, lambda: gevent.spawn(stop))
    log.info("dispatcher listening on http://%s:%s (database %s, credentials %s); "
             "task types: %s", config.dispatcher_host, config.dispatcher_port,
             _redacted(config.database_url),
             "required" if config.auth_enabled else "off", ", ".join(registry.names))
    if config.auth_enabled and not app.extensions["taskqueue"].store.tokens():
        log.warning("credentials are required but no token exists yet: create one with "
                    "python -m dispatcher.tokens create --role admin")
    try:
        server.serve_forever()
    finally:
        log.info("dispatcher stopping")
        app.extensions["taskqueue"].close()
    return 0


def check_exposure(config: Config) -> None:
    """Refuse to serve a non-loopback address without credentials (ConfigError, one line)."""
    if config.auth_enabled or is_loopback(config.dispatcher_host):
        return
    raise ConfigError(
        f"DISPATCHER_HOST={config.dispatcher_host} is reachable from other hosts but "
        "AUTH_REQUIRED=false: refusing to serve without credentials (create tokens with "
        "python -m dispatcher.tokens and set AUTH_REQUIRED=true or auto)")


def _redacted(url: str) -> str:
    """The database URL without a password, for the log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
