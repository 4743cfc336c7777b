"""End-to-end fixtures: a real dispatcher process (and workers) per test, always stopped."""

from __future__ import annotations

import pytest

from shared.cluster import LocalCluster
from tests.conftest import ClusterFactory


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> LocalCluster:
    """A dispatcher with the spec's defaults and fast checkpoints."""
    return make_cluster(CHECKPOINT_INTERVAL="0.5")
