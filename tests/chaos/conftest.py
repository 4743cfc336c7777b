"""Chaos fixtures: a seeded RNG (make_cluster comes from tests/conftest.py)."""

from __future__ import annotations

import os
import random

import pytest


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A random source seeded per test (CHAOS_SEED in the environment overrides), printed on failure."""
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1_000_000)))
    request.node.user_properties.append(("chaos_seed", seed))
    print(f"chaos seed {seed} (rerun with CHAOS_SEED={seed})")
    return random.Random(seed)


@pytest.fixture
def cluster_backend() -> str:
    """Chaos scenarios run on SQLite; PostgreSQL has its own chaos test (several dispatchers)."""
    return "sqlite"
