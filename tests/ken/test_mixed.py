"""Mixed-task forward passes (ken.mixed): outputs equal the swapped path's, the weights are only read.

The bound: a mixed pass computes each task's rows with the task's own tensors, so it differs from
the swapped path only by float32 rounding (matrix products over another number of rows, a batch
padded to a longer length). Stated and tested as |mixed - swapped| <= 1e-5 * max(1, |swapped|) per
logit, i.e. ~80 float32 ulps of a logit near 1 (measured on these models: at most ~1e-7).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import ken
from ken.mixed import MixedForward, MixedGroup, MixedUnsupported, _Entries, _task_rows
from tests.tiny_models import TinyPair

RTOL = ATOL = 1e-5
TEXTS = [
    ["the team won the cup match", "goal"],
    ["bank profit and market growth in the economy this year", "shares", "a vote"],
    ["a film award for the band"],
]


@pytest.fixture(scope="module")
def setup(tiny_bert: TinyPair, tiny_bert_other_task: Path):
    backbone = ken.load_backbone_model(tiny_bert.base)
    flat = ken.FlatParameters(backbone)
    subs = [
        ken.extract(tiny_bert.base, tiny_bert.finetuned, k=8, progress=False),
        ken.extract(tiny_bert.base, tiny_bert_other_task, k=5, method="magnitude", progress=False),  # 5 labels
        ken.extract(tiny_bert.base, tiny_bert.finetuned, k=4, include="attention", progress=False),
    ]
    tasks = [(ken.DeltaPlan(sub, flat), ken.attach_head(backbone, sub.info, sub.head)) for sub in subs]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert.base)
    return backbone, flat, tasks, tokenizer


def _encode(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def _swapped(flat: ken.FlatParameters, tasks, tokenizer, texts: list[list[str]]) -> list[torch.Tensor]:
    """The reference: each task's own inputs as a batch of their own, with the task swapped in."""
    swapper = ken.Swapper(flat)
    out = []
    with torch.no_grad():
        for (plan, model), own in zip(tasks, texts, strict=True):
            swapper.switch(plan)
            out.append(model(**_encode(tokenizer, own)).logits)
    swapper.revert()
    return out


def test_mixed_batch_equals_each_task_swapped_in(setup) -> None:
    backbone, flat, tasks, tokenizer = setup
    pristine = flat.buffer.clone()
    expected = _swapped(flat, tasks, tokenizer, TEXTS)
    mixed = MixedForward(backbone, flat)
    groups = [MixedGroup(plan, model, len(own)) for (plan, model), own in zip(tasks, TEXTS, strict=True)]
    got = mixed.logits(groups, _encode(tokenizer, [text for own in TEXTS for text in own]))
    assert [g.shape for g in got] == [e.shape for e in expected]  # 3, 5 and 3 labels
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=RTOL, atol=ATOL)
    assert torch.equal(flat.buffer, pristine)  # the weights were only read
    # ... and the tasks really differ from the pristine backbone and from each other:
    with torch.no_grad():
        plain = tasks[0][1](**_encode(tokenizer, TEXTS[0])).logits
    assert (plain - got[0]).abs().max() > 100 * ATOL
    assert (got[0][0] - got[2][0]).abs().max() > 100 * ATOL


def test_one_task_alone_is_the_swapped_result(setup) -> None:
    backbone, flat, tasks, tokenizer = setup
    (expected,) = _swapped(flat, tasks[:1], tokenizer, TEXTS[:1])
    (got,) = MixedForward(backbone, flat).logits([MixedGroup(*tasks[0], 2)], _encode(tokenizer, TEXTS[0]))
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)


def test_the_same_task_in_every_group_and_a_task_without_inputs(setup) -> None:
    backbone, flat, tasks, tokenizer = setup
    texts = [TEXTS[1], [], TEXTS[0]]
    plan, model = tasks[1]
    expected = _swapped(flat, [tasks[1], tasks[1]], tokenizer, [TEXTS[1], TEXTS[0]])
    groups = [MixedGroup(plan, model, 3), MixedGroup(*tasks[0], 0), MixedGroup(plan, model, 2)]
    got = MixedForward(backbone, flat).logits(groups, _encode(tokenizer, [t for own in texts for t in own]))
    assert len(got) == 2
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=RTOL, atol=ATOL)


def test_a_failed_pass_leaves_the_modules_as_they_were(setup) -> None:
    backbone, flat, tasks, tokenizer = setup
    pristine = flat.buffer.clone()
    mixed = MixedForward(backbone, flat)
    groups = [MixedGroup(*tasks[0], 2), MixedGroup(*tasks[1], 2)]  # 4 rows declared
    with pytest.raises(MixedUnsupported, match="not one row per input"):
        mixed.logits(groups, _encode(tokenizer, ["goal", "shares", "vote"]))  # 3 rows given
    assert not any("forward" in module.__dict__ for module in tasks[0][1].modules())
    assert torch.equal(flat.buffer, pristine)
    got = mixed.logits(groups[:1], _encode(tokenizer, TEXTS[0]))  # and it still works
    torch.testing.assert_close(got[0], _swapped(flat, tasks[:1], tokenizer, TEXTS[:1])[0], rtol=RTOL, atol=ATOL)


def test_plans_are_indexed_per_tensor(setup) -> None:
    backbone, flat, tasks, _ = setup
    mixed = MixedForward(backbone, flat)
    attention_only = mixed.tensors_changed(tasks[2][0])
    assert attention_only and all(".attention." in name for name in attention_only)
    everything = mixed.tensors_changed(tasks[0][0])
    assert "embeddings.word_embeddings.weight" in everything
    assert sum(end - start for start, end in everything.values()) == tasks[0][0].nnz


def test_conv1d_backbones_are_refused_up_front(tiny_gpt2: TinyPair) -> None:
    backbone = ken.load_backbone_model(tiny_gpt2.base)
    flat = ken.FlatParameters(backbone)
    sub = ken.extract(tiny_gpt2.base, tiny_gpt2.finetuned, k=4, progress=False)
    plan = ken.DeltaPlan(sub, flat)
    mixed = MixedForward(backbone, flat)
    assert not mixed.supports(plan)
    assert "Conv1D" in (mixed.unsupported_reason(plan) or "")
    model = ken.attach_head(backbone, sub.info, sub.head)
    with pytest.raises(MixedUnsupported, match="Conv1D"):
        mixed.logits([MixedGroup(plan, model, 1)], {"input_ids": torch.tensor([[5, 6, 7]])})


def test_models_of_other_backbones_are_refused(setup, tiny_bert: TinyPair) -> None:
    backbone, flat, tasks, tokenizer = setup
    sub = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=8, progress=False)
    stranger = ken.attach_head(ken.load_backbone_model(tiny_bert.base), sub.info, sub.head)
    with pytest.raises(MixedUnsupported, match="share this backbone"):
        MixedForward(backbone, flat).logits(
            [MixedGroup(*tasks[0], 1), MixedGroup(tasks[0][0], stranger, 1)], _encode(tokenizer, ["a", "b"])
        )


def test_embedding_rows_are_assembled_for_the_ids_present_only() -> None:
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(50, 6, generator=gen)
    changed = torch.rand(50, 6, generator=gen) < 0.3
    changed[10:20] = False  # rows without entries
    local = changed.reshape(-1).nonzero().squeeze(1)
    values = torch.randn(local.numel(), generator=gen)
    dense = table.clone().reshape(-1)
    dense[local] = values
    ids = torch.tensor([[3, 3, 12, 49, 0], [0, 15, 3, 7, 7]])  # repeats, unchanged rows, the first and last rows
    offset = 1000  # the table's place in a flat buffer; positions are int32 there
    entries = _Entries((local + offset).to(torch.int32), values, offset)
    assert torch.equal(_task_rows(table, entries, ids), torch.nn.functional.embedding(ids, dense.view(50, 6)))
