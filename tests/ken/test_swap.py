from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import ken
import ken.swap
from tests.tiny_models import TinyPair


def _inputs(pair: TinyPair) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(pair.base)
    texts = ["the team won the cup match", "bank profit and market growth", "a film award for the band", "data"]
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def _aligned(model: torch.nn.Module) -> torch.nn.Module:
    """Weights in fresh allocations: transformers may load them at arbitrary offsets of one buffer,
    and CPU kernels round the last bit differently for misaligned data (ken aligns its flat buffer)."""
    for param in model.parameters():
        param.data = param.data.clone()
    return model


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def test_served_outputs_equal_the_materialised_checkpoint(tiny_bert: TinyPair, tmp_path) -> None:
    sub = ken.load_bytes(ken.save_bytes(ken.extract(tiny_bert.base, tiny_bert.finetuned, k=6, progress=False)))
    ken.materialize(tiny_bert.base, sub, tmp_path / "model")
    reference = _aligned(AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval())
    backbone = ken.load_backbone_model(tiny_bert.base)
    flat = ken.FlatParameters(backbone)
    task = ken.attach_head(backbone, sub.info, sub.head)
    swapper = ken.Swapper(flat)
    batch = _inputs(tiny_bert)
    with torch.no_grad():
        expected = reference(**batch).logits
        swapper.apply(ken.DeltaPlan(sub, flat))
        served = task(**batch).logits
        swapper.revert()
        pristine = task(**batch).logits
    assert torch.equal(served, expected)
    assert not torch.equal(pristine, expected)


def test_many_cycles_restore_every_tensor_bit_for_bit(tiny_bert: TinyPair, tiny_bert_other_task) -> None:
    backbone = ken.load_backbone_model(tiny_bert.base)
    original = _snapshot(backbone)
    flat = ken.FlatParameters(backbone)
    assert all(torch.equal(original[n], t) for n, t in backbone.state_dict().items())
    plans = [
        ken.DeltaPlan(ken.extract(tiny_bert.base, ft, k=k, method=m, progress=False), flat)
        for ft, k, m in [(tiny_bert.finetuned, 6, "ken"), (tiny_bert_other_task, 3, "magnitude")]
    ]
    swapper = ken.Swapper(flat)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        plan = plans[int(torch.randint(0, 2, (1,), generator=gen))]
        if torch.rand(1, generator=gen) < 0.5:
            swapper.switch(plan)  # straight from whatever is applied
        else:
            swapper.apply(plan) if swapper.pristine else swapper.switch(plan)
            swapper.revert()
    swapper.revert()
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_revert_copies_originals_rather_than_subtracting() -> None:
    module = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1e-8, 1.0, 3.0]]))
    flat = ken.FlatParameters(module)
    delta_rows = ken.SparseRows(
        (1, 3), torch.tensor([0, 2]), torch.tensor([0, 2], dtype=torch.uint16), torch.tensor([1e8, -7.0])
    )
    info = ken.SubnetworkInfo(backbone_fingerprint="x", method="ken", k=2)
    swapper = ken.Swapper(flat)
    swapper.apply(ken.DeltaPlan(ken.Subnetwork({"weight": delta_rows}, {}, info), flat))
    assert module.weight.tolist() == [[1e8, 1.0, -7.0]]
    swapper.revert()
    assert torch.equal(module.weight, torch.tensor([[1e-8, 1.0, 3.0]]))  # (1e-8 + 1e8) - 1e8 would give 0


def test_flat_parameters_own_every_floating_tensor(tiny_bert: TinyPair) -> None:
    backbone = ken.load_backbone_model(tiny_bert.base)
    flat = ken.FlatParameters(backbone)
    start, stop = flat.buffer.data_ptr(), flat.buffer.data_ptr() + flat.buffer.numel() * flat.buffer.element_size()
    for name, param in backbone.named_parameters():
        assert start <= param.data_ptr() < stop, name
        assert param.data_ptr() % ken.swap.ALIGN_BYTES == 0, name
    assert flat.numel == sum(p.numel() for p in backbone.parameters())


def test_incompatible_subnetworks_are_refused(tiny_bert: TinyPair, tiny_gpt2: TinyPair) -> None:
    backbone = ken.load_backbone_model(tiny_bert.base)
    flat = ken.FlatParameters(backbone)
    gpt2_sub = ken.extract(tiny_gpt2.base, tiny_gpt2.finetuned, k=3, progress=False)
    with pytest.raises(ken.KenError, match="no floating tensor"):
        ken.DeltaPlan(gpt2_sub, flat)


def test_head_must_be_complete(tiny_bert: TinyPair) -> None:
    sub = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=6, progress=False)
    backbone = ken.load_backbone_model(tiny_bert.base)
    with pytest.raises(ken.KenError, match=r"lacks 'classifier\.bias'"):
        ken.attach_head(backbone, sub.info, {"classifier.weight": sub.head["classifier.weight"]})


def test_gpt2_task_model_matches_materialised_checkpoint(tiny_gpt2: TinyPair, tmp_path) -> None:
    sub = ken.extract(tiny_gpt2.base, tiny_gpt2.finetuned, k=4, progress=False)
    ken.materialize(tiny_gpt2.base, sub, tmp_path / "gpt2")
    reference = _aligned(AutoModelForSequenceClassification.from_pretrained(tmp_path / "gpt2").eval())
    backbone = ken.load_backbone_model(tiny_gpt2.base)
    flat = ken.FlatParameters(backbone)
    task = ken.attach_head(backbone, sub.info, sub.head)
    swapper = ken.Swapper(flat)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    with torch.no_grad():
        swapper.apply(ken.DeltaPlan(sub, flat))
        served = task(input_ids=ids).logits
        swapper.revert()
        expected = reference(input_ids=ids).logits
    assert torch.equal(served, expected)


def _two_plans(pair: TinyPair, other: object, flat: ken.FlatParameters) -> tuple[ken.DeltaPlan, ken.DeltaPlan]:
    first = ken.DeltaPlan(ken.extract(pair.base, pair.finetuned, k=6, progress=False), flat)
    second = ken.DeltaPlan(ken.extract(pair.base, other, k=9, progress=False), flat)
    assert torch.isin(first.positions, second.positions).any()  # the two tasks share entries
    return first, second


@pytest.mark.parametrize("keep_originals", [False, True])
@pytest.mark.parametrize("chunk_elements", [7, 1000, 1 << 20])
def test_switch_equals_revert_then_apply(
    tiny_bert: TinyPair,
    tiny_bert_other_task,
    chunk_elements: int,
    keep_originals: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ken.swap, "CPU_CHUNK_ELEMENTS", chunk_elements)
    backbone = ken.load_backbone_model(tiny_bert.base)
    original = _snapshot(backbone)
    flat = ken.FlatParameters(backbone)
    assert flat.chunk_elements == chunk_elements
    first, second = _two_plans(tiny_bert, tiny_bert_other_task, flat)
    swapper = ken.Swapper(flat, keep_originals=keep_originals)
    swapper.apply(second)
    expected = flat.buffer.clone()
    swapper.revert()
    for _ in range(2):  # with keep_originals, the second round runs on the plans' kept originals
        swapper.apply(first)
        swapper.switch(second)
        assert swapper.applied is second
        assert torch.equal(flat.buffer, expected)
        swapper.switch(first)
        swapper.switch(None)
    assert (first.originals is not None) is keep_originals
    assert swapper.pristine
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_apply_refuses_to_stack_deltas(tiny_bert: TinyPair, tiny_bert_other_task) -> None:
    flat = ken.FlatParameters(ken.load_backbone_model(tiny_bert.base))
    first, second = _two_plans(tiny_bert, tiny_bert_other_task, flat)
    swapper = ken.Swapper(flat)
    swapper.apply(first)
    with pytest.raises(ken.KenError, match="revert it first"):
        swapper.apply(second)
    assert swapper.applied is first


class _FailingSwapper(ken.Swapper):
    """Raises on the n-th write, after writing the first half of it: a pass that stops anywhere."""

    def __init__(self, flat: ken.FlatParameters, fail_at: int, keep_originals: bool = False) -> None:
        super().__init__(flat, keep_originals=keep_originals)
        self.writes, self.fail_at = 0, fail_at

    def _put(self, index: torch.Tensor, values: torch.Tensor) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            half = index.numel() // 2
            super()._put(index[:half], values[:half])
            raise RuntimeError("injected")
        super()._put(index, values)


@pytest.mark.parametrize("keep_originals", [False, True])
@pytest.mark.parametrize("fail_at", range(1, 12))
def test_revert_after_a_pass_that_stopped_anywhere_restores_everything(
    tiny_bert: TinyPair, tiny_bert_other_task, fail_at: int, keep_originals: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ken.swap, "CPU_CHUNK_ELEMENTS", 5000)  # several chunks, so the failure lands mid-pass
    backbone = ken.load_backbone_model(tiny_bert.base)
    flat = ken.FlatParameters(backbone)
    pristine = flat.buffer.clone()
    first, second = _two_plans(tiny_bert, tiny_bert_other_task, flat)
    swapper = _FailingSwapper(flat, -1, keep_originals)
    if keep_originals:  # both plans keep their originals already: the failures hit the kept-originals passes
        for plan in (first, second):
            swapper.apply(plan)
            swapper.revert()
    swapper.writes, swapper.fail_at = 0, fail_at
    try:
        swapper.apply(first)
        swapper.switch(second)
        swapper.switch(first)
    except RuntimeError:
        pass
    assert swapper.writes >= fail_at  # the failure did fire
    swapper.fail_at = -1
    swapper.revert()
    swapper.revert()  # twice is harmless: it writes saved originals only
    assert swapper.pristine
    assert torch.equal(flat.buffer, pristine)


def test_plans_hold_int32_positions_and_values_only(tiny_bert: TinyPair) -> None:
    sub = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=6, progress=False)
    flat = ken.FlatParameters(ken.load_backbone_model(tiny_bert.base))
    plan = ken.DeltaPlan(sub, flat)
    assert plan.positions.dtype == torch.int32
    assert plan.nbytes == plan.nnz * (4 + 4)
    assert torch.all(plan.positions[1:] > plan.positions[:-1])  # sorted, distinct
    assert plan.chunk_edges[0] == 0 and plan.chunk_edges[-1] == plan.nnz


def test_kept_originals_are_the_pristine_values_and_serve_later_reverts(tiny_bert: TinyPair) -> None:
    flat = ken.FlatParameters(ken.load_backbone_model(tiny_bert.base))
    pristine = flat.buffer.clone()
    plan = ken.DeltaPlan(ken.extract(tiny_bert.base, tiny_bert.finetuned, k=6, progress=False), flat)
    swapper = ken.Swapper(flat, keep_originals=True)
    without = plan.nbytes
    swapper.apply(plan)
    swapper.revert()
    assert plan.originals is not None and torch.equal(plan.originals, pristine[plan.positions.long()])
    assert plan.nbytes == without + plan.nnz * 4
    for scratch in swapper._scratch:
        scratch.fill_(float("nan"))  # a later revert must not depend on the scratch buffers
    swapper.apply(plan)
    swapper.revert()
    assert torch.equal(flat.buffer, pristine)


def test_asking_again_for_a_plan_whose_apply_failed_completes_it(tiny_bert: TinyPair, tiny_bert_other_task) -> None:
    flat = ken.FlatParameters(ken.load_backbone_model(tiny_bert.base))
    first, _ = _two_plans(tiny_bert, tiny_bert_other_task, flat)
    reference = ken.Swapper(flat)
    reference.apply(first)
    expected = flat.buffer.clone()
    reference.revert()
    swapper = _FailingSwapper(flat, fail_at=1)
    with pytest.raises(RuntimeError, match="injected"):
        swapper.apply(first)  # stops half way through its first write
    swapper.fail_at = -1
    swapper.switch(first)  # the same plan again: must not count as applied already
    assert torch.equal(flat.buffer, expected)
    swapper.revert()
    assert swapper.pristine
