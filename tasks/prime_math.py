"""Numeric engines of the prime task: a segmented sieve and vectorised trial division.

Both walk the numbers above ``last_checked`` up to ``limit`` in blocks and yield one
:class:`PrimeBlock` per block, so the caller can checkpoint between blocks. Memory is bounded
by the block size (plus the primes up to sqrt(limit)), whatever the limit.

The sieve runs a small C kernel (``_KERNEL_SOURCE``: wheel mod 30, cache-sized segments, see
docs/sieve.md), compiled once per machine into ``tasks/__pycache__`` and called through ctypes,
which releases the GIL during each call. Where no C compiler works it falls back, with a
logged warning, to the numpy sieve below (about 10x slower). Trial division is numpy.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from math import isqrt, prod
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SEGMENT_LEN = 15 << 22
"""Odd numbers per yielded block (a checkpoint), 4 MiB of kernel sieve bytes: 15-40 ms of work
from 10**9 to 10**12. The numpy fallback yields every NUMPY_SEGMENT_LEN odd numbers at most."""

KERNEL_SEGMENT_BYTES: int | None = None
"""Bytes (30 numbers each) the kernel sieves at a time; None: the power of two just above
sqrt(limit), kept within 32 KiB (L1) to 1 MiB (L2), which measured fastest here."""

NUMPY_SEGMENT_LEN = 1 << 20
"""Odd numbers per numpy sieve segment: one byte each, so a segment sits in a 2 MiB L2 cache."""

PRESIEVE_PRIMES = (3, 5, 7, 11, 13, 17)
"""numpy sieve: crossed off by copying a repeating pattern (period 255,255 odd numbers; adding
19 saves under 1% of the time for 4.6 MB more memory)."""

SPARSE_HITS = 32
"""numpy sieve: primes that hit a segment at most about this often are crossed off vectorised."""

TRIAL_BLOCK_LEN = 1 << 16
"""Odd candidates per trial-division block."""

KERNEL_PERIOD = 7 * 11 * 13 * 17 * 19
"""Kernel bytes after which the multiples of its presieve primes 7..19 repeat."""

KERNEL_CFLAGS = ("-O2", "-shared", "-fPIC")
"""How the kernel is compiled (-O3 or -march=native measured no faster)."""


@dataclass(frozen=True, slots=True)
class PrimeBlock:
    """The primes found among the odd numbers of one block, which ends at ``last_checked``."""

    last_checked: int
    count: int
    total: int
    largest: int | None
    values: list[int] | None


def sieve_blocks(
    last_checked: int, limit: int, want_values: bool, segment_len: int | None = None
) -> Iterator[PrimeBlock]:
    """Yield the odd primes in (last_checked, limit], about segment_len odd numbers a block."""
    segment_len = segment_len or SEGMENT_LEN
    if last_checked >= limit:
        return iter(())
    kernel = _kernel()
    if kernel is None:
        return numpy_sieve_blocks(
            last_checked, limit, want_values, min(segment_len, NUMPY_SEGMENT_LEN)
        )
    return _kernel_blocks(kernel, last_checked, limit, want_values, -(-segment_len // 15))


def _kernel_blocks(
    kernel: ctypes.CDLL, last_checked: int, limit: int, want_values: bool, block_bytes: int
) -> Iterator[PrimeBlock]:
    """The kernel's blocks of block_bytes bytes (byte j: 30j + 1, 30j + 7, ..., 30j + 29)."""
    root = isqrt(limit)
    segment_bytes = KERNEL_SEGMENT_BYTES or min(max(1 << root.bit_length(), 1 << 15), 1 << 20)
    n_primes = kernel.sieve_primes(root, None)  # the sieving primes 23..root: count, then fill
    primes = (ctypes.c_uint32 * max(n_primes, 0))()
    if n_primes < 0 or kernel.sieve_primes(root, primes) != n_primes:
        raise MemoryError("sieve kernel: no memory for the sieving primes")
    # Each sieving prime's next multiple to cross off (a byte index) and its wheel position.
    next_multiple, wheel = (ctypes.c_int64 * n_primes)(), (ctypes.c_uint8 * n_primes)()
    pattern = (ctypes.c_uint8 * (KERNEL_PERIOD + segment_bytes))()
    kernel.sieve_pattern(pattern, len(pattern))
    buffer = (ctypes.c_uint64 * -(-segment_bytes // 8))()
    out = (ctypes.c_int64 * 4)()
    if want_values:  # only for small limits: bound the buffer of found primes
        block_bytes = min(block_bytes, 1 << 12)
    values = (ctypes.c_int64 * (8 * block_bytes))() if want_values else None
    first, end = (last_checked + 1) // 30, limit // 30 + 1
    kernel.sieve_start(n_primes, primes, next_multiple, wheel, first)
    small = [p for p in (3, 5) if last_checked < p <= limit]  # not on the wheel
    for low in range(first, end, block_bytes):
        high = min(low + block_bytes, end)
        found = kernel.sieve_block(
            pattern, n_primes, primes, next_multiple, wheel, buffer, segment_bytes,
            low, high, last_checked, limit, out, values, 0 if values is None else len(values),
        )  # fmt: skip
        count, byte_sum, residue_sum, largest = out
        # Exact in Python ints: each prime is 30 * (low + byte offset) + residue.
        total = 30 * (low * count + byte_sum) + residue_sum
        yield PrimeBlock(
            last_checked=min(30 * high - 1, limit),
            count=len(small) + count,
            total=sum(small) + total,
            largest=largest or (small[-1] if small else None),
            values=small + values[:found] if values is not None else None,
        )
        small = []


@cache
def _kernel() -> ctypes.CDLL | None:
    """The sieve kernel of this machine, or None if it cannot be built (once per process)."""
    return load_kernel(Path(__file__).with_name("__pycache__"), os.environ.get("CC") or "cc")


def load_kernel(cache_dir: Path, compiler: str) -> ctypes.CDLL | None:
    """The kernel library, compiled into cache_dir unless already there; None if that fails."""
    command = [compiler, *KERNEL_CFLAGS, "-x", "c", "-", "-o"]
    key = "\0".join([_KERNEL_SOURCE, *command, platform.machine()])
    path = cache_dir / f"sieve_kernel-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    try:
        if not path.exists():
            _compile(command, path)
        kernel = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        logger.warning("C sieve kernel unavailable, using the numpy sieve: %s", detail)
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    for name, restype, argtypes in (
        ("sieve_primes", i64, [i64, ptr]),
        ("sieve_pattern", None, [ptr, i64]),
        ("sieve_start", None, [i64, ptr, ptr, ptr, i64]),
        ("sieve_block", i64, [ptr, i64, *[ptr] * 4, *[i64] * 5, ptr, ptr, i64]),
    ):
        function = getattr(kernel, name)
        function.restype, function.argtypes = restype, argtypes
    return kernel


def _compile(command: list[str], path: Path) -> None:
    """Compile the kernel to path atomically (concurrent workers may do it at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
    os.close(fd)
    try:
        subprocess.run(
            [*command, partial], input=_KERNEL_SOURCE, text=True, capture_output=True,
            check=True, timeout=120,
        )  # fmt: skip
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def numpy_sieve_blocks(
    last_checked: int, limit: int, want_values: bool, segment_len: int | None = None
) -> Iterator[PrimeBlock]:
    """The fallback sieve (numpy, odd numbers only): one block per segment of segment_len."""
    segment_len = segment_len or NUMPY_SEGMENT_LEN
    # Odd index j stands for the number 2j + 1 (j = 0, the number 1, is never visited).
    first, end = max(1, (last_checked + 1) // 2), (limit + 1) // 2
    if first >= end:
        return
    pattern, period = _presieve_pattern(min(prod(PRESIEVE_PRIMES) + segment_len, end))
    base = _sieving_primes(isqrt(limit))
    square_index = (base * base - 1) // 2
    n_dense = int(np.searchsorted(base, segment_len // SPARSE_HITS))
    dense = base[:n_dense].tolist()
    segment = np.empty(segment_len, dtype=bool)
    for start in range(first, end, segment_len):
        view = segment[: min(segment_len, end - start)]
        _fill_presieved(view, start, pattern, period)
        needed = int(np.searchsorted(base, isqrt(2 * (start + view.size) - 1), side="right"))
        offsets = _first_multiples(base[:needed], square_index[:needed], start)
        # Fewer offsets than dense primes while the largest ones' squares lie beyond the segment.
        for prime, offset in zip(dense, offsets[:n_dense].tolist(), strict=False):
            view[offset::prime] = False
        _cross_off_sparse(view, base[n_dense:needed], offsets[n_dense:])
        yield _summarise_segment(view, start, limit, want_values)


def _presieve_pattern(length: int) -> tuple[np.ndarray, int]:
    """Odd-index pattern with the multiples of PRESIEVE_PRIMES crossed off, and its period."""
    pattern = np.ones(length, dtype=bool)
    for prime in PRESIEVE_PRIMES:
        pattern[(prime - 1) // 2 :: prime] = False
    return pattern, prod(PRESIEVE_PRIMES)


def _fill_presieved(view: np.ndarray, start: int, pattern: np.ndarray, period: int) -> None:
    """Reset a segment to the presieved pattern, keeping the presieve primes themselves."""
    phase = start % period
    view[:] = pattern[phase : phase + view.size]
    for prime in PRESIEVE_PRIMES:
        if 0 <= (prime - 1) // 2 - start < view.size:
            view[(prime - 1) // 2 - start] = True


def _sieving_primes(root: int) -> np.ndarray:
    """Odd primes up to root, excluding the presieve primes, as int64 (plain sieve)."""
    odd = np.ones((root + 1) // 2, dtype=bool)
    odd[:1] = False
    for j in range(1, (isqrt(root) + 1) // 2):
        if odd[j]:
            odd[(2 * j + 1) ** 2 // 2 :: 2 * j + 1] = False
    primes: np.ndarray = 2 * np.flatnonzero(odd).astype(np.int64) + 1
    return primes[primes > PRESIEVE_PRIMES[-1]]


def _first_multiples(primes: np.ndarray, square_index: np.ndarray, start: int) -> np.ndarray:
    """Offset in the segment of each prime's first odd multiple that is >= max(p*p, segment)."""
    # Odd multiples of p sit at indices congruent to (p*p - 1) / 2 modulo p.
    delta = square_index - start
    offsets: np.ndarray = np.maximum(delta, delta % primes)
    return offsets


def _cross_off_sparse(view: np.ndarray, primes: np.ndarray, offsets: np.ndarray) -> None:
    """Cross off primes that hit the segment only a few times, all primes at once per hit."""
    inside = offsets < view.size
    primes, positions = primes[inside], offsets[inside]
    while positions.size:
        view[positions] = False
        positions = positions + primes
        inside = positions < view.size
        primes, positions = primes[inside], positions[inside]


def _summarise_segment(view: np.ndarray, start: int, limit: int, want_values: bool) -> PrimeBlock:
    """Count, sum and list the primes left in a sieved segment."""
    found = np.flatnonzero(view)
    count = int(found.size)
    # The even number after the segment is checked too: no even number above 2 is prime.
    last_checked = min(2 * (start + view.size), limit)
    if not count:
        return PrimeBlock(last_checked, 0, 0, None, [] if want_values else None)
    # Exact in Python ints: each prime is 2 * (start + index) + 1.
    total = 2 * (start * count + int(found.sum())) + count
    largest = 2 * (start + int(found[-1])) + 1
    values = (2 * (start + found) + 1).tolist() if want_values else None
    return PrimeBlock(last_checked, count, total, largest, values)


def trial_division_blocks(
    last_checked: int, limit: int, want_values: bool, block_len: int | None = None
) -> Iterator[PrimeBlock]:
    """Yield the odd primes in (last_checked, limit], dividing each candidate by primes."""
    block_len = block_len or TRIAL_BLOCK_LEN
    divisors = _trial_divisors(isqrt(limit), block_len)
    for low in range(max(3, (last_checked + 1) | 1), limit + 1, 2 * block_len):
        high = min(low + 2 * block_len - 1, limit)  # odd candidates low..high, then one even
        dtype = np.uint32 if high < 2**32 else np.uint64
        candidates = np.arange(low, high + 1, 2, dtype=dtype)
        needed = int(np.searchsorted(divisors, isqrt(high), side="right"))
        for prime in divisors[:needed].tolist():
            candidates = _drop_multiples(candidates, prime, keep_prime=prime >= low)
        yield _summarise_candidates(candidates, high, want_values)


def _trial_divisors(root: int, block_len: int) -> np.ndarray:
    """Odd primes up to root, themselves found by trial division."""
    if root < 3:
        return np.empty(0, dtype=np.int64)
    blocks = [block.values for block in trial_division_blocks(2, root, True, block_len)]
    return np.array([prime for values in blocks for prime in values or ()], dtype=np.int64)


def _drop_multiples(candidates: np.ndarray, prime: int, keep_prime: bool) -> np.ndarray:
    """Remove the candidates that ``prime`` divides exactly (except prime itself if asked)."""
    # Floor division by a scalar is SIMD-vectorised in numpy; ``%`` is several times slower.
    divisible = (candidates // prime) * prime == candidates
    if keep_prime:
        divisible &= candidates != prime
    survivors: np.ndarray = candidates[~divisible]
    return survivors


def _summarise_candidates(primes: np.ndarray, last_checked: int, want_values: bool) -> PrimeBlock:
    """Count, sum and list the candidates that survived trial division."""
    if not primes.size:
        return PrimeBlock(last_checked, 0, 0, None, [] if want_values else None)
    values = primes.tolist() if want_values else None
    total = int(primes.sum(dtype=np.uint64))
    return PrimeBlock(last_checked, int(primes.size), total, int(primes[-1]), values)


_KERNEL_SOURCE = r"""
/* Segmented sieve of Eratosthenes on the wheel mod 30: byte j holds the 8 numbers 30j + W[k]
   coprime to 30, bit k set while 30j + W[k] may be prime. Each sieving prime p keeps the byte
   of its next multiple p*m (m coprime to 30) and m's wheel index across segments and blocks. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "summarise() reads the sieve bytes as little-endian words"
#endif
#if defined(__x86_64__)
#define POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define POPCNT_CLONES
#endif

#define PERIOD 323323 /* bytes after which the multiples of 7, 11, 13, 17 and 19 repeat */

static const int64_t W[9] = {1, 7, 11, 13, 17, 19, 23, 29, 31};
static int8_t BIT[30];         /* wheel index of a residue mod 30, -1 if not coprime */
static uint8_t MASK[8][8];     /* [class of p][wheel index of m]: bit of p*m cleared */
static uint8_t DR[8][8];       /* [class][k]: (r*W[k+1])/30 - (r*W[k])/30 */

__attribute__((constructor)) static void init_tables(void) {
    for (int r = 0; r < 30; r++) BIT[r] = -1;
    for (int k = 0; k < 8; k++) BIT[W[k]] = (int8_t)k;
    for (int c = 0; c < 8; c++)
        for (int k = 0; k < 8; k++) {
            MASK[c][k] = (uint8_t)~(1u << BIT[(W[c] * W[k]) % 30]);
            DR[c][k] = (uint8_t)((W[c] * W[k + 1]) / 30 - (W[c] * W[k]) / 30);
        }
}

/* Cross off the multiples of p at byte indices idx < n of s, from wheel index *wi_io on;
   8 at a time (one turn of the wheel, p bytes) while they all fit. Returns the next index. */
static inline int64_t cross(uint8_t *s, int64_t n, int64_t p, int64_t idx, uint8_t *wi_io) {
    int c = BIT[p % 30], wi = *wi_io;
    int64_t q = p / 30;
    const uint8_t *mk = MASK[c], *dr = DR[c];
    while (wi != 0 && idx < n) {
        s[idx] &= mk[wi];
        idx += q * (W[wi + 1] - W[wi]) + dr[wi];
        wi = (wi + 1) & 7;
    }
    if (wi == 0) {
        int64_t o1 = q * 6 + dr[0], o2 = o1 + q * 4 + dr[1], o3 = o2 + q * 2 + dr[2];
        int64_t o4 = o3 + q * 4 + dr[3], o5 = o4 + q * 2 + dr[4], o6 = o5 + q * 4 + dr[5];
        int64_t o7 = o6 + q * 6 + dr[6];
        uint8_t m0 = mk[0], m1 = mk[1], m2 = mk[2], m3 = mk[3];
        uint8_t m4 = mk[4], m5 = mk[5], m6 = mk[6], m7 = mk[7];
        for (int64_t end = n - o7; idx < end; idx += p) {
            uint8_t *t = s + idx;
            t[0] &= m0; t[o1] &= m1; t[o2] &= m2; t[o3] &= m3;
            t[o4] &= m4; t[o5] &= m5; t[o6] &= m6; t[o7] &= m7;
        }
        while (idx < n) {
            s[idx] &= mk[wi];
            idx += q * (W[wi + 1] - W[wi]) + dr[wi];
            wi = (wi + 1) & 7;
        }
    }
    *wi_io = (uint8_t)wi;
    return idx;
}

/* The presieve pattern: length bytes with the multiples of 7..19 crossed off. */
void sieve_pattern(uint8_t *pattern, int64_t length) {
    static const int64_t small[5] = {7, 11, 13, 17, 19};
    memset(pattern, 0xFF, (size_t)length);
    for (int i = 0; i < 5; i++) {
        uint8_t wi = 0;
        cross(pattern, length, small[i], 0, &wi);
    }
}

/* The primes 23 <= p <= root, written to out when it is not NULL; returns their number. */
int64_t sieve_primes(int64_t root, uint32_t *out) {
    int64_t count = 0;
    if (root < 23) return 0;
    uint8_t *composite = calloc((size_t)root + 1, 1);
    if (!composite) return -1;
    for (int64_t i = 2; i * i <= root; i++)
        if (!composite[i])
            for (int64_t j = i * i; j <= root; j += i) composite[j] = 1;
    for (int64_t i = 23; i <= root; i++)
        if (!composite[i]) {
            if (out) out[count] = (uint32_t)i;
            count++;
        }
    free(composite);
    return count;
}

/* Each prime's first multiple p*m >= max(p*p, 30*start) with m coprime to 30. */
void sieve_start(int64_t n_primes, const uint32_t *primes, int64_t *next, uint8_t *wheel,
                 int64_t start) {
    for (int64_t i = 0; i < n_primes; i++) {
        int64_t p = primes[i], low = p * p > 30 * start ? p * p : 30 * start;
        int64_t m = (low + p - 1) / p, k = 0;
        while (W[k] < m % 30) k++; /* W[7] = 29 */
        next[i] = p * (m - m % 30 + W[k]) / 30;
        wheel[i] = (uint8_t)k;
    }
}

#define B1 0x6666666666666666ULL /* wheel indices {1,2,5,6}: W[k] has bit 1 set */
#define B2 0xCACACACACACACACAULL /* {1,3,6,7}: bit 2 */
#define B3 0x8C8C8C8C8C8C8C8CULL /* {2,3,7}: bit 3 */
#define B4 0xF0F0F0F0F0F0F0F0ULL /* {4,5,6,7}: bit 4 */

/* Count the set bits of n words and add up their byte indices (from base) and residues. */
POPCNT_CLONES static void summarise(const uint64_t *words, int64_t n, int64_t base, int64_t *out) {
    int64_t count = 0, s1 = 0, s2 = 0;
    for (int64_t w = 0; w < n; w++) {
        uint64_t x = words[w];
        int64_t c = __builtin_popcountll(x);
        count += c;
        s1 += (base + 8 * w) * c + __builtin_popcountll(x & 0xFF00FF00FF00FF00ULL)
              + 2 * __builtin_popcountll(x & 0xFFFF0000FFFF0000ULL)
              + 4 * __builtin_popcountll(x & 0xFFFFFFFF00000000ULL);
        s2 += c + 2 * __builtin_popcountll(x & B1) + 4 * __builtin_popcountll(x & B2)
              + 8 * __builtin_popcountll(x & B3) + 16 * __builtin_popcountll(x & B4);
    }
    out[0] += count, out[1] += s1, out[2] += s2;
}

/* Sieve the bytes [lo, hi) in segments of seg_bytes, keeping the numbers in
   (last_checked, limit]; out gets count, sum of (byte - lo) and of residues per prime, and the
   largest prime (0 if none); up to values_cap primes are written to values. */
int64_t sieve_block(const uint8_t *pattern, int64_t n_primes, const uint32_t *primes,
                    int64_t *next, uint8_t *wheel, uint64_t *buffer, int64_t seg_bytes,
                    int64_t lo, int64_t hi, int64_t last_checked, int64_t limit, int64_t *out,
                    int64_t *values, int64_t values_cap) {
    uint8_t *seg = (uint8_t *)buffer;
    int64_t active = 0, n_values = 0;
    out[0] = out[1] = out[2] = out[3] = 0;
    for (int64_t a = lo, b; a < hi; a = b) {
        b = a + seg_bytes < hi ? a + seg_bytes : hi;
        int64_t n = b - a, padded = (n + 7) & ~(int64_t)7;
        memcpy(seg, pattern + a % PERIOD, (size_t)n);
        memset(seg + n, 0, (size_t)(padded - n));
        if (a == 0) seg[0] = 0xFE; /* 1 is not prime; 7..19 are */
        while (active < n_primes && (int64_t)primes[active] * primes[active] < 30 * b) active++;
        for (int64_t i = 0; i < active; i++)
            if (next[i] < b) next[i] = a + cross(seg, n, primes[i], next[i] - a, &wheel[i]);
        for (int k = 0; k < 8; k++) {
            if (30 * a + W[k] <= last_checked) seg[0] &= (uint8_t)~(1u << k);
            if (30 * (b - 1) + W[k] > limit) seg[n - 1] &= (uint8_t)~(1u << k);
        }
        summarise(buffer, padded / 8, a - lo, out);
        for (int64_t w = padded / 8 - 1; w >= 0; w--)
            if (buffer[w]) {
                int bit = 63 - __builtin_clzll(buffer[w]);
                out[3] = 30 * (a + 8 * w + bit / 8) + W[bit % 8];
                break;
            }
        for (int64_t j = 0; values && j < n; j++)
            for (int k = 0; k < 8; k++)
                if (seg[j] >> k & 1 && n_values < values_cap)
                    values[n_values++] = 30 * (a + j) + W[k];
    }
    return n_values;
}
"""
