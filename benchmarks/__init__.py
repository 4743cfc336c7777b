"""Benchmarks: this project against task-queue peers (Redis and PostgreSQL ones); prime kernels."""
