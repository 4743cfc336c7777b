"""Peer task queues (Huey, Celery, RQ, Dramatiq) set up for the same workloads as ours.

Each ``*_app`` module is what the peer's own worker CLI imports (the peers' CLIs want a
module-level app object, configured here from BENCH_* environment variables); ``adapters``
drives them from the harness.
"""
