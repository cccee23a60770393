"""The compiled CPU kernels: the binned and the windowed fast densities, their error bounds and
the exact re-check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ken import selection_compiled
from ken.selection_bandwidth import bandwidth
from tests.ken.reference_selection import reference_bandwidth, reference_density, reference_kept, reference_kept_row


def kept(matrix: np.ndarray, k: int, **bounds: float) -> tuple[np.ndarray, np.ndarray]:
    """The compiled kernels' mask of a float32 matrix, and how many grid points were decided by
    the binned moments, the windowed sum and the re-check."""
    mask = np.empty(matrix.shape, dtype=np.bool_)
    tally = selection_compiled.kept_rows(
        matrix.astype(np.float64), bandwidth(matrix.astype(np.float32)), k, mask, **bounds
    )
    return mask, tally


def grid_of(row: np.ndarray, k: int) -> np.ndarray:
    x = row.astype(np.float64)
    return np.linspace(x.min(), x.max(), k)


def distance_to_half_integer(value: float) -> float:
    return abs(value - (np.floor(value) + 0.5))


@st.composite
def adversarial_rows(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """Rows built to hit the corners: few distinct values (ties at equal distances), symmetric
    values around grid points, one outlier far away (narrow windows), huge/tiny magnitudes and
    large offsets with a small spread."""
    n = draw(st.integers(2, 40))
    kind = draw(st.sampled_from(["few", "integers", "outlier", "scaled"]))
    if kind == "few":
        row = np.array(draw(st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0]), min_size=n, max_size=n)))
    elif kind == "integers":
        row = np.array(draw(st.lists(st.integers(-6, 6), min_size=n, max_size=n)), dtype=np.float64)
    elif kind == "outlier":
        row = np.array(draw(st.lists(st.floats(-1, 1, width=32), min_size=n, max_size=n)))
        row[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1e3, 50.0, 1e4]))
    else:
        base = draw(arrays(np.float32, n, elements=st.floats(-1, 1, width=32)))
        scale = draw(st.sampled_from([1e-38, 1e-30, 1e-6, 1.0, 1e6, 1e30]))
        offset = draw(st.sampled_from([0.0, 1.0, -1e3, 1e6]))
        row = base.astype(np.float64) * scale + offset * (scale if scale > 1 else 1.0)
    k = draw(st.integers(1, n + 3))
    with np.errstate(over="ignore"):
        return row.astype(np.float32), k


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adversarial_rows())
def test_adversarial_rows_match_reference(case: tuple[np.ndarray, int]) -> None:
    row, k = case
    mask, _ = kept(row[None, :], k)
    np.testing.assert_array_equal(mask[0], reference_kept_row(row, k))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adversarial_rows())
def test_recheck_of_every_grid_point_matches_reference(case: tuple[np.ndarray, int]) -> None:
    """An error bound this loose sends every level that has values in its window (the row's
    minimum always has) through the reference-arithmetic re-check."""
    row, k = case
    mask, tally = kept(row[None, :], k, relative_error=1e30, binned=False)
    np.testing.assert_array_equal(mask[0], reference_kept_row(row, k))
    h = reference_bandwidth(row)
    if k < len(row) and h > 0 and np.isfinite(h):
        assert tally[2] >= 1


@pytest.mark.parametrize("window_exponent", [0.05, 0.5, 2.0, 12.0])
def test_any_window_gives_the_reference_selection(window_exponent: float) -> None:
    """Narrow windows leave out terms that matter; the bound counts them, and the re-check repairs
    the levels it makes uncertain (a bound that forgot them would select differently here)."""
    gen = np.random.default_rng(7)
    matrix = (gen.standard_t(2, size=(24, 48)) * 0.05).astype(np.float32)  # heavy tails
    for binned in (False, True):
        mask, tally = kept(matrix, 12, window_exponent=window_exponent, binned=binned)
        np.testing.assert_array_equal(mask, reference_kept(matrix, 12))
        if window_exponent < 1 and not binned:
            assert tally[2] > 0


def test_narrow_window_without_recheck_would_be_wrong() -> None:
    """The window really truncates: summed over a 0.05-bandwidth window, levels come out wrong,
    so the agreement above is the re-check's doing."""
    gen = np.random.default_rng(7)
    matrix = (gen.standard_t(2, size=(24, 48)) * 0.05).astype(np.float32)
    x = matrix[0].astype(np.float64)
    h = reference_bandwidth(matrix[0])
    grid = grid_of(matrix[0], 12)
    levels = np.empty(12)
    terms = np.empty(48)
    tally = np.zeros(3, dtype=np.int64)
    selection_compiled.row_levels(x, np.sort(x), grid, h, 0.05, 0.0, False, levels, terms, tally)
    np.testing.assert_array_equal(levels, np.round(reference_density(x, grid, h)))
    assert tally[2] > 0
    reach = h * np.sqrt(0.1)
    inside = np.abs(grid[:, None] - x[None, :]) <= reach
    truncated = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / h) ** 2) * inside
    truncated_levels = np.round(truncated.sum(1) / (48 * h * np.sqrt(2 * np.pi)))
    assert (truncated_levels != levels).any()


def near_half_integer_row(seed: int) -> tuple[np.ndarray, int, float]:
    """A float32 row whose density at one grid point lies within ~1e-7 (relative) of a
    half-integer, where the fast sum's error bound cannot decide the rounding.

    Scaling a row by ``c`` divides its densities by ``c``; a few scales around the one that puts
    the densest grid point on ``m + 1/2`` are tried and the closest kept.
    """
    gen = np.random.default_rng(seed)
    row = (gen.standard_normal(64) * 0.05).astype(np.float32)
    k = 10
    density = reference_density(row.astype(np.float64), grid_of(row, k), reference_bandwidth(row))
    i = int(np.argmax(density))
    target = np.floor(density[i]) + 0.5
    best = (np.inf, row)
    for step in range(-200, 200):
        scaled = (row.astype(np.float64) * (density[i] / target) * (1 + step * 1e-8)).astype(np.float32)
        value = reference_density(scaled.astype(np.float64), grid_of(scaled, k), reference_bandwidth(scaled))[i]
        best = min(best, (distance_to_half_integer(value) / value, scaled), key=lambda pair: pair[0])
    return best[1], k, best[0]


@pytest.mark.parametrize("seed", range(4))
def test_densities_at_a_half_integer_are_rechecked(seed: int) -> None:
    row, k, closeness = near_half_integer_row(seed)
    assert closeness < selection_compiled.FAST_RELATIVE_ERROR
    for binned in (False, True):
        mask, tally = kept(row[None, :], k, binned=binned)
        assert tally[2] >= 1
        np.testing.assert_array_equal(mask[0], reference_kept_row(row, k))


def test_pairwise_sum_is_numpy_sum_bit_for_bit() -> None:
    gen = np.random.default_rng(8)
    for n in [*range(1, 300), 1000, 1536, 3072, 30_522]:
        values = gen.random(n) * gen.random() * 10.0 ** gen.integers(-30, 30)
        assert selection_compiled._pairwise_sum(values) == values.sum(), n


@pytest.mark.parametrize("k", [1, 2, 3, 50, 100, 257])
def test_grid_is_numpy_linspace_bit_for_bit(k: int) -> None:
    gen = np.random.default_rng(k)
    for _ in range(50):
        low, high = np.sort(gen.standard_normal(2) * 10.0 ** gen.integers(-20, 20))
        out = np.empty(k)
        selection_compiled.linspace(low, high, k, out)
        np.testing.assert_array_equal(out, np.linspace(low, high, k))


@pytest.mark.parametrize("binned", [False, True])
def test_rows_run_in_parallel_and_match_row_by_row(binned: bool) -> None:
    gen = np.random.default_rng(9)
    matrix = (gen.standard_normal((64, 96)) * 0.04).astype(np.float32)
    matrix[::7, :40] = matrix[::7, :1]  # rows with many duplicates
    mask, tally = kept(matrix, 25, binned=binned)
    np.testing.assert_array_equal(mask, reference_kept(matrix, 25))
    assert (tally[0] > tally[1]) == binned  # the binned moments decide most levels when used


def test_equal_values_with_a_nonzero_float32_std() -> None:
    """Six equal values whose float32 mean rounds off, so h > 0 while the grid has zero width."""
    row = np.full(6, 1.07120109, dtype=np.float32)
    assert reference_bandwidth(row) > 0
    for binned in (False, True):
        mask, _ = kept(row[None, :], 2, binned=binned)
        np.testing.assert_array_equal(mask[0], reference_kept_row(row, 2))


@pytest.mark.parametrize("tails", ["normal", "t3", "uniform", "duplicates"])
def test_binned_densities_are_within_their_bound(tails: str) -> None:
    """The binned densities' error bound holds against the reference density and is tight
    enough to decide levels."""
    gen = np.random.default_rng(11)
    for _ in range(20):
        n, k = int(gen.integers(50, 800)), int(gen.integers(20, 120))
        if tails == "normal":
            row = gen.standard_normal(n)
        elif tails == "t3":
            row = gen.standard_t(3, n)
        elif tails == "uniform":
            row = gen.random(n)
        else:
            row = gen.integers(-20, 20, n) * 0.1
        row = (row * 10.0 ** gen.integers(-3, 2)).astype(np.float32)
        x = row.astype(np.float64)
        h = reference_bandwidth(row)
        grid = grid_of(row, k)
        density, bound = np.empty(k), np.empty(k)
        if selection_compiled._binned_densities(np.sort(x), grid, h, 12.0, density, bound):
            error = np.abs(density - reference_density(x, grid, h))
            assert (error <= bound).all()
            assert bound.max() <= selection_compiled.MAX_BINNED_BOUND * 1.01


def test_recheck_density_is_the_reference_density_bit_for_bit() -> None:
    """Same operations in the same order, and numba's exp is the C library's, as NumPy's is on
    x86-64 without AVX-512 (docs/selection.md, "Exactness")."""
    gen = np.random.default_rng(10)
    for n in (5, 64, 384, 1536):
        row = (gen.standard_normal(n) * 0.05).astype(np.float32)
        x = row.astype(np.float64)
        h = reference_bandwidth(row)
        grid = grid_of(row, 20)
        expected = reference_density(x, grid, h)
        terms = np.empty(n)
        got = np.array([selection_compiled._reference_density(x, g, h, terms) for g in grid])
        np.testing.assert_array_equal(got, expected)
