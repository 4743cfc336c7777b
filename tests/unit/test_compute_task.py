"""The compute tasks: results, resume from any checkpoint, interruption and validation."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import compute_math, compute_task
from tasks.base import InvalidParams, TaskInterrupted, TaskType, noop_checkpoint
from tasks.compute_task import (
    collatz_longest,
    cpu_burn,
    monte_carlo_pi,
    noop,
    sleep,
    sum_of_squares,
)


def run(
    task: TaskType,
    params: dict[str, Any],
    resume: dict[str, Any] | None = None,
    checkpoint: Any = noop_checkpoint,
) -> dict[str, Any]:
    """Validate and run a task."""
    return task.run(task.validate(params), resume, checkpoint)


def without_elapsed(result: dict[str, Any]) -> dict[str, Any]:
    """A result minus the only field allowed to differ between runs."""
    return {key: value for key, value in result.items() if key != "elapsed_seconds"}


class Recorder:
    """A checkpoint callback that keeps each state as JSON text; may interrupt at call n."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.texts: list[str] = []
        self.progress: list[float] = []
        self.interrupt_at = interrupt_at

    def __call__(self, state: dict[str, Any], progress: float) -> None:
        self.texts.append(json.dumps(state))
        self.progress.append(progress)
        if self.interrupt_at is not None and len(self.texts) >= self.interrupt_at:
            raise TaskInterrupted


def assert_resumes_identically(task: TaskType, params: dict[str, Any]) -> Recorder:
    """Run once recording states; resuming from several of them gives the same result."""
    recorder = Recorder()
    expected = without_elapsed(run(task, params, checkpoint=recorder))
    assert len(recorder.texts) >= 3
    assert recorder.progress == sorted(recorder.progress) and recorder.progress[-1] == 1.0
    for index in (0, 1, len(recorder.texts) // 2, len(recorder.texts) - 1):
        resumed = run(task, params, resume=json.loads(recorder.texts[index]))
        assert without_elapsed(resumed) == expected
    return recorder


def squares_closed_form(start: int, end: int) -> int:
    """Sum of i*i over [start, end] from n(n+1)(2n+1)/6, valid for negative n too."""

    def cumulative(n: int) -> int:
        return n * (n + 1) * (2 * n + 1) // 6

    return cumulative(end) - cumulative(start - 1)


def collatz_reference(limit: int) -> tuple[int, int]:
    """(number, steps) of the longest chain below limit, by plain iteration."""
    best = (1, 0)
    for start in range(2, limit):
        n, steps = start, 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        if steps > best[1]:
            best = (start, steps)
    return best


class FakeSleep:
    """Stands in for time.sleep: records the requested durations."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def fake_sleep(monkeypatch: pytest.MonkeyPatch) -> FakeSleep:
    sleeper = FakeSleep()
    monkeypatch.setattr(compute_task.time, "sleep", sleeper)
    return sleeper


def test_noop_echoes_any_json_object() -> None:
    params = {"a": [1, {"b": None}], "c": "x", "d": 1.5}
    assert run(noop, params) == {"echo": params}
    assert run(noop, {}) == {"echo": {}}


def test_noop_refuses_a_non_object() -> None:
    with pytest.raises(InvalidParams) as caught:
        noop.validate([1, 2])
    assert caught.value.field == "params"


def test_sleep_sleeps_in_short_steps_and_checkpoints_each(fake_sleep: FakeSleep) -> None:
    recorder = Recorder()
    assert without_elapsed(run(sleep, {"seconds": 0.35}, checkpoint=recorder)) == {
        "slept_seconds": 0.35, "resumed_from_seconds": 0.0
    }
    assert all(0 < step <= 0.1 for step in fake_sleep.calls)
    assert math.isclose(sum(fake_sleep.calls), 0.35)
    assert [json.loads(text)["slept"] for text in recorder.texts][-1] == 0.35
    assert len(recorder.texts) == len(fake_sleep.calls) == 4


def test_sleep_resumes_where_it_stopped(fake_sleep: FakeSleep) -> None:
    result = run(sleep, {"seconds": 1}, resume={"slept": 0.7, "elapsed_seconds": 0.8})
    assert math.isclose(sum(fake_sleep.calls), 0.3)
    assert result["resumed_from_seconds"] == 0.7


def test_sleep_zero_seconds(fake_sleep: FakeSleep) -> None:
    assert run(sleep, {"seconds": 0})["slept_seconds"] == 0
    assert fake_sleep.calls == []


def test_sleep_really_sleeps() -> None:
    result = run(sleep, {"seconds": 0.05})
    assert result["elapsed_seconds"] >= 0.05


def test_sleep_can_be_interrupted(fake_sleep: FakeSleep) -> None:
    with pytest.raises(TaskInterrupted):
        run(sleep, {"seconds": 600}, checkpoint=Recorder(interrupt_at=2))
    assert len(fake_sleep.calls) == 2


def test_monte_carlo_pi_is_close_and_deterministic() -> None:
    params = {"samples": 2_500_000, "seed": 3}
    first, second = run(monte_carlo_pi, params), run(monte_carlo_pi, params)
    assert without_elapsed(first) == without_elapsed(second)
    assert abs(first["pi_estimate"] - math.pi) < 0.01
    assert first["pi_estimate"] == 4 * first["inside"] / 2_500_000
    assert run(monte_carlo_pi, params | {"seed": 4})["inside"] != first["inside"]


def test_monte_carlo_pi_resumes_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compute_task, "MONTE_CARLO_CHUNK", 1000)
    assert_resumes_identically(monte_carlo_pi, {"samples": 9_500, "seed": 11})


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (1, 1),
        (0, 0),
        (1, 10**6),
        (-10, 10),
        (-(10**12), -(10**12) + 5),
        (-3_000_000, -1),
        (10**12 - 3_000_000, 10**12),
    ],
)
def test_sum_of_squares_matches_closed_form(start: int, end: int) -> None:
    result = run(sum_of_squares, {"start": start, "end": end})
    assert result["sum"] == squares_closed_form(start, end)
    assert (result["start"], result["end"]) == (start, end)


@settings(max_examples=50, deadline=None)
@given(first=st.integers(-(10**12), 10**12), length=st.integers(1, 3000))
def test_sum_of_squares_kernel_is_exact(first: int, length: int) -> None:
    last = min(first + length - 1, 10**12)
    assert compute_math.sum_of_squares(first, last) == squares_closed_form(first, last)


@pytest.mark.parametrize("first", [10**12 - compute_task.SQUARES_CHUNK + 1, -(10**12)])
def test_sum_of_squares_full_chunk_at_the_extremes(first: int) -> None:
    last = first + compute_task.SQUARES_CHUNK - 1
    assert compute_math.sum_of_squares(first, last) == squares_closed_form(first, last)


def test_sum_of_squares_resumes_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compute_task, "SQUARES_CHUNK", 100)
    assert_resumes_identically(sum_of_squares, {"start": -250, "end": 777})


def test_collatz_below_a_million() -> None:
    assert without_elapsed(run(collatz_longest, {"limit": 10**6})) == {
        "limit": 10**6,
        "number": 837799,
        "steps": 524,
    }


@settings(max_examples=30, deadline=None)
@given(limit=st.integers(2, 3000), table_len=st.integers(2, 500), block_len=st.integers(1, 300))
def test_collatz_matches_reference(limit: int, table_len: int, block_len: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compute_task, "COLLATZ_TABLE_LEN", table_len)
        patch.setattr(compute_task, "COLLATZ_BLOCK_LEN", block_len)
        result = run(collatz_longest, {"limit": limit})
    assert (result["number"], result["steps"]) == collatz_reference(limit)


def test_collatz_resumes_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compute_task, "COLLATZ_TABLE_LEN", 64)
    monkeypatch.setattr(compute_task, "COLLATZ_BLOCK_LEN", 50)
    assert_resumes_identically(collatz_longest, {"limit": 2000})


@pytest.mark.parametrize(
    ("task", "params", "interrupt_at"),
    [
        (monte_carlo_pi, {"samples": 5_000_000}, 2),
        (sum_of_squares, {"start": 0, "end": 10**8}, 2),
        (collatz_longest, {"limit": 10**8}, 1),
    ],
)
def test_interrupting_checkpoint_stops_the_task(
    task: TaskType, params: dict[str, Any], interrupt_at: int
) -> None:
    recorder = Recorder(interrupt_at=interrupt_at)
    with pytest.raises(TaskInterrupted):
        run(task, params, checkpoint=recorder)
    assert len(recorder.texts) == interrupt_at


@pytest.mark.parametrize(
    ("task", "params"),
    [
        (sleep, {"seconds": 1}),
        (monte_carlo_pi, {"samples": 2_500_000, "seed": 1}),
        (sum_of_squares, {"start": -5, "end": 3_000_000}),
        (collatz_longest, {"limit": 1_100_000}),
    ],
)
def test_checkpoint_states_are_plain_json(
    task: TaskType, params: dict[str, Any], fake_sleep: FakeSleep
) -> None:
    recorder = Recorder()
    run(task, params, checkpoint=recorder)
    for text in recorder.texts:
        assert {type(v) for v in json.loads(text).values()} <= {int, float}


def test_elapsed_accumulates_across_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compute_task, "SQUARES_CHUNK", 10)
    state = {"next": 50, "sum": squares_closed_form(0, 49), "elapsed_seconds": 100.0}
    result = run(sum_of_squares, {"start": 0, "end": 99}, resume=state)
    assert result["elapsed_seconds"] >= 100.0 and result["sum"] == squares_closed_form(0, 99)


@pytest.mark.parametrize(
    ("task", "params", "field"),
    [
        (sleep, {"seconds": "1"}, "params.seconds"),
        (sleep, {"seconds": True}, "params.seconds"),
        (sleep, {"seconds": -0.1}, "params.seconds"),
        (sleep, {"seconds": 600.5}, "params.seconds"),
        (cpu_burn, {"seconds": 601}, "params.seconds"),
        (sleep, {"seconds": float("nan")}, "params.seconds"),
        (sleep, {}, "params.seconds"),
        (sleep, {"seconds": 1, "extra": 1}, "params.extra"),
        (monte_carlo_pi, {"samples": 0}, "params.samples"),
        (monte_carlo_pi, {"samples": 10**10 + 1}, "params.samples"),
        (monte_carlo_pi, {"samples": 1000.0}, "params.samples"),
        (monte_carlo_pi, {"samples": 10, "seed": -1}, "params.seed"),
        (monte_carlo_pi, {"samples": 10, "seed": False}, "params.seed"),
        (sum_of_squares, {"start": 5, "end": 4}, "params.end"),
        (sum_of_squares, {"start": 0, "end": 10**10}, "params.end"),
        (sum_of_squares, {"start": -(10**12) - 1, "end": 0}, "params.start"),
        (sum_of_squares, {"start": 0, "end": 10**12 + 1}, "params.end"),
        (sum_of_squares, {"start": "0", "end": 1}, "params.start"),
        (sum_of_squares, {"start": 0}, "params.end"),
        (collatz_longest, {"limit": 1}, "params.limit"),
        (collatz_longest, {"limit": 10**8 + 1}, "params.limit"),
        (collatz_longest, {"limit": 10, "x": 1}, "params.x"),
    ],
)
def test_invalid_params_name_the_field(task: TaskType, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParams) as caught:
        task.validate(params)
    assert caught.value.field == field


def test_sleep_accepts_an_integer() -> None:
    assert sleep.validate({"seconds": 2}).model_dump() == {"seconds": 2.0}


def test_cpu_burn_works_in_pure_python_and_resumes() -> None:
    recorder = Recorder()
    result = run(cpu_burn, {"seconds": 0.05}, checkpoint=recorder)
    assert result["burned_seconds"] >= 0.05 and result["iterations"] > 0
    states = [json.loads(text) for text in recorder.texts]
    assert all(b["burned"] >= a["burned"] for a, b in zip(states, states[1:]))
    resumed = run(cpu_burn, {"seconds": 0.05}, resume={"burned": 0.05, "iterations": 7})
    assert resumed == {"burned_seconds": 0.05, "iterations": 7}
