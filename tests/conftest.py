"""Fixtures shared by every test layer: configs on temp databases (SQLite and PostgreSQL),
an injectable clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from dispatcher.app import create_app
from dispatcher.models import Reclaim
from dispatcher.service import Dispatcher
from shared.cluster import LocalCluster
from shared.config import Config
from tests.support import postgres

BACKENDS = ("sqlite", "postgres")


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


def run_monitor(
    dispatcher: Dispatcher, clock: FakeClock, seconds: float,
    beat: Callable[[], object] | None = None,
) -> list[Reclaim]:
    """Let ``seconds`` pass as a running dispatcher lives them; every reclaim, in order.

    The fake clock moves one monitor interval at a time and the monitor sweeps after each
    step, as the real one does; ``beat`` (the workers' heartbeats) runs once a second. (Time
    that passes without sweeps is an outage of every dispatcher: see ``clock.advance``.)
    """
    reclaimed: list[Reclaim] = []
    step, elapsed, next_beat = dispatcher.monitor.interval, 0.0, 1.0
    while elapsed < seconds - 1e-9:
        delta = min(step, seconds - elapsed)
        clock.advance(delta)
        elapsed += delta
        if beat is not None and elapsed >= next_beat - 1e-9:
            beat()
            next_beat += 1.0
        reclaimed += dispatcher.monitor.sweep()
    return reclaimed


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """This run's own PostgreSQL database (skipped, or failed in CI, when unreachable)."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each backend in turn: a temp SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    url = request.getfixturevalue("postgres_database")
    postgres.empty(url)
    return url


@pytest.fixture
def config(database_url: str, tmp_path: Path) -> Config:
    """Defaults of the spec, on an empty database of each backend."""
    return Config(database_url=database_url, run_dir=str(tmp_path / "run"))


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


@pytest.fixture(params=BACKENDS)
def cluster_backend(request: pytest.FixtureRequest) -> str:
    """The store the clusters of an end-to-end test run on: each test runs on both."""
    return request.param


@pytest.fixture
def make_cluster(
    tmp_path: Path, cluster_backend: str, request: pytest.FixtureRequest
) -> Iterator[ClusterFactory]:
    """Start a real dispatcher with extra environment; every cluster made is closed afterwards.

    On PostgreSQL each cluster gets a database of its own (dropped after the test), unless the
    test names a ``DATABASE_URL`` itself.
    """
    made: list[LocalCluster] = []
    databases: list[str] = []

    def make(workdir: Path | None = None, **env: str) -> LocalCluster:
        if cluster_backend == "postgres" and "DATABASE_URL" not in env:
            databases.append(postgres.create_database())
            env["DATABASE_URL"] = databases[-1]
        cluster = LocalCluster(workdir or tmp_path / f"cluster{len(made)}", env)
        made.append(cluster)
        cluster.start_dispatcher()
        return cluster

    yield make
    for cluster in made:
        cluster.close()
    for url in databases:
        postgres.drop_database(url)
