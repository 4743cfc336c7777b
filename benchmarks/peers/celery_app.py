"""A Celery app on Redis (broker and result backend) with one no-op task, for ``celery worker``."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery


def build(redis_url: str) -> tuple[Celery, Any]:
    """A Celery app with default settings except the Redis broker and backend."""
    app = Celery("bench", broker=redis_url, backend=redis_url)

    @app.task(name="bench.noop")
    def noop() -> bool:
        return True

    return app, noop


# What the worker imports: celery -A benchmarks.peers.celery_app worker
app, noop = build(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))
