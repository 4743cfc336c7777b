"""Numeric kernels of the compute tasks (numpy), each working on one chunk at a time."""

from __future__ import annotations

import numpy as np

_LOW_BITS = 20


def count_inside_circle(seed: int, chunk_index: int, samples: int) -> int:
    """Random points of the unit square inside the quarter circle, from this chunk's own stream."""
    # Each chunk has its own generator, so the total is the same however the run is split.
    rng = np.random.default_rng([seed, chunk_index])
    x, y = rng.random(samples), rng.random(samples)
    x *= x
    y *= y
    x += y
    return int(np.count_nonzero(x < 1.0))


def sum_of_squares(first: int, last: int) -> int:
    """Exact sum of i*i for first <= i <= last; needs |i| <= 2**40 and at most 2**22 terms."""
    # i = high * 2**20 + low with 0 <= low < 2**20; every partial dot product fits in int64.
    low = np.arange(first, last + 1, dtype=np.int64)
    high = low >> _LOW_BITS
    low &= (1 << _LOW_BITS) - 1
    return (int(high @ high) << 2 * _LOW_BITS) + (int(high @ low) << _LOW_BITS + 1) + int(low @ low)


def collatz_table(size: int, block_len: int) -> np.ndarray:
    """Collatz steps to reach 1 for every n < size (entry 0 unused)."""
    table = np.zeros(max(size, 2), dtype=np.int64)
    for low in range(2, size, block_len):
        high = min(low + block_len, size)
        table[low:high] = collatz_steps(np.arange(low, high, dtype=np.int64), table[:low])
    return table[:size]


def collatz_steps(numbers: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Collatz steps to reach 1 for each number, looking up values below len(known)."""
    steps = np.zeros(numbers.size, dtype=np.int64)
    active = np.arange(numbers.size)
    values = numbers.copy()
    while active.size:
        odd = values & 1
        # An odd x goes to 3x + 1, which is even: take both steps at once.
        values = np.where(odd == 1, (3 * values + 1) >> 1, values >> 1)
        steps[active] += 1 + odd
        done = values < known.size
        steps[active[done]] += known[values[done]]
        active, values = active[~done], values[~done]
    return steps


def longest_in_table(table: np.ndarray) -> tuple[int, int]:
    """The smallest number below len(table) with the most steps, and its steps."""
    return _first_longest(1, table[1:])


def longest_collatz(first: int, stop: int, table: np.ndarray) -> tuple[int, int]:
    """The smallest number in [first, stop) with the most steps, and its steps."""
    return _first_longest(first, collatz_steps(np.arange(first, stop, dtype=np.int64), table))


def _first_longest(first: int, steps: np.ndarray) -> tuple[int, int]:
    """The first of first, first + 1, ... with the most steps (argmax keeps the first)."""
    best = int(np.argmax(steps))
    return first + best, int(steps[best])
