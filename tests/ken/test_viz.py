"""KEN_viz: masks and neighbour counts against hand-written answers, and every view as a valid PNG."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ken
from ken import viz
from ken.subnetwork import SparseRows, Subnetwork, SubnetworkInfo
from tests.tiny_models import TinyPair

pytest.importorskip("matplotlib")
from matplotlib.image import imread

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEY0 = "encoder.layer.0.attention.self.key.weight"


def sparse(values: torch.Tensor, mask: torch.Tensor) -> SparseRows:
    """The SparseRows of ``values`` at ``mask`` (any shape; viewed as ``[shape[0], -1]``)."""
    rows = values.shape[0] if values.dim() > 1 else 1
    flat_mask, flat_values = mask.reshape(rows, -1), values.reshape(rows, -1)
    indptr = torch.zeros(rows + 1, dtype=torch.int64)
    indptr[1:] = flat_mask.sum(dim=1).cumsum(0)
    r, c = flat_mask.nonzero(as_tuple=True)
    return SparseRows(tuple(values.shape), indptr, c.to(torch.int32).to(torch.uint16), flat_values[r, c].float())


def subnetwork(deltas: dict[str, SparseRows], selected: dict[str, int] | None = None) -> Subnetwork:
    info = SubnetworkInfo(backbone_fingerprint="test", method="ken", k=3, selected=selected or {})
    return Subnetwork(deltas=deltas, head={}, info=info)


def check_png(path: Path) -> tuple[int, ...]:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    shape = imread(path).shape
    assert shape[0] > 50 and shape[1] > 50
    return shape


@pytest.fixture(scope="module")
def bert_sub(tiny_bert: TinyPair) -> Subnetwork:
    return ken.extract(tiny_bert.base, tiny_bert.finetuned, k=8, progress=False)


@pytest.fixture(scope="module")
def pattern_sub() -> Subnetwork:
    """Two 'layers' of a 12 x 20 key matrix, a bias, a large embedding, and an untouched layer 2."""
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(12, 20, generator=gen)
    mask0 = torch.rand(12, 20, generator=gen) < 0.3
    mask1 = torch.zeros(12, 20, dtype=torch.bool)
    mask1[2:6, 3:9] = True
    emb_mask = torch.zeros(3000, 16, dtype=torch.bool)
    emb_mask[:500] = torch.rand(500, 16, generator=gen) < 0.5
    deltas = {
        "embeddings.word_embeddings.weight": sparse(torch.randn(3000, 16, generator=gen), emb_mask),
        "encoder.layer.0.attention.self.key.weight": sparse(values, mask0),
        "encoder.layer.0.attention.self.key.bias": sparse(values[0], mask0[0]),
        "encoder.layer.1.attention.self.key.weight": sparse(-values, mask1),
    }
    selected = {name: d.nnz for name, d in deltas.items()} | {"encoder.layer.2.attention.self.key.weight": 0}
    return subnetwork(deltas, selected)


# --- kept_matrix ----------------------------------------------------------------------------


def test_kept_matrix_matches_the_stored_csr_entries(bert_sub: Subnetwork) -> None:
    assert bert_sub.deltas
    for name, delta in bert_sub.deltas.items():
        mask = viz.kept_matrix(bert_sub, name)
        assert mask.dtype == torch.bool and tuple(mask.shape) == (delta.rows, delta.cols)
        assert int(mask.sum()) == delta.nnz
        for r in range(delta.rows):
            expected = delta.indices[delta.indptr[r] : delta.indptr[r + 1]].to(torch.int64)
            assert torch.equal(mask[r].nonzero().flatten(), expected), (name, r)


def test_kept_matrix_hand_built_and_one_dimensional() -> None:
    mask = torch.tensor([[True, False, False], [False, False, True]])
    bias_mask = torch.tensor([False, True, True, False])
    sub = subnetwork({"w": sparse(torch.ones(2, 3), mask), "b": sparse(torch.ones(4), bias_mask)})
    assert torch.equal(viz.kept_matrix(sub, "w"), mask)
    assert torch.equal(viz.kept_matrix(sub, "b"), bias_mask.reshape(1, 4))


def test_kept_matrix_accepts_the_task_models_prefixed_name(bert_sub: Subnetwork) -> None:
    prefix = bert_sub.info.base_prefix
    assert prefix == "bert."
    assert torch.equal(viz.kept_matrix(bert_sub, prefix + KEY0), viz.kept_matrix(bert_sub, KEY0))


def test_unknown_tensor_names_the_tensor_and_suggests_names(bert_sub: Subnetwork) -> None:
    with pytest.raises(KeyError) as info:
        viz.kept_matrix(bert_sub, "encoder.layer.0.attention.self.kei.weight")
    message = str(info.value)
    assert "'encoder.layer.0.attention.self.kei.weight' is not in the subnetwork" in message
    assert KEY0 in message
    with pytest.raises(KeyError, match=r"'no\.such\.tensor' is not in the subnetwork"):
        viz.plot_matrix(bert_sub, "no.such.tensor", Path("/nonexistent/x.png"))


def test_a_considered_tensor_that_stores_nothing_says_so(pattern_sub: Subnetwork) -> None:
    with pytest.raises(viz.MissingTensor, match="stores no entries"):
        viz.kept_matrix(pattern_sub, "encoder.layer.2.attention.self.key.weight")


# --- neighbour counts -----------------------------------------------------------------------


def grid(text: str) -> torch.Tensor:
    return torch.tensor([[ch == "#" for ch in line.split()[0]] for line in text.strip().splitlines()])


NEIGHBOUR_CASES = {
    "full 3x3 block": (grid("###\n###\n###"), [[2, 3, 2], [3, 4, 3], [2, 3, 2]]),
    "isolated centre": (grid("...\n.#.\n..."), [[-1, -1, -1], [-1, 0, -1], [-1, -1, -1]]),
    "corners only": (grid("#.#\n...\n#.#"), [[0, -1, 0], [-1, -1, -1], [0, -1, 0]]),
    "2x2 block in a corner": (
        grid("##..\n##..\n....\n...#"),
        [[2, 2, -1, -1], [2, 2, -1, -1], [-1, -1, -1, -1], [-1, -1, -1, 0]],
    ),
    "edges and a plus": (
        grid(".#...\n###..\n.#..#\n....#"),
        [[-1, 1, -1, -1, -1], [1, 4, 1, -1, -1], [-1, 1, -1, -1, 1], [-1, -1, -1, -1, 1]],
    ),
    "one row": (grid("##.#"), [[1, 1, -1, 0]]),
    "one column": (grid("#\n#\n.\n#"), [[1], [1], [-1], [0]]),
}


@pytest.mark.parametrize("case", list(NEIGHBOUR_CASES))
def test_neighbour_counts_hand_written(case: str) -> None:
    mask, expected = NEIGHBOUR_CASES[case]
    counts = viz.neighbour_counts(mask)
    assert counts.dtype == torch.int8
    assert counts.tolist() == expected


def test_neighbour_counts_one_dimensional_keeps_its_shape() -> None:
    counts = viz.neighbour_counts(torch.tensor([True, True, False, True]))
    assert counts.shape == (4,) and counts.tolist() == [1, 1, -1, 0]


def test_neighbour_counts_matches_brute_force_on_random_masks() -> None:
    gen = torch.Generator().manual_seed(1)
    for rows, cols in ((1, 1), (7, 9), (13, 4)):
        mask = torch.rand(rows, cols, generator=gen) < 0.5
        expected = torch.full((rows, cols), -1, dtype=torch.int8)
        for r in range(rows):
            for c in range(cols):
                if mask[r, c]:
                    near = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
                    expected[r, c] = sum(bool(mask[i, j]) for i, j in near if 0 <= i < rows and 0 <= j < cols)
        assert torch.equal(viz.neighbour_counts(mask), expected)


def test_stored_neighbour_counts_match_the_dense_counts(bert_sub: Subnetwork) -> None:
    gen = torch.Generator().manual_seed(2)
    deltas = {
        f"m{i}": sparse(torch.ones(r, c), torch.rand(r, c, generator=gen) < 0.4)
        for i, (r, c) in enumerate([(1, 1), (9, 7), (4, 13), (1, 30)])
    }
    deltas["empty"] = sparse(torch.ones(3, 3), torch.zeros(3, 3, dtype=torch.bool))
    sub = subnetwork(deltas)
    for owner, name in [(sub, n) for n in deltas] + [(bert_sub, n) for n in bert_sub.deltas]:
        dense = viz.neighbour_counts(viz.kept_matrix(owner, name))
        stored = viz.stored_neighbour_counts(owner.deltas[name])
        assert torch.equal(stored, dense[dense >= 0]), name


def test_neighbour_counts_rejects_three_dimensions() -> None:
    with pytest.raises(ValueError, match="1-D or 2-D"):
        viz.neighbour_counts(torch.ones(2, 2, 2, dtype=torch.bool))


def test_random_neighbour_mean_exact_and_monte_carlo() -> None:
    full = sparse(torch.ones(3, 3), torch.ones(3, 3, dtype=torch.bool))
    assert viz.random_neighbour_mean(full) == pytest.approx(24 / 9)  # the full block's mean count
    per_row = np.array([2, 3, 0, 4])
    cols, samples = 6, 4000
    rng = np.random.default_rng(0)
    # Each sample: 4 rows with per_row[r] kept at random columns, then an empty separator row.
    ranks = rng.random((samples, 5, cols)).argsort(axis=2).argsort(axis=2)
    stacked = ranks < np.append(per_row, 0)[None, :, None]
    counts = viz.neighbour_counts(torch.from_numpy(stacked.reshape(-1, cols)))
    observed = float(counts[counts >= 0].float().mean())  # every sample keeps the same count
    mask = torch.from_numpy(np.arange(cols)[None, :] < per_row[:, None])
    expected = viz.random_neighbour_mean(sparse(torch.ones(4, cols), mask))
    assert observed == pytest.approx(expected, abs=0.02)


# --- names and retention --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "group", "kind"),
    [
        ("encoder.layer.3.attention.self.key.weight", "layer 3", "attention.self.key"),
        ("encoder.layer.11.output.dense.bias", "layer 11", "output.dense"),
        ("h.2.attn.c_attn.weight", "layer 2", "attn.c_attn"),
        ("model.layers.7.self_attn.k_proj.weight", "layer 7", "self_attn.k_proj"),
        ("embeddings.LayerNorm.weight", "embeddings", "embeddings.LayerNorm"),
        ("wte.weight", "wte", "wte"),
        ("pooler.dense.weight", "pooler", "pooler.dense"),
    ],
)
def test_split_name(name: str, group: str, kind: str) -> None:
    assert viz.split_name(name) == (group, kind)
    assert viz.layer_index(name) == (int(group.split()[1]) if group.startswith("layer ") else None)


def test_retention_table_counts_and_orders_groups(pattern_sub: Subnetwork) -> None:
    table = viz.retention_table(pattern_sub)
    assert list(table) == ["embeddings", "layer 0", "layer 1"]
    key0 = pattern_sub.deltas["encoder.layer.0.attention.self.key.weight"]
    bias0 = pattern_sub.deltas["encoder.layer.0.attention.self.key.bias"]
    assert table["layer 0"] == {"attention.self.key": (key0.nnz + bias0.nnz, 240 + 20)}
    assert table["layer 1"] == {"attention.self.key": (24, 240)}
    numels = {
        "pooler.dense.weight": 16,
        "encoder.layer.2.attention.self.key.weight": 240,
        "embeddings.word_embeddings.weight": 48000,
    }
    table = viz.retention_table(pattern_sub, numels)
    assert list(table) == ["embeddings", "layer 0", "layer 1", "layer 2", "pooler"]
    assert table["layer 2"] == {"attention.self.key": (0, 240)}
    assert table["pooler"] == {"pooler.dense": (0, 16)}


# --- the views as PNG files -----------------------------------------------------------------


def test_plot_matrix_writes_pngs(pattern_sub: Subnetwork, tmp_path: Path) -> None:
    name = "encoder.layer.0.attention.self.key.weight"
    check_png(viz.plot_matrix(pattern_sub, name, tmp_path / "values.png"))
    base = torch.zeros(12, 20)
    check_png(viz.plot_matrix(pattern_sub, name, tmp_path / "change.png", base=base))
    check_png(viz.plot_matrix(pattern_sub, "encoder.layer.0.attention.self.key.bias", tmp_path / "bias.png"))
    emb = "embeddings.word_embeddings.weight"
    check_png(viz.plot_matrix(pattern_sub, emb, tmp_path / "sub" / "share.png", max_side=64))
    check_png(viz.plot_matrix(pattern_sub, emb, tmp_path / "mean.png", max_side=64, block="mean"))
    with pytest.raises(ValueError, match="block must be"):
        viz.plot_matrix(pattern_sub, name, tmp_path / "bad.png", block="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base has"):
        viz.plot_matrix(pattern_sub, name, tmp_path / "bad.png", base=torch.zeros(3))


def test_block_downsampling_shares_and_means() -> None:
    values = torch.arange(12.0).reshape(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    delta = sparse(values, mask)
    share = viz._matrix_image(delta, None, (2, 2), "share").data
    np.testing.assert_allclose(share, [[0.75, np.nan], [np.nan, 0.5]])
    mean = viz._matrix_image(delta, None, (2, 2), "value").data
    np.testing.assert_allclose(mean, [[(0 + 1 + 4) / 3, np.nan], [np.nan, 11.0]])
    full = viz._matrix_image(delta, torch.ones(3, 4), (1, 1), "value").data
    np.testing.assert_allclose(full[mask.numpy()], values[mask].numpy() - 1)
    assert np.isnan(full[~mask.numpy()]).all()


def test_plot_neighbours_writes_pngs(pattern_sub: Subnetwork, tmp_path: Path) -> None:
    check_png(viz.plot_neighbours(pattern_sub, "encoder.layer.1.attention.self.key.weight", tmp_path / "n.png"))
    check_png(viz.plot_neighbours(pattern_sub, "encoder.layer.0.attention.self.key.bias", tmp_path / "b.png"))
    emb = "embeddings.word_embeddings.weight"
    check_png(viz.plot_neighbours(pattern_sub, emb, tmp_path / "e.png", max_side=64))


def test_plot_across_layers(pattern_sub: Subnetwork, tmp_path: Path) -> None:
    check_png(viz.plot_across_layers(pattern_sub, "attention.self.key.weight", tmp_path / "c.png"))
    check_png(viz.plot_across_layers(pattern_sub, "attention.self.key.weight", tmp_path / "d.png", max_side=8))
    with pytest.raises(ValueError, match=r"no tensor name ends with 'attention\.self\.kee\.weight'") as info:
        viz.plot_across_layers(pattern_sub, "attention.self.kee.weight", tmp_path / "e.png")
    assert "attention.self.key.weight" in str(info.value)
    assert not (tmp_path / "e.png").exists()


@pytest.mark.parametrize("split", ["stacked", "grouped", None])
def test_plot_layer_retention(pattern_sub: Subnetwork, tmp_path: Path, split: str | None) -> None:
    numels = {"pooler.dense.weight": 16, "encoder.layer.2.attention.self.key.weight": 240}
    check_png(viz.plot_layer_retention(pattern_sub, tmp_path / "r.png", numels, split=split))  # type: ignore[arg-type]


def test_plot_layer_retention_errors(pattern_sub: Subnetwork, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        viz.plot_layer_retention(pattern_sub, tmp_path / "r.png", split="pie")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no entries"):
        viz.plot_layer_retention(subnetwork({}), tmp_path / "r.png")


def test_render_all_on_a_real_extraction(bert_sub: Subnetwork, tmp_path: Path) -> None:
    paths = viz.render_all(bert_sub, tmp_path / "views")
    assert [p.name for p in paths] == [
        f"matrix_{KEY0}.png",
        f"neighbours_{KEY0}.png",
        "layers_attention.self.key.weight.png",
        "retention.png",
    ]
    for path in paths:
        check_png(path)


def test_render_all_on_gpt2_without_key_matrices(tiny_gpt2: TinyPair, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    sub = ken.extract(tiny_gpt2.base, tiny_gpt2.finetuned, k=4, progress=False)
    largest = max(sub.deltas, key=lambda n: sub.deltas[n].numel)
    assert viz._default_matrix(sub) == largest  # no attention key matrix: the largest stored one
    backbone = load_file(tiny_gpt2.base / "model.safetensors")
    paths = viz.render_all(sub, tmp_path, matrix="h.1.mlp.c_fc.weight", backbone=backbone)
    assert [p.name for p in paths] == [
        "matrix_h.1.mlp.c_fc.weight.png",
        "neighbours_h.1.mlp.c_fc.weight.png",
        "layers_mlp.c_fc.weight.png",
        "retention.png",
    ]
    for path in paths:
        check_png(path)


def test_render_all_rejects_an_empty_subnetwork(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no entries"):
        viz.render_all(subnetwork({}), tmp_path)


# --- matplotlib is optional -----------------------------------------------------------------


def test_missing_matplotlib_gives_an_install_hint(
    pattern_sub: Subnetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"ken-serve\[viz\]"):
        viz.plot_matrix(pattern_sub, "encoder.layer.1.attention.self.key.weight", tmp_path / "x.png")
    assert viz.kept_matrix(pattern_sub, "encoder.layer.0.attention.self.key.bias").shape == (1, 20)  # data still works


def imported_modules(nodes: list[ast.stmt] | ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(nodes) if isinstance(nodes, ast.Module) else nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_viz_imports_matplotlib_lazily_and_no_service_code() -> None:
    tree = ast.parse(Path(viz.__file__).read_text())
    runtime = [n for n in tree.body if not (isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")]
    top_level = {m.split(".")[0] for m in imported_modules(runtime)}
    assert "matplotlib" not in top_level
    anywhere = {m.split(".")[0] for m in imported_modules(tree)}
    assert not anywhere & {"service", "redis", "fastapi", "starlette", "uvicorn", "pydantic"}
