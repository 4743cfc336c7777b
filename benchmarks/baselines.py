"""Straightforward reference implementations that the prime kernels are compared with.

Each returns ``(count, sum)`` of the primes in [2, limit] (or in (start, limit]), so every
implementation can be checked against the others.
"""

from __future__ import annotations

from math import isqrt

import numpy as np

SEGMENT_LEN = 1 << 20
"""Odd numbers per segment of the segmented baseline (1 MiB of bools)."""


def _odd_base_primes(root: int) -> np.ndarray:
    """Odd primes <= root (a small plain sieve), as int64."""
    flags = np.ones(root + 1, dtype=bool)
    flags[:2] = False
    for n in range(2, isqrt(root) + 1):
        if flags[n]:
            flags[n * n :: n] = False
    primes = np.flatnonzero(flags).astype(np.int64)
    return primes[primes > 2]


def numpy_array_sieve(limit: int) -> tuple[int, int]:
    """Sieve of Eratosthenes on one bool array of the odd numbers up to limit."""
    if limit < 2:
        return 0, 0
    odd = np.ones((limit + 1) // 2, dtype=bool)  # index j stands for 2j + 1
    odd[0] = False
    for prime in _odd_base_primes(isqrt(limit)).tolist():
        odd[prime * prime // 2 :: prime] = False
    found = np.flatnonzero(odd).astype(np.int64)
    return int(found.size) + 1, int((2 * found + 1).sum()) + 2


def numpy_segmented_sieve(limit: int, start: int = 0,
                          segment_len: int = SEGMENT_LEN) -> tuple[int, int]:
    """Segmented sieve over the odd numbers in (start, limit], one slice per prime per segment."""
    count = total = 0
    if start < 2 <= limit:
        count, total = 1, 2
    primes = _odd_base_primes(isqrt(limit))
    first, end = max(1, (start + 1) // 2), (limit + 1) // 2  # odd indices [first, end)
    segment = np.empty(segment_len, dtype=bool)
    for low in range(first, end, segment_len):
        view = segment[: min(segment_len, end - low)]
        view[:] = True
        high_number = 2 * (low + view.size) - 1
        for prime in primes[: np.searchsorted(primes, isqrt(high_number), side="right")].tolist():
            # first odd multiple of prime that is >= max(prime^2, 2*low + 1), as an index
            square_index = prime * prime // 2
            offset = square_index - low if square_index >= low else (-(low - square_index)) % prime
            view[offset::prime] = False
        found = np.flatnonzero(view).astype(np.int64)
        count += int(found.size)
        total += int((2 * (found + low) + 1).sum())
    return count, total


def pure_python_trial_division(limit: int) -> tuple[int, int]:
    """Trial division of each odd number by the primes up to its square root, in plain Python."""
    if limit < 2:
        return 0, 0
    odd_primes: list[int] = []
    count, total = 1, 2
    for n in range(3, limit + 1, 2):
        root = isqrt(n)
        for p in odd_primes:
            if p > root:
                break
            if n % p == 0:
                break
        else:
            odd_primes.append(n)
            count += 1
            total += n
            continue
        if p > root:
            odd_primes.append(n)
            count += 1
            total += n
    return count, total
