"""The primes task: known values, both engines against a reference, resume, validation, memory."""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import prime_math
from tasks.base import InvalidParams, TaskInterrupted, noop_checkpoint
from tasks.prime_task import PRIMES_LIST_CAP, PrimeParams, primes, split_range

ALGORITHMS = ("sieve", "trial_division")


@cache
def reference_primes(limit: int = PRIMES_LIST_CAP) -> tuple[int, ...]:
    """Primes <= limit by a plain pure-Python sieve."""
    flags = bytearray([1]) * (limit + 1)
    flags[:2] = b"\0\0"
    for n in range(2, int(limit**0.5) + 1):
        if flags[n]:
            flags[n * n :: n] = bytes(len(range(n * n, limit + 1, n)))
    return tuple(n for n in range(limit + 1) if flags[n])


def run(
    limit: int,
    algorithm: str = "sieve",
    resume: dict[str, Any] | None = None,
    checkpoint: Any = noop_checkpoint,
    start: int = 0,
) -> dict[str, Any]:
    """Validate and run a primes task over [start, limit]."""
    params = primes.validate({"limit": limit, "algorithm": algorithm, "start": start})
    return primes.run(params, resume, checkpoint)


def totals_of(result: dict[str, Any]) -> tuple[int, int, int | None]:
    """(prime_count, sum_of_primes, largest_prime) of a result."""
    return result["prime_count"], result["sum_of_primes"], result["largest_prime"]


def without_elapsed(result: dict[str, Any]) -> dict[str, Any]:
    """A result minus the only field allowed to differ between runs."""
    return {key: value for key, value in result.items() if key != "elapsed_seconds"}


class Recorder:
    """A checkpoint callback that keeps each state, as JSON text taken at call time."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.states: list[dict[str, Any]] = []
        self.texts: list[str] = []
        self.progress: list[float] = []
        self.interrupt_at = interrupt_at

    def __call__(self, state: dict[str, Any], progress: float) -> None:
        self.states.append(state)
        self.texts.append(json.dumps(state))
        self.progress.append(progress)
        if self.interrupt_at is not None and len(self.states) >= self.interrupt_at:
            raise TaskInterrupted


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny sieve segments and trial-division blocks, so small limits span many of them."""
    monkeypatch.setattr(prime_math, "SEGMENT_LEN", 97)
    monkeypatch.setattr(prime_math, "TRIAL_BLOCK_LEN", 61)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    ("limit", "count", "total", "largest"),
    [
        (0, 0, 0, None),
        (1, 0, 0, None),
        (2, 1, 2, 2),
        (3, 2, 5, 3),
        (4, 2, 5, 3),
        (5, 3, 10, 5),
        (100, 25, 1060, 97),
        (10**6, 78498, 37550402023, 999983),
    ],
)
def test_known_values(
    algorithm: str, limit: int, count: int, total: int, largest: int | None
) -> None:
    result = run(limit, algorithm)
    assert (result["prime_count"], result["sum_of_primes"], result["largest_prime"]) == (
        count,
        total,
        largest,
    )
    assert result["algorithm"] == algorithm and result["limit"] == limit


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ten_million(algorithm: str) -> None:
    result = run(10**7, algorithm)
    assert (result["prime_count"], result["sum_of_primes"], result["largest_prime"]) == (
        664579,
        3203324994356,
        9999991,
    )
    assert "primes" not in result


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("limit", [0, 2, 1000, PRIMES_LIST_CAP])
def test_primes_listed_up_to_cap(algorithm: str, limit: int) -> None:
    assert run(limit, algorithm)["primes"] == list(reference_primes(limit))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_primes_not_listed_above_cap(algorithm: str) -> None:
    result = run(PRIMES_LIST_CAP + 1, algorithm)
    assert "primes" not in result
    assert result["prime_count"] == len(reference_primes())


@settings(max_examples=25, deadline=None)
@given(
    limit=st.integers(0, PRIMES_LIST_CAP),
    start_fraction=st.floats(0, 1),
    block_len=st.integers(1, 3000),
)
def test_engines_match_reference(limit: int, start_fraction: float, block_len: int) -> None:
    last_checked = int(limit * start_fraction)
    expected = [p for p in reference_primes() if last_checked < p <= limit and p != 2]
    for engine in (prime_math.sieve_blocks, prime_math.trial_division_blocks):
        blocks = list(engine(last_checked, limit, True, block_len))
        assert [p for block in blocks for p in block.values or ()] == expected
        assert sum(block.count for block in blocks) == len(expected)
        assert sum(block.total for block in blocks) == sum(expected)
        assert all(b.largest == (b.values[-1] if b.values else None) for b in blocks)
        if blocks:
            assert blocks[-1].last_checked == limit


def test_sieve_crosses_off_around_segment_boundaries() -> None:
    # Segments of 8 odd numbers put boundaries right at squares such as 23**2 and 29**2.
    limit = 3000
    for segment_len in (8, 13, 16, 64):
        blocks = prime_math.sieve_blocks(2, limit, True, segment_len)
        found = [p for block in blocks for p in block.values or ()]
        assert found == list(reference_primes(limit))[1:]


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    ("start", "limit"),
    [(0, 5000), (0, PRIMES_LIST_CAP + 2001), (1234, 5000),
     (PRIMES_LIST_CAP // 2, 2 * PRIMES_LIST_CAP), (10**7, 10**7 + 3000)],
)
def test_resume_from_any_state_gives_same_result(algorithm: str, start: int, limit: int) -> None:
    recorder = Recorder()
    expected = without_elapsed(run(limit, algorithm, checkpoint=recorder, start=start))
    assert len(recorder.states) > 10
    assert recorder.texts == [json.dumps(state) for state in recorder.states]  # never mutated
    assert recorder.progress == sorted(recorder.progress) and recorder.progress[-1] == 1.0
    assert 0 <= recorder.progress[0]
    for index in (0, 1, len(recorder.states) // 2, len(recorder.states) - 1):
        state = json.loads(recorder.texts[index])
        assert without_elapsed(run(limit, algorithm, resume=state, start=start)) == expected


# Ranges [start, limit]: what split jobs run on different workers and add up.


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    ("start", "limit", "count", "total", "largest"),
    [
        (0, 0, 0, 0, None),
        (1, 1, 0, 0, None),
        (2, 2, 1, 2, 2),
        (3, 3, 1, 3, 3),
        (4, 4, 0, 0, None),
        (1, 2, 1, 2, 2),
        (2, 10, 4, 17, 7),
        (3, 10, 3, 15, 7),
        (6, 10, 1, 7, 7),
        (24, 28, 0, 0, None),
        (97, 97, 1, 97, 97),
        (90, 100, 1, 97, 97),
        # pi(10^6) - pi(10^5), and the sums likewise.
        (10**5, 10**6, 78498 - 9592, 37550402023 - 454396537, 999983),
        (10**5 + 1, 10**6, 78498 - 9592, 37550402023 - 454396537, 999983),
    ],
)
def test_range_known_values(
    algorithm: str, start: int, limit: int, count: int, total: int, largest: int | None
) -> None:
    result = run(limit, algorithm, start=start)
    assert totals_of(result) == (count, total, largest)
    assert (result["start"], result["limit"]) == (start, limit)


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(0, 3 * PRIMES_LIST_CAP),
    width=st.integers(0, PRIMES_LIST_CAP + 10),
    algorithm=st.sampled_from(ALGORITHMS),
)
def test_range_lists_exactly_the_primes_in_it(limit: int, width: int, algorithm: str) -> None:
    start = max(0, limit - width)
    expected = [p for p in reference_primes(3 * PRIMES_LIST_CAP) if start <= p <= limit]
    result = run(limit, algorithm, start=start)
    assert totals_of(result) == (len(expected), sum(expected), max(expected, default=None))
    assert result.get("primes") == (expected if limit - start <= PRIMES_LIST_CAP else None)


def combine(results: list[dict[str, Any]]) -> tuple[int, int, int | None]:
    """How a split job adds up its ranges: counts and sums add, the last largest prime wins."""
    largest = [r["largest_prime"] for r in results if r["largest_prime"] is not None]
    return (sum(r["prime_count"] for r in results), sum(r["sum_of_primes"] for r in results),
            largest[-1] if largest else None)


def split(limit: int, cuts: list[int]) -> list[tuple[int, int]]:
    """[0, a], [a + 1, b], ..., [z + 1, limit] for the sorted distinct cuts a < b < ... < limit."""
    ends = [*cuts, limit]
    return list(zip([0, *(end + 1 for end in cuts)], ends, strict=True))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("limit", [2, 3, 1000, PRIMES_LIST_CAP + 17, 10**6])
@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_split_ranges_add_up_to_the_whole(algorithm: str, limit: int, parts: int) -> None:
    cuts = sorted({limit * i // parts for i in range(1, parts)} - {limit})
    results = [run(end, algorithm, start=start) for start, end in split(limit, cuts)]
    assert combine(results) == totals_of(run(limit, algorithm))


@pytest.mark.usefixtures("small_blocks")
@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(0, 20_000),
    cut_fractions=st.lists(st.floats(0, 1), max_size=6),
    algorithm=st.sampled_from(ALGORITHMS),
)
def test_ranges_split_anywhere_add_up(
    limit: int, cut_fractions: list[float], algorithm: str
) -> None:
    cuts = sorted({int(limit * f) for f in cut_fractions} - {limit})
    results = [run(end, algorithm, start=start) for start, end in split(limit, cuts)]
    expected = [p for p in reference_primes() if p <= limit]
    assert combine(results) == (len(expected), sum(expected), max(expected, default=None))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ten_million_split_in_four(algorithm: str) -> None:
    results = [run(end, algorithm, start=start)
               for start, end in split(10**7, [2 * 10**6, 5 * 10**6, 9_999_990])]
    assert combine(results) == (664579, 3203324994356, 9999991)
    assert results[-1]["prime_count"] == 1  # 9,999,991 alone in the last range


def test_a_billion_split_in_three_with_the_sieve() -> None:
    results = [run(end, start=start) for start, end in split(10**9, [10**8, 6 * 10**8])]
    assert combine(results) == (50847534, 24739512092254535, 999999937)


def test_high_range_agrees_between_algorithms_and_halves() -> None:
    start, limit = 10**10 - 10**5, 10**10
    sieve = run(limit, "sieve", start=start)
    assert without_elapsed(run(limit, "trial_division", start=start)) == without_elapsed(
        sieve) | {"algorithm": "trial_division"}
    # Counted independently with a deterministic Miller-Rabin test over the range.
    assert totals_of(sieve) == (4306, 43059784195402, 9999999967)
    assert sieve["primes"][:3] == [9999900017, 9999900059, 9999900077]
    halves = [run(start + 50_000, start=start), run(limit, start=start + 50_001)]
    assert combine(halves) == totals_of(sieve)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_primes_listed_up_to_the_cap_on_the_range_width(algorithm: str) -> None:
    start = 10**6
    assert "primes" in run(start + PRIMES_LIST_CAP, algorithm, start=start)
    assert "primes" not in run(start + PRIMES_LIST_CAP + 1, algorithm, start=start)


@pytest.mark.usefixtures("small_blocks")
def test_resume_state_from_before_the_range_is_refused() -> None:
    recorder = Recorder()
    run(5000, checkpoint=recorder)
    with pytest.raises(ValueError, match="resume state"):
        run(5000, resume=recorder.states[0], start=4000)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checkpoint_states_are_plain_json(algorithm: str) -> None:
    recorder = Recorder()
    run(PRIMES_LIST_CAP, algorithm, checkpoint=recorder)
    run(3 * 10**6, algorithm, checkpoint=recorder)
    for state in recorder.states:
        assert {type(value) for value in state.values()} <= {int, float, list, type(None)}
        assert all(type(p) is int for p in state.get("primes") or ())


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_elapsed_accumulates_across_resumes(algorithm: str) -> None:
    recorder = Recorder()
    run(3000, algorithm, checkpoint=recorder)
    state = json.loads(recorder.texts[2]) | {"elapsed_seconds": 100.0}
    assert run(3000, algorithm, resume=state)["elapsed_seconds"] >= 100.0


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_interrupting_checkpoint_stops_the_task(algorithm: str) -> None:
    recorder = Recorder(interrupt_at=3)
    with pytest.raises(TaskInterrupted):
        run(5000, algorithm, checkpoint=recorder)
    assert len(recorder.states) == 3


def test_resume_state_of_another_limit_is_refused() -> None:
    recorder = Recorder()
    run(1000, checkpoint=recorder)
    with pytest.raises(ValueError, match="resume state"):
        run(500, resume=recorder.states[-1])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "100"}, "params.limit"),
        ({"limit": 100.0}, "params.limit"),
        ({"limit": True}, "params.limit"),
        ({"limit": None}, "params.limit"),
        ({"limit": -1}, "params.limit"),
        ({}, "params.limit"),
        ({"limit": 10**12 + 1}, "params.limit"),
        ({"limit": 10**10 + 1, "algorithm": "trial_division"}, "params.limit"),
        ({"limit": 10**9 + 1, "algorithm": "trial_division"}, "params.start"),
        ({"limit": 10, "algorithm": "wheel"}, "params.algorithm"),
        ({"limit": 10, "algorithm": None}, "params.algorithm"),
        ({"limit": 10, "colour": "blue"}, "params.colour"),
        ({"limit": 10, "start": 11}, "params.start"),
        ({"limit": 10, "start": -1}, "params.start"),
        ({"limit": 10, "start": "1"}, "params.start"),
        ({"limit": 10, "start": 1.0}, "params.start"),
        ({"limit": 10, "start": None}, "params.start"),
        ({"limit": 10**12 + 1, "start": 10**12}, "params.limit"),
    ],
)
def test_invalid_params_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParams) as caught:
        primes.validate(params)
    assert caught.value.field == field


def test_reversed_range_message_gives_the_limit() -> None:
    with pytest.raises(InvalidParams, match=r"^params.start: .*must be <= limit \(10\)"):
        primes.validate({"limit": 10, "start": 11})
    assert primes.validate({"limit": 10, "start": 10}).model_dump() == {
        "algorithm": "sieve", "limit": 10, "start": 10}


def test_oversized_limit_message_gives_the_maximum() -> None:
    with pytest.raises(InvalidParams, match="10000000000 for the trial_division"):
        primes.validate({"limit": 10**10 + 1, "algorithm": "trial_division"})
    assert primes.validate({"limit": 10**10 + 1}).model_dump()["limit"] == 10**10 + 1


def test_sieve_memory_does_not_grow_with_the_range() -> None:
    def peak_bytes(last_checked: int, limit: int) -> int:
        tracemalloc.start()
        try:
            for _ in prime_math.sieve_blocks(last_checked, limit, False):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short = peak_bytes(10**11 - 4 * 10**6, 10**11)
    long = peak_bytes(10**11 - 4 * 10**7, 10**11)
    assert long < 1.2 * short
    assert long < 16 * 2**20


# The sieve's C kernel (wheel mod 30, compiled once per machine) and its numpy fallback.

needs_compiler = pytest.mark.skipif(
    prime_math._kernel() is None, reason="no C compiler: the sieve runs on numpy"
)


def totals(blocks: Iterable[prime_math.PrimeBlock]) -> tuple[int, int, int | None]:
    """Count, sum and largest of the primes in some blocks."""
    count = total = 0
    largest = None
    for block in blocks:
        count, total = count + block.count, total + block.total
        largest = block.largest if block.largest is not None else largest
    return count, total, largest


def test_sieve_known_values_at_a_billion() -> None:
    assert totals(prime_math.sieve_blocks(2, 10**9, False)) == (
        50847534 - 1,  # without 2
        24739512092254535 - 2,
        999999937,
    )


@settings(max_examples=25, deadline=None)
@given(
    limit=st.integers(0, PRIMES_LIST_CAP),
    start_fraction=st.floats(0, 1),
    block_len=st.integers(1, 3000),
    kernel_segment=st.integers(1, 700),
)
def test_sieve_engines_match_reference_across_kernel_segments(
    limit: int, start_fraction: float, block_len: int, kernel_segment: int
) -> None:
    last_checked = int(limit * start_fraction)
    expected = [p for p in reference_primes() if last_checked < p <= limit and p != 2]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prime_math, "KERNEL_SEGMENT_BYTES", kernel_segment)
        for engine in (prime_math.sieve_blocks, prime_math.numpy_sieve_blocks):
            blocks = list(engine(last_checked, limit, True, block_len))
            assert [p for block in blocks for p in block.values or ()] == expected
            assert totals(blocks) == (len(expected), sum(expected), max(expected, default=None))
            assert all(a.last_checked < b.last_checked for a, b in zip(blocks, blocks[1:]))


@needs_compiler
@pytest.mark.parametrize("limit", [10**10, 10**11 + 3, 10**12])
@pytest.mark.parametrize("kernel_segment", [None, 1000])
def test_sieve_kernel_matches_numpy_at_large_numbers(
    monkeypatch: pytest.MonkeyPatch, limit: int, kernel_segment: int | None
) -> None:
    monkeypatch.setattr(prime_math, "KERNEL_SEGMENT_BYTES", kernel_segment)
    start = limit - 3 * 10**6 - 7
    expected = totals(prime_math.numpy_sieve_blocks(start, limit, False))
    assert totals(prime_math.sieve_blocks(start, limit, False, 10**5)) == expected


@needs_compiler
@settings(max_examples=30, deadline=None)
@given(start=st.integers(10**12 - 10**7, 10**12 - 10**5), cut=st.integers(1, 10**5 - 1))
def test_sieve_resumes_from_any_number(start: int, cut: int) -> None:
    limit = start + 10**5
    whole = totals(prime_math.sieve_blocks(start, limit, False))
    first = totals(prime_math.sieve_blocks(start, start + cut, False))
    second = totals(prime_math.sieve_blocks(start + cut, limit, False))
    assert (first[0] + second[0], first[1] + second[1]) == whole[:2]
    assert (second[2] or first[2]) == whole[2]


def test_sieve_without_kernel_falls_back_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prime_math, "_kernel", lambda: None)
    result = run(PRIMES_LIST_CAP)
    assert result["primes"] == list(reference_primes())


def test_kernel_load_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert prime_math.load_kernel(tmp_path, "no-such-compiler-here") is None
    assert "numpy sieve" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


@needs_compiler
def test_kernel_is_compiled_once_then_loaded(tmp_path: Path) -> None:
    compiler = os.environ.get("CC") or "cc"
    assert prime_math.load_kernel(tmp_path, compiler) is not None
    (library,) = tmp_path.iterdir()
    built = library.stat().st_mtime_ns
    assert prime_math.load_kernel(tmp_path, compiler) is not None
    assert list(tmp_path.iterdir()) == [library] and library.stat().st_mtime_ns == built


@pytest.mark.parametrize(("start", "limit", "parts"), [
    (0, 0, 1), (0, 0, 5), (0, 1, 5), (0, 10, 3), (5, 5, 2), (3, 1000, 16), (0, 10**12, 1000),
])
def test_split_ranges_cover_the_range_in_balanced_pieces(start: int, limit: int,
                                                          parts: int) -> None:
    pieces = split_range(PrimeParams(limit=limit, start=start), parts)
    assert len(pieces) == min(parts, limit - start + 1)
    assert pieces[0]["start"] == start and pieces[-1]["limit"] == limit
    assert all(a["limit"] + 1 == b["start"] for a, b in zip(pieces, pieces[1:]))
    widths = [p["limit"] - p["start"] + 1 for p in pieces]
    assert max(widths) - min(widths) <= 1
