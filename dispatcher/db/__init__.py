"""The store: the database behind the dispatcher, selected by ``DATABASE_URL``.

``store.py`` holds every queue operation, written once; ``sqlite.py`` (the embedded default)
and ``postgres.py`` (several dispatchers on one database) supply the connections, the SQL
dialect and the clock; ``schema.py`` the tables of both; ``moves.py`` the status changes.
"""

from __future__ import annotations

from dispatcher.db.errors import (
    IdempotencyConflict,
    NotFound,
    QuotaExceeded,
    StaleLease,
    StorageUnavailable,
    StoreError,
)
from dispatcher.db.store import Claimed, Clock, Store, Swept
from shared.config import Config, ConfigError

__all__ = ["Claimed", "IdempotencyConflict", "NotFound", "QuotaExceeded", "StaleLease",
           "StorageUnavailable", "Store", "StoreError", "Swept", "open_store"]


def open_store(config: Config, clock: Clock | None = None) -> Store:
    """Open (and migrate) the store that ``config.database_url`` names.

    ``clock`` replaces the store's clock (tests); by default SQLite uses this process's clock
    and PostgreSQL the database server's, so that every dispatcher sharing it agrees.
    """
    if config.sqlite_path is not None:
        from dispatcher.db.sqlite import SQLiteStore

        if clock is None:
            return SQLiteStore(config.sqlite_path, config.sqlite_busy_timeout_ms)
        return SQLiteStore(config.sqlite_path, config.sqlite_busy_timeout_ms, clock)
    if config.postgres_url is not None:
        from dispatcher.db.postgres import PostgresStore

        return PostgresStore(config.postgres_url, pool_size=config.database_pool_size,
                             clock=clock)
    raise ConfigError(f"DATABASE_URL {config.database_url!r}: use sqlite:/// or postgresql://")
