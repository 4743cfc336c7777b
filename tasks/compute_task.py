"""Resumable compute tasks besides primes: noop, sleep, cpu_burn, monte_carlo_pi, sum_of_squares,
collatz_longest.

Each numeric task works in fixed chunks and checkpoints after each one; its state records the
next chunk, the totals so far and the elapsed seconds. numpy loads only when a task runs.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from tasks.base import CheckpointFn, Stopwatch, task

SLEEP_STEP_SECONDS = 0.1
CPU_BURN_SLICE = 20_000
"""Pure-Python loop iterations between checkpoint calls of ``cpu_burn`` (a few ms)."""
MONTE_CARLO_CHUNK = 1_000_000
SQUARES_CHUNK = 1 << 20
COLLATZ_TABLE_LEN = 1 << 20
"""Collatz steps of all numbers below this are tabulated; longer chains stop at the table."""
COLLATZ_BLOCK_LEN = 1 << 16

MAX_SQUARES_VALUE = 10**12
MAX_SECONDS = 600
"""Longest sleep / cpu_burn task accepted, seconds (a bound on the work one task asks for)."""
MAX_SQUARES_TERMS = 10**10

_STRICT = ConfigDict(strict=True, extra="forbid")
StateT = TypeVar("StateT", bound=BaseModel)


def _load_state(model: type[StateT], resume: dict[str, Any] | None) -> StateT:
    """A validated resume state, or the model's defaults for a fresh run."""
    return model.model_validate(resume or {})


class NoopParams(BaseModel):
    """Any JSON object; echoed back."""

    model_config = ConfigDict(extra="allow")


@task("noop", params=NoopParams)
def noop(
    params: NoopParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
) -> dict[str, Any]:
    """Return the params unchanged (for throughput benchmarks)."""
    return {"echo": dict(params.model_extra or {})}


class SleepParams(BaseModel):
    """Parameters of a ``sleep`` task."""

    model_config = _STRICT
    seconds: float = Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)


class SleepState(BaseModel):
    """Resume state of a ``sleep`` task."""

    model_config = _STRICT
    slept: float = Field(default=0.0, ge=0)
    elapsed_seconds: float = Field(default=0.0, ge=0)


@task("sleep", params=SleepParams, state=SleepState, never_decrease=("slept",))
def sleep(
    params: SleepParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
) -> dict[str, Any]:
    """Sleep for params.seconds in short steps, checkpointing after each."""
    state = _load_state(SleepState, resume)
    stopwatch = Stopwatch(state.elapsed_seconds)
    slept = resumed_from = state.slept
    while slept < params.seconds:
        remaining = params.seconds - slept
        step = min(SLEEP_STEP_SECONDS, remaining)
        time.sleep(step)
        # Land exactly on the target so float rounding never adds a tiny extra step.
        slept = params.seconds if step == remaining else slept + step
        checkpoint({"slept": slept, "elapsed_seconds": stopwatch.seconds()}, slept / params.seconds)
    return {
        "slept_seconds": params.seconds,
        "resumed_from_seconds": resumed_from,
        "elapsed_seconds": stopwatch.seconds(),
    }


class CpuBurnParams(BaseModel):
    """Parameters of a ``cpu_burn`` task."""

    model_config = _STRICT
    seconds: float = Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)


class CpuBurnState(BaseModel):
    """Resume state of a ``cpu_burn`` task."""

    model_config = _STRICT
    burned: float = Field(default=0.0, ge=0)
    iterations: int = Field(default=0, ge=0)


def _spin(iterations: int) -> int:
    """Pure-Python integer work that holds the GIL between bytecodes."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) % 1_000_003
    return acc


@task("cpu_burn", params=CpuBurnParams, state=CpuBurnState,
      never_decrease=("burned", "iterations"))
def cpu_burn(
    params: CpuBurnParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
) -> dict[str, Any]:
    """Keep one core busy with pure-Python work for params.seconds, checkpointing as it goes."""
    state = _load_state(CpuBurnState, resume)
    started, before = time.monotonic(), state.burned
    while state.burned < params.seconds:
        _spin(CPU_BURN_SLICE)
        state.iterations += CPU_BURN_SLICE
        state.burned = before + time.monotonic() - started
        checkpoint(state.model_dump(), min(1.0, state.burned / params.seconds))
    return {"burned_seconds": state.burned, "iterations": state.iterations}


class MonteCarloParams(BaseModel):
    """Parameters of a ``monte_carlo_pi`` task."""

    model_config = _STRICT
    samples: int = Field(ge=1, le=10**10)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)


class MonteCarloState(BaseModel):
    """Resume state of a ``monte_carlo_pi`` task."""

    model_config = _STRICT
    chunks_done: int = Field(default=0, ge=0)
    inside: int = Field(default=0, ge=0)
    elapsed_seconds: float = Field(default=0.0, ge=0)


@task("monte_carlo_pi", params=MonteCarloParams, state=MonteCarloState,
      never_decrease=("chunks_done", "inside"))
def monte_carlo_pi(
    params: MonteCarloParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
) -> dict[str, Any]:
    """Estimate pi from random points, one seeded chunk of samples at a time."""
    from tasks import compute_math  # numpy is imported by workers only

    state = _load_state(MonteCarloState, resume)
    stopwatch = Stopwatch(state.elapsed_seconds)
    chunks = -(-params.samples // MONTE_CARLO_CHUNK)
    for chunk in range(state.chunks_done, chunks):
        size = min(MONTE_CARLO_CHUNK, params.samples - chunk * MONTE_CARLO_CHUNK)
        state.inside += compute_math.count_inside_circle(params.seed, chunk, size)
        state.chunks_done = chunk + 1
        state.elapsed_seconds = stopwatch.seconds()
        checkpoint(state.model_dump(), state.chunks_done / chunks)
    return {
        "samples": params.samples,
        "seed": params.seed,
        "inside": state.inside,
        "pi_estimate": 4 * state.inside / params.samples,
        "elapsed_seconds": stopwatch.seconds(),
    }


class SumOfSquaresParams(BaseModel):
    """Parameters of a ``sum_of_squares`` task: the inclusive range [start, end]."""

    model_config = _STRICT
    start: int = Field(ge=-MAX_SQUARES_VALUE, le=MAX_SQUARES_VALUE)
    end: int = Field(ge=-MAX_SQUARES_VALUE, le=MAX_SQUARES_VALUE)

    @field_validator("end")
    @classmethod
    def _valid_range(cls, end: int, info: ValidationInfo) -> int:
        start = info.data.get("start")
        if start is not None and end < start:
            raise PydanticCustomError(
                "range_reversed", "must be >= start ({start})", {"start": start}
            )
        if start is not None and end - start + 1 > MAX_SQUARES_TERMS:
            raise PydanticCustomError(
                "range_too_long", "end - start + 1 must be <= {max}", {"max": MAX_SQUARES_TERMS}
            )
        return end


class SumOfSquaresState(BaseModel):
    """Resume state of a ``sum_of_squares`` task: the sum over [start, next)."""

    model_config = _STRICT
    next: int
    sum: int = Field(ge=0)
    elapsed_seconds: float = Field(ge=0)


@task("sum_of_squares", params=SumOfSquaresParams, state=SumOfSquaresState,
      never_decrease=("next", "sum"))
def sum_of_squares(
    params: SumOfSquaresParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
) -> dict[str, Any]:
    """Exact sum of i*i for start <= i <= end, one chunk at a time."""
    from tasks import compute_math  # numpy is imported by workers only

    fresh = {"next": params.start, "sum": 0, "elapsed_seconds": 0.0}
    state = _load_state(SumOfSquaresState, resume or fresh)
    stopwatch = Stopwatch(state.elapsed_seconds)
    terms = params.end - params.start + 1
    for first in range(state.next, params.end + 1, SQUARES_CHUNK):
        last = min(first + SQUARES_CHUNK - 1, params.end)
        state.sum += compute_math.sum_of_squares(first, last)
        state.next = last + 1
        state.elapsed_seconds = stopwatch.seconds()
        checkpoint(state.model_dump(), (state.next - params.start) / terms)
    return {
        "start": params.start,
        "end": params.end,
        "sum": state.sum,
        "elapsed_seconds": stopwatch.seconds(),
    }


class CollatzParams(BaseModel):
    """Parameters of a ``collatz_longest`` task: search 1 <= n < limit."""

    model_config = _STRICT
    limit: int = Field(ge=2, le=10**8)


class CollatzState(BaseModel):
    """Resume state of a ``collatz_longest`` task: the best number below ``next``."""

    model_config = _STRICT
    next: int = Field(ge=2)
    number: int = Field(ge=1)
    steps: int = Field(ge=0)
    elapsed_seconds: float = Field(ge=0)


@task("collatz_longest", params=CollatzParams, state=CollatzState,
      never_decrease=("next", "steps"))
def collatz_longest(
    params: CollatzParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
) -> dict[str, Any]:
    """The number below limit with the most Collatz steps to reach 1 (the smallest on ties)."""
    from tasks import compute_math  # numpy is imported by workers only

    state = _load_state(CollatzState, resume) if resume else None
    stopwatch = Stopwatch(state.elapsed_seconds if state else 0.0)
    table_len = min(params.limit, COLLATZ_TABLE_LEN)
    # The table is rebuilt on every (re)start: it is quick, and too big for a checkpoint.
    table = compute_math.collatz_table(table_len, COLLATZ_BLOCK_LEN)
    if state is None:
        number, steps = compute_math.longest_in_table(table)
        state = CollatzState(next=table_len, number=number, steps=steps, elapsed_seconds=0.0)
    for first in range(state.next, params.limit, COLLATZ_BLOCK_LEN):
        stop = min(first + COLLATZ_BLOCK_LEN, params.limit)
        number, steps = compute_math.longest_collatz(first, stop, table)
        if steps > state.steps:
            state.number, state.steps = number, steps
        state.next = stop
        state.elapsed_seconds = stopwatch.seconds()
        checkpoint(state.model_dump(), state.next / params.limit)
    return {
        "limit": params.limit,
        "number": state.number,
        "steps": state.steps,
        "elapsed_seconds": stopwatch.seconds(),
    }

