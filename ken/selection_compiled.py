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
#: The binned moments are used for rows whose bins are at most this many bandwidths wide (each
#: way) and whose Taylor remainder bound on the density is at most ``MAX_BINNED_BOUND``; other rows
#: would leave too many levels undecided.
MAX_BIN_HALF_WIDTH = 0.3
MAX_BINNED_BOUND = 0.05

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
def _binned_densities(
    sorted_x: np.ndarray, grid: np.ndarray, h: float, window_exponent: float, density: np.ndarray, bound: np.ndarray
) -> bool:
    """Densities at the grid points from per-bin moments, with a bound on each one's error.

    Every value goes to the bin of its nearest grid point ``g_b``; with ``e = (x - g_b)/h`` and
    ``u = (g_i - g_b)/h``, ``exp(-(u - e)²/2) = exp(-u²/2) Σ_m e^m He_m(u)/m!`` (Hermite
    polynomials), kept to ``m = 3``: the remainder is at most ``3 e⁴/4!`` per value. Grid points
    are evenly spaced, so ``u`` depends only on ``i - b`` and each density is a short convolution
    of four moment arrays with four fixed weight arrays: no exp per value. Returns False (nothing
    written) where bins are too wide for the bound to decide most levels.
    """
    n = sorted_x.shape[0]
    k = grid.shape[0]
    if k < 2:
        return False
    step = (grid[k - 1] - grid[0]) / (k - 1)
    # step = 0: equal values whose float32 std still rounds above 0 (no bins to speak of)
    if step == 0.0 or 0.5 * step / h > MAX_BIN_HALF_WIDTH:
        return False
    scale = 1.0 / (n * h * _SQRT_2PI)
    moments = np.zeros((4, k))  # reversed: column k - 1 - b holds bin b
    fourth = 0.0
    for j in range(n):
        b = math.floor((sorted_x[j] - grid[0]) / step + 0.5)
        b = min(max(b, 0), k - 1)
        e = (sorted_x[j] - grid[b]) / h
        e2 = e * e
        c = k - 1 - b
        moments[0, c] += 1.0
        moments[1, c] += e
        moments[2, c] += e2
        moments[3, c] += e2 * e
        fourth += e2 * e2
    remainder = fourth / 8.0
    if scale * remainder > MAX_BINNED_BOUND:
        return False
    reach = h * math.sqrt(2.0 * window_exponent)
    # Bins more than ``taps`` grid steps away hold only values beyond ``reach`` (terms below
    # exp(-window_exponent)): their centres are more than reach + 2 steps away, their values within half a step.
    taps = math.ceil(reach / step) + 2
    weights = np.empty((4, 2 * taps + 1))
    for t in range(-taps, taps + 1):
        u = t * step / h
        kernel = math.exp(-0.5 * u * u)
        weights[0, t + taps] = kernel
        weights[1, t + taps] = kernel * u
        weights[2, t + taps] = kernel * (u * u - 1.0) / 2.0
        weights[3, t + taps] = kernel * (u * u * u - 3.0 * u) / 6.0
    counts = np.zeros(k + 1)  # counts[c]: values in reversed columns < c
    for c in range(k):
        counts[c + 1] = counts[c] + moments[0, c]
    # |g_i - g_b - (i - b) step| is a few ulps of the grid's magnitude; |d/du exp(-u²/2)| <= 0.61.
    position_error = 0.61 * 1e-15 * (abs(grid[0]) + abs(grid[k - 1]) + 2.0 * taps * step) / h
    dropped_term = math.exp(-window_exponent * 0.99)
    for i in range(k):
        first = max(-taps, i - (k - 1))
        last = min(taps, i)
        total = 0.0
        offset = k - 1 - i
        for t in range(first, last + 1):
            c = offset + t
            w = t + taps
            total += (
                weights[0, w] * moments[0, c]
                + weights[1, w] * moments[1, c]
                + weights[2, w] * moments[2, c]
                + weights[3, w] * moments[3, c]
            )
        inside = counts[offset + last + 1] - counts[offset + first]
        density[i] = scale * total
        bound[i] = scale * (remainder + (n - inside) * dropped_term + n * (position_error + 1e-12))
    return True


@numba.njit(cache=True)
def _undecided(density: float, bound: float) -> bool:
    """Whether a half-integer lies within ``bound`` of ``density`` (rounding could go either way)."""
    nearest = math.floor(density) + 0.5
    return abs(density - nearest) <= bound


@numba.njit(cache=True)
def row_levels(
    x: np.ndarray,
    sorted_x: np.ndarray,
    grid: np.ndarray,
    h: float,
    window_exponent: float,
    relative_error: float,
    binned: bool,
    levels: np.ndarray,
    terms: np.ndarray,
    tally: np.ndarray,
) -> None:
    """Fill ``levels`` with ``round(f(g))`` per grid point, each from the first of three ways
    whose error bound decides it: binned moments (if ``binned``), the windowed fast sum, the
    reference arithmetic. ``tally[0..2]`` counts the grid points decided each way."""
    n = x.shape[0]
    k = grid.shape[0]
    coarse = np.empty(k)
    coarse_bound = np.empty(k)
    use_binned = binned and _binned_densities(sorted_x, grid, h, window_exponent, coarse, coarse_bound)
    scale = 1.0 / (n * h * _SQRT_2PI)
    a = 0.5 / (h * h)
    reach = h * math.sqrt(2.0 * window_exponent)
    # A left-out term is at most exp(-window_exponent) (1 % slack for the rounding of ``reach``).
    dropped_term = math.exp(-window_exponent * 0.99)
    for i in range(k):
        if use_binned and not _undecided(coarse[i], coarse_bound[i]):
            levels[i] = math.floor(coarse[i] + 0.5)
            tally[0] += 1
            continue
        g = grid[i]
        lo = np.searchsorted(sorted_x, g - reach)
        hi = np.searchsorted(sorted_x, g + reach, side="right")
        total = _fast_window_sum(sorted_x, lo, hi, g, a)
        density = scale * total
        bound = scale * (relative_error * total + (n - (hi - lo)) * dropped_term) + 1e-12 * (density + 1.0)
        if not _undecided(density, bound):
            levels[i] = math.floor(density + 0.5)
            tally[1] += 1
        else:
            levels[i] = _round_half_even(_reference_density(x, g, h, terms))
            tally[2] += 1


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
def kept_row(
    x: np.ndarray,
    h: float,
    k: int,
    window_exponent: float,
    relative_error: float,
    binned: bool,
    mask: np.ndarray,
    tally: np.ndarray,
) -> None:
    """KEN's kept mask of one float64 row into ``mask``; ``tally`` as in :func:`row_levels`."""
    n = x.shape[0]
    if k >= n or h == 0.0 or not math.isfinite(h):
        mask[:] = True
        return
    original_index = np.argsort(x, kind="mergesort")
    sorted_x = x[original_index]
    grid = np.empty(k)
    linspace(sorted_x[0], sorted_x[n - 1], k, grid)
    levels = np.empty(k)
    terms = np.empty(n)
    row_levels(x, sorted_x, grid, h, window_exponent, relative_error, binned, levels, terms, tally)
    order = np.argsort(-levels, kind="mergesort")
    claimed = np.zeros(n, dtype=np.bool_)
    row_claim(sorted_x, original_index, grid, order, claimed)
    start = 0
    for p in range(n):
        if p > 0 and sorted_x[p] != sorted_x[p - 1]:
            start = p
        mask[original_index[p]] = claimed[start]


@numba.njit(cache=True, parallel=True)
def _kept_rows(
    rows: np.ndarray,
    h: np.ndarray,
    k: int,
    window_exponent: float,
    relative_error: float,
    binned: bool,
    mask: np.ndarray,
    tally: np.ndarray,
) -> None:
    for r in numba.prange(rows.shape[0]):
        kept_row(rows[r], h[r], k, window_exponent, relative_error, binned, mask[r], tally[r])


def kept_rows(
    rows: np.ndarray,
    h: np.ndarray,
    k: int,
    mask: np.ndarray,
    *,
    window_exponent: float = WINDOW_EXPONENT,
    relative_error: float = FAST_RELATIVE_ERROR,
    binned: bool = True,
) -> np.ndarray:
    """Write KEN's kept mask of every row of a finite float64 ``[rows, n]`` array into ``mask``.

    ``h`` holds the rows' bandwidths. Rows run in parallel on numba's threads. Returns how many
    grid points were decided by the binned moments, by the windowed fast sum and by the reference
    re-check. ``window_exponent``, ``relative_error`` and ``binned`` are parameters only so that
    tests can stress the bounds and the re-check.
    """
    if not 0 < window_exponent <= WINDOW_EXPONENT:
        raise ValueError(f"window_exponent must be in (0, {WINDOW_EXPONENT}], got {window_exponent}")
    tally = np.zeros((rows.shape[0], 3), dtype=np.int64)
    _kept_rows(rows, h, k, float(window_exponent), float(relative_error), bool(binned), mask, tally)
    return tally.sum(axis=0)
