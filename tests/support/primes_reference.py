"""Known prime counts, largest primes and sums, computed independently of ``tasks/``.

Computed once with a plain odd-only numpy sieve (not the segmented one under test):
``n -> (prime_count, largest_prime, sum_of_primes)`` for the primes <= n.
"""

from __future__ import annotations

from typing import Any

KNOWN_PRIMES: dict[int, tuple[int, int, int]] = {
    10**5: (9592, 99991, 454396537),
    10**6: (78498, 999983, 37550402023),
    10**7: (664579, 9999991, 3203324994356),
    5 * 10**7: (3001134, 49999991, 72619548630277),
    10**8: (5761455, 99999989, 279209790387276),
    25 * 10**7: (13679318, 249999991, 1660170771905893),
    5 * 10**8: (26355867, 499999993, 6404774487532576),
    10**9: (50847534, 999999937, 24739512092254535),
    2 * 10**9: (98222287, 1999999973, 95673602693282040),
    # The numpy engine (not the C kernel under test); count and largest agree with primesieve.
    10**10: (455052511, 9999999967, 2220822432581729238),
    2 * 10**10: (882206716, 19999999967, 8617752113620426559),
}


def is_correct_primes(params: dict[str, Any], result: Any) -> bool:
    """True when a ``primes`` result matches the independent reference for its limit."""
    if not isinstance(result, dict):
        return False
    expected = KNOWN_PRIMES[params["limit"]]
    got = (result.get("prime_count"), result.get("largest_prime"), result.get("sum_of_primes"))
    return got == expected
