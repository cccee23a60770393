"""The KEN rule as compiled per-row kernels (numba), parallel over rows: the CPU path.

Each row is sorted once. The density at a grid point is summed only over the sorted values
within a window of a few bandwidths (the kernel is below ``exp(-WINDOW_EXPONENT)`` beyond it)
with a fast polynomial ``exp``; the error of that sum is bounded, and a grid point whose density
lies within the bound of a half-integer (where rounding could go either way) is recomputed with
the reference arithmetic (every value, in row order, NumPy's pairwise summation). The greedy
claim walks the grid points with "next free entry" pointers over the sorted row.
See docs/selection.md ("The rule", and how this computes it).
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Kernel terms below ``exp(-WINDOW_EXPONENT)`` are left out of the fast density sum. The fast
#: exp is accurate only on ``[-12, 0]``, so windows can be narrower than this, never wider.
WINDOW_EXPONENT = 12.0
#: Bound on the relative error of the fast sum's terms: the polynomial exp is within 1.4e-7
#: (Taylor remainder ``0.1875**7 / 7!`` on ``exp(-z/64)``, times 64 for the squarings).
FAST_RELATIVE_ERROR = 1e-6

_SQRT_2PI = math.sqrt(2.0 * math.pi)


@numba.njit(cache=True, fastmath=True)
def _fast_window_sum(sorted_x: np.ndarray, lo: int, hi: int, g: float, a: float) -> float:
    """``Σ exp(-a (g - x)²)`` over ``sorted_x[lo:hi]``; each term within ~1.2e-7 relative while
    ``a (g - x)² <= 12``.

    ``exp(-z) = exp(-z/64) ** 64`` with a degree-6 Taylor polynomial on ``[-0.19, 0]``: no calls,
    no tables, so the loop vectorises.
    """
    total = 0.0
    for j in range(lo, hi):
        d = g - sorted_x[j]
        u = d * d * a * (-1.0 / 64.0)
        p = 1.0 + u * (1.0 + u * (1.0 / 2.0 + u * (1.0 / 6.0 + u * (1.0 / 24.0 + u * (1.0 / 120.0 + u / 720.0)))))
        p = p * p
        p = p * p
        p = p * p
        p = p * p
        p = p * p
        p = p * p
        total += p
    return total


@numba.njit(cache=True)
def _block_sum(values: np.ndarray, start: int, count: int) -> float:
    """NumPy's pairwise summation of at most 128 values: 8 interleaved partial sums."""
    if count < 8:
        total = 0.0
        for i in range(start, start + count):
            total += values[i]
        return total
    r0, r1, r2, r3 = values[start], values[start + 1], values[start + 2], values[start + 3]
    r4, r5, r6, r7 = values[start + 4], values[start + 5], values[start + 6], values[start + 7]
    i = 8
    while i < count - count % 8:
        b = start + i
        r0 += values[b]
        r1 += values[b + 1]
        r2 += values[b + 2]
        r3 += values[b + 3]
        r4 += values[b + 4]
        r5 += values[b + 5]
        r6 += values[b + 6]
        r7 += values[b + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < count:
        total += values[start + i]
        i += 1
    return total


@numba.njit(cache=True)
def _pairwise_sum(values: np.ndarray) -> float:
    """``np.sum(values)`` bit for bit: NumPy's pairwise summation (blocks of <= 128, halves
    rounded down to a multiple of 8), with an explicit stack (numba cannot cache recursion)."""
    starts = np.empty(64, dtype=np.int64)
    counts = np.empty(64, dtype=np.int64)
    phases = np.zeros(64, dtype=np.int64)
    lefts = np.empty(64)
    starts[0], counts[0] = 0, values.shape[0]
    top = 0
    result = 0.0
    while top >= 0:
        start, count = starts[top], counts[top]
        if count <= 128:
            result = _block_sum(values, start, count)
            top -= 1
            continue
        half = count // 2
        half -= half % 8
        if phases[top] == 0:
            phases[top] = 1
            top += 1
            starts[top], counts[top], phases[top] = start, half, 0
        elif phases[top] == 1:
            lefts[top] = result
            phases[top] = 2
            top += 1
            starts[top], counts[top], phases[top] = start + half, count - half, 0
        else:
            result = lefts[top] + result
            top -= 1
    return result


@numba.njit(cache=True)
def _reference_density(x: np.ndarray, g: float, h: float, terms: np.ndarray) -> float:
    """The density at ``g`` in the reference arithmetic: every value, in row order."""
    n = x.shape[0]
    for j in range(n):
        q = (g - x[j]) / h
        terms[j] = math.exp(-0.5 * (q * q))
    return (1.0 / (n * h * _SQRT_2PI)) * _pairwise_sum(terms)


@numba.njit(cache=True)
def _round_half_even(value: float) -> float:
    return np.rint(value)


@numba.njit(cache=True)
def row_levels(
    x: np.ndarray,
    sorted_x: np.ndarray,
    grid: np.ndarray,
    h: float,
    window_exponent: float,
    relative_error: float,
    levels: np.ndarray,
    terms: np.ndarray,
) -> int:
    """Fill ``levels`` with ``round(f(g))`` per grid point; returns how many were rechecked."""
    n = x.shape[0]
    scale = 1.0 / (n * h * _SQRT_2PI)
    a = 0.5 / (h * h)
    reach = h * math.sqrt(2.0 * window_exponent)
    # A left-out term is at most exp(-window_exponent) (1 % slack for the rounding of ``reach``).
    dropped_term = math.exp(-window_exponent * 0.99)
    lo = 0
    hi = 0
    rechecked = 0
    for i in range(grid.shape[0]):
        g = grid[i]
        while lo < n and sorted_x[lo] < g - reach:
            lo += 1
        if hi < lo:
            hi = lo
        while hi < n and sorted_x[hi] <= g + reach:
            hi += 1
        total = _fast_window_sum(sorted_x, lo, hi, g, a)
        density = scale * total
        bound = scale * (relative_error * total + (n - (hi - lo)) * dropped_term) + 1e-12 * (density + 1.0)
        level = math.floor(density + 0.5)
        if abs(density - (level - 0.5)) <= bound or abs(density - (level + 0.5)) <= bound:
            density = _reference_density(x, g, h, terms)
            level = _round_half_even(density)
            rechecked += 1
        levels[i] = level
    return rechecked


@numba.njit(cache=True)
def _find(pointer: np.ndarray, slot: int) -> int:
    """Follow ``pointer`` from ``slot`` to a fixed point, halving the path on the way."""
    while pointer[slot] != slot:
        parent = pointer[slot]
        pointer[slot] = pointer[parent]
        slot = pointer[parent]
    return slot


@numba.njit(cache=True)
def row_claim(
    sorted_x: np.ndarray,
    original_index: np.ndarray,
    grid: np.ndarray,
    order: np.ndarray,
    claimed: np.ndarray,
) -> None:
    """The greedy claim on one sorted row; sets ``claimed[p]`` for the claimed sorted positions.

    Equal values sit together, ordered by original index, and the rule always claims the lowest
    free index of a group, so a group's claimed members are a prefix of it: the first free
    position at or after a group's start is its lowest free index. ``right[p]`` leads to the
    first free position ``>= p`` (``n``: none); ``left[s]`` to the last free slot ``<= s``, slot
    ``s`` standing for position ``s - 1`` (slot 0: none).
    """
    n = sorted_x.shape[0]
    right = np.arange(n + 1)
    left = np.arange(n + 1)
    group_start = np.empty(n, dtype=np.int64)
    group_end = np.empty(n, dtype=np.int64)
    for p in range(n):
        group_start[p] = group_start[p - 1] if p > 0 and sorted_x[p] == sorted_x[p - 1] else p
    for p in range(n - 1, -1, -1):
        group_end[p] = group_end[p + 1] if p < n - 1 and sorted_x[p] == sorted_x[p + 1] else p
    for step in range(order.shape[0]):
        g = grid[order[step]]
        p = np.searchsorted(sorted_x, g)
        r = _find(right, p)
        left_slot = _find(left, p)
        if r == n and left_slot == 0:
            return
        right_distance = math.inf
        right_index = n
        if r < n:
            right_distance = sorted_x[r] - g
            right_index = original_index[r]
            # Distinct values farther right can round to the same distance: the lowest index wins.
            current = r
            while True:
                following = _find(right, group_end[current] + 1)
                if following == n or sorted_x[following] - g != right_distance:
                    break
                if original_index[following] < right_index:
                    r = following
                    right_index = original_index[following]
                current = following
        left_distance = math.inf
        left_index = n
        l = -1  # noqa: E741
        if left_slot > 0:
            l = _find(right, group_start[left_slot - 1])  # noqa: E741
            left_distance = g - sorted_x[l]
            left_index = original_index[l]
            current = l
            while True:
                preceding_slot = _find(left, group_start[current])
                if preceding_slot == 0:
                    break
                preceding = _find(right, group_start[preceding_slot - 1])
                if g - sorted_x[preceding] != left_distance:
                    break
                if original_index[preceding] < left_index:
                    l = preceding  # noqa: E741
                    left_index = original_index[preceding]
                current = preceding
        if left_distance < right_distance or (left_distance == right_distance and left_index < right_index):
            target = l
        else:
            target = r
        claimed[target] = True
        right[target] = target + 1
        left[target + 1] = target


@numba.njit(cache=True)
def linspace(low: float, high: float, k: int, out: np.ndarray) -> None:
    """``numpy.linspace(low, high, k)`` in float64, NumPy's arithmetic."""
    if k == 1:
        out[0] = low
        return
    step = (high - low) / (k - 1)
    for i in range(k):
        out[i] = i * step + low
    out[k - 1] = high


@numba.njit(cache=True)
def kept_row(x: np.ndarray, h: float, k: int, window_exponent: float, relative_error: float, mask: np.ndarray) -> int:
    """KEN's kept mask of one float64 row (``mask`` is written); returns how many levels were rechecked."""
    n = x.shape[0]
    if k >= n or h == 0.0 or not math.isfinite(h):
        mask[:] = True
        return 0
    original_index = np.argsort(x, kind="mergesort")
    sorted_x = x[original_index]
    grid = np.empty(k)
    linspace(sorted_x[0], sorted_x[n - 1], k, grid)
    levels = np.empty(k)
    terms = np.empty(n)
    rechecked = row_levels(x, sorted_x, grid, h, window_exponent, relative_error, levels, terms)
    order = np.argsort(-levels, kind="mergesort")
    claimed = np.zeros(n, dtype=np.bool_)
    row_claim(sorted_x, original_index, grid, order, claimed)
    start = 0
    for p in range(n):
        if p > 0 and sorted_x[p] != sorted_x[p - 1]:
            start = p
        mask[original_index[p]] = claimed[start]
    return rechecked


@numba.njit(cache=True, parallel=True)
def _kept_rows(
    rows: np.ndarray, h: np.ndarray, k: int, window_exponent: float, relative_error: float, mask: np.ndarray
) -> int:
    rechecked = 0
    for r in numba.prange(rows.shape[0]):
        rechecked += kept_row(rows[r], h[r], k, window_exponent, relative_error, mask[r])
    return rechecked


def kept_rows(
    rows: np.ndarray,
    h: np.ndarray,
    k: int,
    mask: np.ndarray,
    *,
    window_exponent: float = WINDOW_EXPONENT,
    relative_error: float = FAST_RELATIVE_ERROR,
) -> int:
    """Write KEN's kept mask of every row of a finite float64 ``[rows, n]`` array into ``mask``.

    ``h`` holds the rows' bandwidths. Rows run in parallel on numba's threads. Returns how many
    grid points needed the reference re-check (``window_exponent``/``relative_error`` are the
    fast sum's window and error bound, parameters only so that tests can stress the re-check).
    """
    if not 0 < window_exponent <= WINDOW_EXPONENT:
        raise ValueError(f"window_exponent must be in (0, {WINDOW_EXPONENT}], got {window_exponent}")
    return int(_kept_rows(rows, h, k, float(window_exponent), float(relative_error), mask))
