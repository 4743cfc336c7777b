"""Huey apps: SqliteHuey or RedisHuey with one no-op task, for ``huey_consumer``."""

from __future__ import annotations

import os
from typing import Any

from huey import RedisHuey, SqliteHuey
from huey.api import Huey


def build(kind: str, sqlite_path: str, redis_url: str) -> tuple[Huey, Any]:
    """A Huey instance with the library's default settings and its ``noop`` task."""
    if kind == "sqlite":
        huey: Huey = SqliteHuey("bench", filename=sqlite_path)
    else:
        huey = RedisHuey("bench", url=redis_url)

    @huey.task(name="noop")
    def noop() -> bool:
        return True

    return huey, noop


# What the consumer imports: huey_consumer benchmarks.peers.huey_app.huey. Without the
# environment (an import by the harness) it is a RedisHuey, which creates no file.
huey, noop = build(os.environ.get("BENCH_HUEY_KIND", "redis"),
                   os.environ.get("BENCH_HUEY_SQLITE", ""),
                   os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
