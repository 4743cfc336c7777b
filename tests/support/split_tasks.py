"""A task module for tests: an operator's own task type that splits, one part of which may fail.

Loaded with ``TASK_MODULES=tests.support.split_tasks`` by the dispatcher and the workers of an
end-to-end test: it shows that split jobs are generic (any task type with split and combine)
and lets a chosen part raise, as a real task does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks import CheckpointFn, task


class SumParams(BaseModel):
    """Sum the integers in [start, end]; part ``fail_part`` of a split job raises instead."""

    model_config = ConfigDict(strict=True, extra="forbid")
    start: int = Field(default=0, ge=0)
    end: int = Field(ge=0, le=10**9)
    part: int = -1
    fail_part: int | None = None


def split_sum(params: SumParams, parts: int) -> list[dict[str, Any]]:
    """At most ``parts`` consecutive ranges of [start, end], each told its index."""
    width = params.end - params.start + 1
    count = max(1, min(parts, width))
    bounds = [params.start + width * i // count for i in range(count + 1)]
    return [{"start": low, "end": high - 1, "part": i, "fail_part": params.fail_part}
            for i, (low, high) in enumerate(zip(bounds, bounds[1:]))]


def combine_sums(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The parts' sums added."""
    return {"sum": sum(r["sum"] for r in results), "parts": [r["part"] for r in results]}


@task("split_sum", params=SumParams, split=split_sum, combine=combine_sums)
def sum_range(params: SumParams, resume: dict[str, Any] | None,
              checkpoint: CheckpointFn) -> dict[str, Any]:
    """The sum of [start, end] (by formula), or a ValueError for the part told to fail."""
    if params.part == params.fail_part:
        raise ValueError(f"part {params.part} refuses to add up")
    total = (params.start + params.end) * (params.end - params.start + 1) // 2
    checkpoint({}, 1.0)
    return {"sum": total, "part": params.part}
