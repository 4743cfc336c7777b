"""Peer task queues (Huey, Celery, RQ, Dramatiq, Procrastinate, PgQueuer) and a bare PostgreSQL
loop, set up for the same workloads as ours.

Each ``*_app`` module is what the peer's own worker CLI imports (the peers' CLIs want a
module-level app object, configured here from BENCH_* environment variables); ``adapters``
(Redis and SQLite peers) and ``pg_adapters`` (PostgreSQL peers) drive them from the harness.
"""
