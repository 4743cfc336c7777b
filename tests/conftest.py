"""Fixtures shared by every test layer: configs on temp databases, an injectable clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dispatcher.app import create_app
from dispatcher.service import Dispatcher
from shared.cluster import LocalCluster
from shared.config import Config


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move time forward; return the new now."""
        self.now += seconds
        return self.now


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """Defaults of the spec, on a temp database."""
    return Config(database_url=f"sqlite:///{tmp_path / 'tasks.db'}", run_dir=str(tmp_path / "run"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(config: Config, clock: FakeClock) -> Iterator[Flask]:
    """The dispatcher app with an injected clock and no monitor thread (tests sweep by hand)."""
    application = create_app(config, clock=clock, start_monitor=False)
    yield application
    application.extensions["taskqueue"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def dispatcher(app: Flask) -> Dispatcher:
    return app.extensions["taskqueue"]


ClusterFactory = Callable[..., LocalCluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start a real dispatcher with extra environment; every cluster made is closed afterwards."""
    made: list[LocalCluster] = []

    def make(workdir: Path | None = None, **env: str) -> LocalCluster:
        cluster = LocalCluster(workdir or tmp_path / f"cluster{len(made)}", env)
        made.append(cluster)
        cluster.start_dispatcher()
        return cluster

    yield make
    for cluster in made:
        cluster.close()
