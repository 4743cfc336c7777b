"""A Dramatiq Redis broker with the Results middleware and one no-op actor, for ``dramatiq``.

Dramatiq binds actors to a process-wide broker at import time, so the broker is configured
from BENCH_REDIS_URL before the actor is declared.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")

broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def noop() -> bool:
    """Do nothing; return a value so that a result is stored."""
    return True
