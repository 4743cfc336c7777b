"""The ``primes`` task: count and sum the primes in a range [start, limit], resumably.

A range lets one big count be split into tasks for several workers: the counts and sums of
[0, a], [a + 1, b], ..., [z + 1, limit] add up to those of [0, limit], and the largest prime
is that of the last range holding one. numpy loads only when a task runs (see ``primes``), so
the dispatcher can import this module for validation cheaply.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from tasks.base import CheckpointFn, Stopwatch, task

if TYPE_CHECKING:
    from tasks.prime_math import PrimeBlock

PRIMES_LIST_CAP = 100_000
"""The result (and the resume state) lists the primes themselves only when limit - start <= this
(at most 9,592 primes, the count below 100,000; fewer in any higher range of that width)."""

MAX_LIMIT = {"sieve": 10**12, "trial_division": 10**10}
"""Largest accepted limit per algorithm (trial division is far slower)."""
MAX_SPAN = {"trial_division": 10**9}
"""Most numbers one task may test per algorithm (limit - start): a bound on one task's work."""

Algorithm = Literal["sieve", "trial_division"]


class PrimeParams(BaseModel):
    """Parameters of a ``primes`` task."""

    model_config = ConfigDict(strict=True, extra="forbid")

    # Declared in this order so that each validator can see the fields before it.
    algorithm: Algorithm = "sieve"
    limit: int = Field(ge=0)
    start: int = Field(default=0, ge=0, validate_default=True)

    @field_validator("limit")
    @classmethod
    def _within_algorithm_max(cls, limit: int, info: ValidationInfo) -> int:
        algorithm = info.data.get("algorithm", "sieve")
        max_limit = MAX_LIMIT[algorithm]
        if limit > max_limit:
            raise PydanticCustomError(
                "limit_too_large",
                "must be <= {max_limit} for the {algorithm} algorithm",
                {"max_limit": max_limit, "algorithm": algorithm},
            )
        return limit

    @field_validator("start")
    @classmethod
    def _within_range(cls, start: int, info: ValidationInfo) -> int:
        limit = info.data.get("limit")
        if limit is not None and start > limit:
            raise PydanticCustomError("range_reversed", "must be <= limit ({limit})",
                                      {"limit": limit})
        algorithm = info.data.get("algorithm", "sieve")
        span = MAX_SPAN.get(algorithm)
        if limit is not None and span is not None and limit - start > span:
            raise PydanticCustomError(
                "range_too_large",
                "the range limit - start must be <= {span} for the {algorithm} algorithm",
                {"span": span, "algorithm": algorithm})
        return start

    @model_serializer(mode="wrap")
    def _without_default_start(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Stored params stay as before ranges existed, which workers not yet upgraded accept.
        data: dict[str, Any] = handler(self)
        if data.get("start") == 0:
            del data["start"]
        return data

    @property
    def lists_primes(self) -> bool:
        """Whether the range is small enough for the result to list its primes."""
        return self.limit - self.start <= PRIMES_LIST_CAP


class PrimeProgress(BaseModel):
    """Resume state: the totals over the numbers from the task's start up to ``last_checked``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    last_checked: int = Field(ge=0)
    prime_count: int = Field(ge=0)
    sum_of_primes: int = Field(ge=0)
    largest_prime: int | None
    elapsed_seconds: float = Field(ge=0)
    primes: list[int] | None = None

    @classmethod
    def fresh(cls, params: PrimeParams) -> PrimeProgress:
        """The state before any number is checked; 2, the only even prime, is counted here."""
        has_two = params.start <= 2 <= params.limit
        return cls(
            # The engines take the odd numbers above last_checked (1 is never taken).
            last_checked=max(params.start - 1, min(params.limit, 2)),
            prime_count=int(has_two),
            sum_of_primes=2 if has_two else 0,
            largest_prime=2 if has_two else None,
            elapsed_seconds=0.0,
            primes=([2] if has_two else []) if params.lists_primes else None,
        )

    def add(self, block: PrimeBlock) -> None:
        """Fold in the primes of the next block."""
        self.last_checked = block.last_checked
        self.prime_count += block.count
        self.sum_of_primes += block.total
        if block.largest is not None:
            self.largest_prime = block.largest
        if self.primes is not None and block.values is not None:
            self.primes.extend(block.values)


def split_range(params: PrimeParams, parts: int) -> list[dict[str, Any]]:
    """[start, limit] in at most ``parts`` consecutive ranges of equal width (give or take one).

    Equal widths balance the sieve well (its cost per number hardly grows with the number);
    a range narrower than ``parts`` numbers gets one part per number.
    """
    width = params.limit - params.start + 1
    count = max(1, min(parts, width))
    bounds = [params.start + width * i // count for i in range(count + 1)]
    return [{"algorithm": params.algorithm, "start": low, "limit": high - 1}
            for low, high in zip(bounds, bounds[1:])]


def combine_ranges(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The result of the whole range from its parts' results, in range order."""
    first, last = results[0], results[-1]
    combined: dict[str, Any] = {
        "algorithm": first["algorithm"],
        "start": first["start"],
        "limit": last["limit"],
        "prime_count": sum(r["prime_count"] for r in results),
        "largest_prime": next((r["largest_prime"] for r in reversed(results)
                               if r["largest_prime"] is not None), None),
        "sum_of_primes": sum(r["sum_of_primes"] for r in results),
        "elapsed_seconds": sum(r["elapsed_seconds"] for r in results),
    }
    if last["limit"] - first["start"] <= PRIMES_LIST_CAP and all("primes" in r for r in results):
        combined["primes"] = [p for r in results for p in r["primes"]]
    return combined


@task("primes", params=PrimeParams, state=PrimeProgress,
      never_decrease=("last_checked", "prime_count", "sum_of_primes"),
      split=split_range, combine=combine_ranges)
def primes(
    params: PrimeParams, resume: dict[str, Any] | None, checkpoint: CheckpointFn
) -> dict[str, Any]:
    """Count, sum and (up to a cap) list the primes in [start, limit]: sieve or trial_division."""
    progress = _load_progress(params, resume)
    stopwatch = Stopwatch(progress.elapsed_seconds)
    width = max(params.limit - params.start, 1)
    for block in _blocks(params, progress):
        progress.add(block)
        progress.elapsed_seconds = stopwatch.seconds()
        checkpoint(progress.model_dump(), (progress.last_checked - params.start) / width)
    return _result(params, progress, stopwatch.seconds())


def _load_progress(params: PrimeParams, resume: dict[str, Any] | None) -> PrimeProgress:
    """The progress to start from: fresh, or a validated earlier checkpoint state."""
    if resume is None:
        return PrimeProgress.fresh(params)
    progress = PrimeProgress.model_validate(resume)
    if (
        not params.start - 1 <= progress.last_checked <= params.limit
        or (progress.primes is not None) != params.lists_primes
    ):
        raise ValueError("resume state does not belong to this task's range")
    return progress


def _blocks(params: PrimeParams, progress: PrimeProgress) -> Iterator[PrimeBlock]:
    """The engine of the chosen algorithm, continuing after progress.last_checked."""
    from tasks import prime_math  # numpy is imported by workers only

    want_values = progress.primes is not None
    if params.algorithm == "trial_division":
        return prime_math.trial_division_blocks(progress.last_checked, params.limit, want_values)
    return prime_math.sieve_blocks(progress.last_checked, params.limit, want_values)


def _result(params: PrimeParams, progress: PrimeProgress, elapsed: float) -> dict[str, Any]:
    """The task's JSON result."""
    result: dict[str, Any] = {
        "algorithm": params.algorithm,
        "start": params.start,
        "limit": params.limit,
        "prime_count": progress.prime_count,
        "largest_prime": progress.largest_prime,
        "sum_of_primes": progress.sum_of_primes,
        "elapsed_seconds": elapsed,
    }
    if progress.primes is not None:
        result["primes"] = progress.primes
    return result

