"""Configuration loading: defaults, precedence, derived URL, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Config, ConfigError, load_config


def test_defaults_match_the_spec(tmp_path: Path) -> None:
    config = load_config(env={}, dotenv_path=tmp_path / "missing.env")
    assert (config.heartbeat_interval, config.heartbeat_timeout, config.lease_duration) == (
        1.0, 2.0, 100.0)
    assert config.dispatcher_host == "127.0.0.1"
    assert config.dispatcher_url == "http://127.0.0.1:5000"


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("DISPATCHER_PORT=6000\nLEASE_DURATION=50\nDISPATCHER_URL=\n")
    config = load_config(env={"DISPATCHER_PORT": "7000"}, dotenv_path=dotenv)
    assert config.dispatcher_port == 7000 and config.lease_duration == 50
    assert config.dispatcher_url == "http://127.0.0.1:7000"


def test_repository_dotenv_documents_every_key() -> None:
    from shared.config import REPO_ROOT

    text = (REPO_ROOT / ".env").read_text()
    for name in Config.__dataclass_fields__:
        assert f"\n{name.upper()}=" in text, name
    assert load_config(env={}) == load_config(env={}, dotenv_path=REPO_ROOT / ".env")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DISPATCHER_PORT": "http"}, "DISPATCHER_PORT"),
        ({"DISPATCHER_PORT": "70000"}, "DISPATCHER_PORT"),
        ({"HEARTBEAT_TIMEOUT": "-1"}, "HEARTBEAT_TIMEOUT"),
        ({"HEARTBEAT_INTERVAL": "3", "HEARTBEAT_TIMEOUT": "2"}, "HEARTBEAT_TIMEOUT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"WORKER_PROCESSES": "0"}, "WORKER_PROCESSES"),
        ({"WORKER_PROCESSES": "many"}, "WORKER_PROCESSES"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(env=env, dotenv_path=tmp_path / "none")


def test_sqlite_path_resolves_relative_to_the_repo(tmp_path: Path) -> None:
    from shared.config import REPO_ROOT

    assert Config().sqlite_path == REPO_ROOT / "data" / "tasks.db"
    absolute = Config(database_url=f"sqlite:///{tmp_path}/x.db")
    assert absolute.sqlite_path == tmp_path / "x.db"
    assert Config(database_url="postgresql://localhost/test").sqlite_path is None


def test_dispatcher_url_takes_a_list(tmp_path: Path) -> None:
    config = load_config(env={"DISPATCHER_URL": "http://10.0.0.1:5000/, https://b.example/q"},
                         dotenv_path=tmp_path / "none")
    assert config.dispatcher_urls == ("http://10.0.0.1:5000", "https://b.example/q")
    assert config.dispatcher_url == "http://10.0.0.1:5000/, https://b.example/q"
    assert load_config(env={}, dotenv_path=tmp_path / "none").dispatcher_urls == (
        "http://127.0.0.1:5000",)


@pytest.mark.parametrize(
    ("raw", "entry"),
    [
        ("http://a:5000,ftp://b", "entry 2 ('ftp://b')"),
        ("http://a:5000,,http://b", "entry 2 ('') is empty"),
        ("http://a:99999", "entry 1 ('http://a:99999') has a bad port"),
        ("http://a,http://a/", "entry 2 ('http://a') is listed twice"),
        ("a:5000", "entry 1 ('a:5000')"),
    ],
)
def test_a_bad_dispatcher_url_entry_is_named(tmp_path: Path, raw: str, entry: str) -> None:
    with pytest.raises(ConfigError) as bad:
        load_config(env={"DISPATCHER_URL": raw}, dotenv_path=tmp_path / "none")
    assert str(bad.value).startswith("DISPATCHER_URL ") and entry in str(bad.value)


def test_result_ttl_defaults_to_a_week_and_zero_or_less_keeps_forever(tmp_path: Path) -> None:
    none = tmp_path / "none"
    assert load_config(env={}, dotenv_path=none).result_ttl == 604800
    assert load_config(env={"RESULT_TTL": "0"}, dotenv_path=none).result_ttl == 0
    assert load_config(env={"RESULT_TTL": "-1"}, dotenv_path=none).result_ttl == -1
    for bad in ("week", "nan", "inf"):
        with pytest.raises(ConfigError, match="RESULT_TTL"):
            load_config(env={"RESULT_TTL": bad}, dotenv_path=none)
