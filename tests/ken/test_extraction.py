from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import ken
from ken.alignment import align, find_prefix
from ken.extraction import budget_mask
from tests.ken.reference_selection import reference_kept
from tests.tiny_models import TinyPair


def _states(pair: TinyPair) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    base = ken.load_backbone_model(pair.base).state_dict()
    return base, load_file(pair.finetuned / "model.safetensors")


def test_prefix_is_found_from_names() -> None:
    backbone = {"encoder.layer.0.w", "embeddings.x", "pooler.dense.weight"}
    assert find_prefix(backbone, ["bert.encoder.layer.0.w", "bert.embeddings.x", "classifier.weight"]) == "bert."
    assert find_prefix(backbone, ["encoder.layer.0.w", "embeddings.x"]) == ""


def test_alignment_separates_shared_tensors_from_the_head(tiny_bert: TinyPair) -> None:
    base, finetuned = _states(tiny_bert)
    alignment = align(base, finetuned)
    assert alignment.prefix == "bert."
    assert sorted(alignment.head) == ["classifier.bias", "classifier.weight"]
    assert set(alignment.shared.values()) == {n for n, t in base.items() if t.is_floating_point()}


def test_ken_stores_exactly_the_kept_entries_that_changed(tiny_bert: TinyPair) -> None:
    base, finetuned = _states(tiny_bert)
    sub = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=6, progress=False)
    assert sub.info.backbone_fingerprint == ken.fingerprint(base)
    for name, tensor in base.items():
        ft = finetuned["bert." + name]
        expected = torch.from_numpy(reference_kept(ft.numpy(), 6)) & (ft != tensor)
        delta = sub.deltas.get(name)
        stored = torch.zeros(tensor.numel(), dtype=torch.bool)
        if delta is not None:
            stored[delta.flat_indices()] = True
            assert torch.equal(delta.values, ft.reshape(-1)[delta.flat_indices()])
        assert torch.equal(stored.reshape(tensor.shape), expected), name
    assert torch.equal(sub.head["classifier.weight"], finetuned["classifier.weight"])
    assert sub.info.labels == ["sport", "business", "culture"]
    assert sub.info.task_type == "sequence-classification"


def test_unchanged_rows_are_skipped_and_store_nothing(tiny_bert: TinyPair) -> None:
    sub = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=6, progress=False)
    embeddings = sub.deltas["embeddings.word_embeddings.weight"]
    rows = embeddings.shape[0]
    counts = embeddings.indptr[1:] - embeddings.indptr[:-1]
    assert counts[rows // 2 :].sum() == 0  # the fixture leaves the second half of the rows untouched
    assert (counts[: rows // 2] > 0).all()


@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_baselines_keep_kens_budget_per_row(tiny_bert: TinyPair, method: str) -> None:
    base, finetuned = _states(tiny_bert)
    sub = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=5, method=method, progress=False)
    name = "encoder.layer.1.intermediate.dense.weight"
    ft, pre = finetuned["bert." + name], base[name]
    budget = torch.from_numpy(reference_kept(ft.numpy(), 5)).sum(dim=1)
    delta = sub.deltas[name]
    per_row = delta.indptr[1:] - delta.indptr[:-1]
    assert torch.equal(per_row, budget)  # every entry differs in this tensor, so all selected are stored
    if method == "magnitude":
        change = (ft - pre).abs()
        for row in range(ft.shape[0]):
            cols = delta.indices[delta.indptr[row] : delta.indptr[row + 1]].to(torch.int64)
            threshold = change[row, cols].min()
            outside = torch.ones(ft.shape[1], dtype=torch.bool)
            outside[cols] = False
            assert (change[row][outside] <= threshold).all()


def test_random_baseline_depends_on_the_seed(tiny_bert: TinyPair) -> None:
    first = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=5, method="random", seed=1, progress=False)
    again = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=5, method="random", seed=1, progress=False)
    other = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=5, method="random", seed=2, progress=False)
    name = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(first.deltas[name].indices, again.deltas[name].indices)
    assert not torch.equal(first.deltas[name].indices, other.deltas[name].indices)


def test_budget_mask_breaks_ties_by_column() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0]])
    mask = budget_mask(scores, torch.tensor([2, 3]))
    assert mask.tolist() == [[False, True, True, False], [True, True, True, False]]


def test_include_and_exclude_patterns(tiny_bert: TinyPair) -> None:
    attention = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=5, include="attention", progress=False)
    assert attention.deltas and all(
        n.endswith(("query.weight", "key.weight", "value.weight", "attention.output.dense.weight"))
        for n in attention.deltas
    )
    no_embeddings = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=5, exclude=r"^embeddings\.", progress=False)
    assert not any(n.startswith("embeddings.") for n in no_embeddings.deltas)
    with pytest.raises(ken.KenError, match="invalid name pattern"):
        ken.extract(tiny_bert.base, tiny_bert.finetuned, k=5, include="(", progress=False)


def test_gpt2_conv1d_rows_follow_the_stored_layout(tiny_gpt2: TinyPair) -> None:
    base = ken.load_backbone_model(tiny_gpt2.base).state_dict()
    finetuned = load_file(tiny_gpt2.finetuned / "model.safetensors")
    sub = ken.extract(tiny_gpt2.base, tiny_gpt2.finetuned, k=4, progress=False)
    assert sub.info.base_prefix == "transformer."
    assert list(sub.head) == ["score.weight"]
    name = "h.0.attn.c_attn.weight"  # Conv1D: stored [in, out] = [24, 72]; a row is one input feature
    ft = finetuned["transformer." + name]
    assert ft.shape == (24, 72)
    expected = torch.from_numpy(reference_kept(ft.numpy(), 4)) & (ft != base[name])
    stored = torch.zeros(ft.numel(), dtype=torch.bool)
    stored[sub.deltas[name].flat_indices()] = True
    assert torch.equal(stored.reshape(ft.shape), expected)


def test_in_memory_models_and_state_dicts_give_the_same_subnetwork(tiny_bert: TinyPair) -> None:
    from transformers import AutoModelForSequenceClassification

    base, _ = _states(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert.finetuned)
    from_folders = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=5, progress=False)
    from_memory = ken.extract(base, model, k=5, progress=False)
    assert from_folders.deltas.keys() == from_memory.deltas.keys()
    for name, delta in from_folders.deltas.items():
        assert torch.equal(delta.flat_indices(), from_memory.deltas[name].flat_indices())
        assert torch.equal(delta.values, from_memory.deltas[name].values)
    assert from_memory.info.labels == from_folders.info.labels
    assert from_memory.info.backbone_fingerprint == from_folders.info.backbone_fingerprint


def test_errors_name_the_problem(tiny_bert: TinyPair, tiny_gpt2: TinyPair, tmp_path) -> None:
    with pytest.raises(ken.KenError, match="k must be"):
        ken.extract(tiny_bert.base, tiny_bert.finetuned, k=0, progress=False)
    with pytest.raises(ken.KenError, match="unknown method"):
        ken.extract(tiny_bert.base, tiny_bert.finetuned, k=3, method="lottery", progress=False)
    with pytest.raises(ken.KenError, match="does not exist"):
        ken.extract(tmp_path / "missing", tiny_bert.finetuned, k=3, progress=False)
    with pytest.raises(ken.IncompatibleModels, match="shares only"):
        ken.extract(tiny_bert.base, tiny_gpt2.finetuned, k=3, progress=False)
