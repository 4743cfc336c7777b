"""The built-in task types: lookup, validation of submissions, a light import for the dispatcher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks import Registry, load_registry
from tasks.base import InvalidParams, noop_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]

SMALL_PARAMS = {
    "primes": {"limit": 1000},
    "noop": {"n": 1},
    "sleep": {"seconds": 0.01},
    "cpu_burn": {"seconds": 0.01},
    "monte_carlo_pi": {"samples": 1000},
    "sum_of_squares": {"start": 1, "end": 10},
    "collatz_longest": {"limit": 100},
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def test_registry_holds_every_task_type_under_its_own_name(registry: Registry) -> None:
    assert registry.names == tuple(sorted(SMALL_PARAMS))
    assert all(registry.get(name).name == name for name in registry.names)
    assert all(task.description and task.module.startswith("tasks.") for task in registry)


def test_unknown_task_type_lists_the_known_ones(registry: Registry) -> None:
    assert "factorise" not in registry
    with pytest.raises(InvalidParams) as caught:
        registry.get("factorise")
    assert caught.value.field == "task_type"
    assert "'factorise'" in caught.value.message and "primes" in caught.value.message


@pytest.mark.parametrize("task_type", [None, 7, ["primes"], {"name": "primes"}])
def test_task_type_must_be_a_string(registry: Registry, task_type: Any) -> None:
    with pytest.raises(InvalidParams) as caught:
        registry.validate_task(task_type, {"limit": 10})
    assert caught.value.field == "task_type"


def test_validate_task_fills_defaults(registry: Registry) -> None:
    assert registry.validate_task("primes", {"limit": 10}) == {"algorithm": "sieve", "limit": 10}
    assert registry.validate_task("primes", {"limit": 10, "start": 3}) == {
        "algorithm": "sieve", "limit": 10, "start": 3}
    assert registry.validate_task("monte_carlo_pi", {"samples": 5}) == {"samples": 5, "seed": 0}
    assert registry.validate_task("sleep", {"seconds": 2}) == {"seconds": 2.0}


@pytest.mark.parametrize("name", sorted(SMALL_PARAMS))
def test_normalised_params_validate_again_unchanged(registry: Registry, name: str) -> None:
    normalised = registry.validate_task(name, SMALL_PARAMS[name])
    assert registry.validate_task(name, json.loads(json.dumps(normalised))) == normalised


@pytest.mark.parametrize(
    ("task_type", "params", "field"),
    [
        ("primes", None, "params.limit"),
        ("primes", [1000], "params"),
        ("primes", "limit=5", "params"),
        ("primes", {"limit": 5, "extra": 1}, "params.extra"),
        ("sum_of_squares", {"start": 1, "end": 0}, "params.end"),
    ],
)
def test_invalid_params_name_the_field(
    registry: Registry, task_type: str, params: Any, field: str
) -> None:
    with pytest.raises(InvalidParams) as caught:
        registry.validate_task(task_type, params)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_noop_accepts_missing_params(registry: Registry) -> None:
    assert registry.validate_task("noop", None) == {}


@pytest.mark.parametrize("name", sorted(SMALL_PARAMS))
def test_every_task_runs_to_a_json_result(registry: Registry, name: str) -> None:
    task = registry.get(name)
    result = task.run(task.validate(SMALL_PARAMS[name]), None, noop_checkpoint)
    assert json.loads(json.dumps(result)) == result


def test_importing_the_registry_does_not_load_numpy() -> None:
    code = "import sys, tasks; print('numpy' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "False"
