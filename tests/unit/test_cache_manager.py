"""The worker's durable result cache: put, pending, ack, and surviving a crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import REPO_ROOT
from worker.cache_manager import PendingResult, ResultCache


@pytest.fixture
def cache_path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "worker-1.sqlite3"


@pytest.fixture
def cache(cache_path: Path):
    with ResultCache(cache_path) as opened:
        yield opened


def test_put_pending_ack_round_trip(cache: ResultCache) -> None:
    cache.put(7, 1, {"result": {"prime_count": 4}})
    cache.put(8, 2, {"error": "ValueError: boom"})
    assert cache.pending() == [
        PendingResult(7, 1, {"result": {"prime_count": 4}}),
        PendingResult(8, 2, {"error": "ValueError: boom"}),
    ]
    cache.ack(7, 1)
    assert cache.pending() == [PendingResult(8, 2, {"error": "ValueError: boom"})]
    assert len(cache) == 1


def test_duplicate_put_is_idempotent_and_keeps_first(cache: ResultCache) -> None:
    cache.put(7, 1, {"result": {"n": 1}})
    cache.put(7, 1, {"result": {"n": 1}})
    cache.put(7, 1, {"result": {"n": 2}})
    assert cache.pending() == [PendingResult(7, 1, {"result": {"n": 1}})]


def test_same_task_different_attempts_are_distinct(cache: ResultCache) -> None:
    cache.put(7, 1, {"result": {}})
    cache.put(7, 2, {"result": {}})
    cache.ack(7, 1)
    assert [(p.task_id, p.attempt) for p in cache.pending()] == [(7, 2)]


def test_ack_of_unknown_key_is_a_no_op(cache: ResultCache) -> None:
    cache.ack(99, 1)
    assert cache.pending() == []


def test_non_json_payload_is_refused_and_not_stored(cache: ResultCache) -> None:
    with pytest.raises(ValueError):
        cache.put(1, 1, {"result": {"x": float("nan")}})
    assert cache.pending() == []


def test_survives_close_and_reopen(cache_path: Path) -> None:
    with ResultCache(cache_path) as first:
        first.put(3, 1, {"result": {"ok": True}})
    with ResultCache(cache_path) as second:
        assert second.pending() == [PendingResult(3, 1, {"result": {"ok": True}})]


def test_survives_a_process_that_dies_without_closing(cache_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from worker.cache_manager import ResultCache\n"
        "cache = ResultCache(Path(sys.argv[1]))\n"
        "cache.put(5, 3, {'result': {'primes': [2, 3]}})\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(cache_path)], cwd=REPO_ROOT, check=True,
                   timeout=30)
    with ResultCache(cache_path) as reopened:
        assert reopened.pending() == [PendingResult(5, 3, {"result": {"primes": [2, 3]}})]
