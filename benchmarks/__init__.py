"""Benchmarks (issue 5): this project against Huey, Celery, RQ and Dramatiq; prime kernels."""
