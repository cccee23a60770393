"""Mixed-task batches in the service: the scheduler's mixed candidates, the owner's mixed pass, the cost model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

import ken
from service.engine import InferenceEngine
from service.engine.encoding import EncodedTexts
from service.engine.mixed import CostModel, GroupShape, calibrate, calibration_models
from service.engine.scheduler import Batch, MixedBatch, TaskQueues, WorkItem
from service.store import DirectorySubnetworkStore
from tests.service.conftest import Reference, TaskFiles
from tests.service.test_engine import TEXT, run_engine, sample
from tests.tiny_models import TinyPair

TEXTS = ["the team won the cup match", "bank profit and market growth", "a film award", "goal"]


def item(task: Any, inputs: int = 1) -> WorkItem:
    return WorkItem(task, EncodedTexts([{"input_ids": [1]}] * inputs, [False] * inputs))


def queues(policy: Any, **overrides: Any) -> TaskQueues:
    options = {"max_batch_inputs": 4, "max_wait_s": 0.0, "max_consecutive": 2, "one_request_per_batch": False}
    return TaskQueues(**(options | overrides), mixed_policy=policy)


def test_an_accepted_candidate_is_the_oldest_requests_of_every_task_grouped_by_task() -> None:
    offered: list[tuple[list[tuple[Any, int]], Any]] = []

    def policy(groups: list[Batch], applied: Any) -> bool:
        offered.append(([(g.staged, g.inputs) for g in groups], applied))
        return True

    q = queues(policy)
    for task, inputs in [("a", 1), ("b", 1), ("a", 1), ("c", 2), ("b", 1)]:
        q.submit(item(task, inputs))
    job = q.next_job()
    assert isinstance(job, MixedBatch)
    assert [(g.staged, g.inputs) for g in job.groups] == [("a", 2), ("b", 1)]  # c's 2 inputs do not fit in 4
    assert offered == [([("a", 2), ("b", 1)], None)]
    assert q.pending_requests == 2
    job = q.next_job()  # c and b: two tasks again
    assert isinstance(job, MixedBatch) and [(g.staged, g.inputs) for g in job.groups] == [("c", 2), ("b", 1)]


def test_a_refused_candidate_or_a_single_task_makes_ordinary_batches() -> None:
    calls: list[Any] = []

    def refuse(groups: list[Batch], applied: Any) -> bool:
        calls.append(applied)
        return False

    q = queues(refuse)
    for task in ["a", "a", "b"]:
        q.submit(item(task))
    first = q.next_job()
    assert isinstance(first, Batch) and first.staged == "a" and first.inputs == 2
    second = q.next_job()
    assert isinstance(second, Batch) and second.staged == "b"
    assert calls == [None]  # the second time only one task was queued: nothing to mix
    q.submit(item("a"))
    q.submit(item("b"))
    assert isinstance(q.next_job(), Batch)
    assert calls[-1] == "b"  # the policy learns which task is applied


def test_cancelled_requests_are_left_out_of_a_mixed_batch() -> None:
    q = queues(lambda groups, applied: True)
    gone = item("a")
    for work in [gone, item("a"), item("b")]:
        q.submit(work)
    gone.future.cancel()
    job = q.next_job()
    assert isinstance(job, MixedBatch)
    assert [(g.staged, g.inputs) for g in job.groups] == [("a", 1), ("b", 1)]
    assert gone not in job.groups[0].items and q.pending_requests == 0


def test_the_cost_model_weighs_swaps_against_per_task_scratch_work(tiny_bert: TinyPair, task_files: TaskFiles) -> None:
    backbone = ken.load_backbone_model(tiny_bert.base)
    flat = ken.FlatParameters(backbone)
    mixed = ken.MixedForward(backbone, flat)
    plans = [ken.DeltaPlan(ken.load_bytes(data), flat) for data in (task_files.news, task_files.five)]
    shapes = [GroupShape(plans[0], 1, 10), GroupShape(plans[1], 1, 10)]
    elements, entries = mixed.scratch_work(plans[0])
    assert 0 < entries < elements < flat.numel  # embedding tables are not copied
    costly_swaps = CostModel(1e-3, 0.0, 1e-6, 1e-12, 1e-12)
    assert costly_swaps.mixed_s(shapes, None, mixed) < costly_swaps.swap_path_s(shapes, None)
    free_swaps = CostModel(1e-6, 0.0, 0.0, 1e-6, 1e-6)
    assert free_swaps.mixed_s(shapes, None, mixed) > free_swaps.swap_path_s(shapes, None)
    # the applied task needs no swap on the swap path, and must be reverted before a mixed pass
    one = CostModel(0.0, 0.0, 1.0, 0.0, 0.0)
    assert one.swap_path_s(shapes, plans[0]) == plans[0].nnz + plans[1].nnz
    assert one.mixed_s(shapes, plans[0], mixed) == plans[0].nnz


def test_calibration_measures_positive_rates_and_leaves_the_weights_pristine(tiny_bert: TinyPair) -> None:
    backbone = ken.load_backbone_model(tiny_bert.base)
    flat = ken.FlatParameters(backbone)
    pristine = flat.buffer.clone()

    def inputs(n: int, length: int) -> dict[str, torch.Tensor]:
        ids = torch.full((n, min(length, 16)), 7)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    model = calibrate(ken.Swapper(flat), ken.MixedForward(backbone, flat), calibration_models(backbone), inputs)
    assert model.forward_fixed_s > 0 and model.swap_entry_s > 0
    assert torch.equal(flat.buffer, pristine)


def _predict_together(engine: InferenceEngine, tasks: list[str]) -> Any:
    return asyncio.gather(*(engine.predict(task, [text]) for task, text in zip(tasks, TEXTS * 4, strict=False)))


@pytest.mark.parametrize("keep_originals", [False, True])
def test_mixed_batches_answer_as_the_materialised_tasks(
    tiny_bert: TinyPair,
    tmp_path: Path,
    task_files: TaskFiles,
    references: dict[str, Reference],
    keep_originals: bool,
) -> None:
    tasks = ["news", "five", "news_v2", "five", "news", "news_v2", "five", "news"]

    async def body(engine: InferenceEngine, store: DirectorySubnetworkStore) -> list[Any]:
        for name in ("news", "five", "news_v2"):
            await store.put(name, getattr(task_files, name), {})
        await engine.predict("news", [TEXT])  # applied when the mixed batches come: reverted first
        return list(await _predict_together(engine, tasks))

    predictions, metrics = run_engine(
        tiny_bert, tmp_path, body, mixed_batches="always", max_wait_ms=200.0, keep_originals=keep_originals
    )
    assert sample(metrics, "ken_mixed_batches_total", outcome="mixed") >= 1
    for task, text, prediction in zip(tasks, TEXTS * 4, predictions, strict=False):
        # 1e-5: the bound of tests/ken/test_mixed.py (float32 rounding of another batch shape)
        torch.testing.assert_close(prediction.logits[0], references[task].logits(text), rtol=1e-5, atol=1e-5)


def test_a_batch_that_cannot_mix_runs_task_by_task(
    tiny_bert: TinyPair, tmp_path: Path, task_files: TaskFiles, references: dict[str, Reference], monkeypatch
) -> None:
    def refuse(self: ken.MixedForward, groups: Any, inputs: Any) -> None:
        raise ken.MixedUnsupported("not this batch")

    monkeypatch.setattr(ken.MixedForward, "logits", refuse)
    tasks = ["news", "five", "news", "five"]

    async def body(engine: InferenceEngine, store: DirectorySubnetworkStore) -> list[Any]:
        await store.put("news", task_files.news, {})
        await store.put("five", task_files.five, {})
        return list(await _predict_together(engine, tasks))

    predictions, metrics = run_engine(tiny_bert, tmp_path, body, mixed_batches="always", max_wait_ms=200.0)
    assert sample(metrics, "ken_mixed_batches_total", outcome="fallback") >= 1
    assert sample(metrics, "ken_mixed_batches_total", outcome="mixed") == 0
    for task, text, prediction in zip(tasks, TEXTS, predictions, strict=True):
        # batched with another input, so padded: float32 rounding apart from the single-input reference
        torch.testing.assert_close(prediction.logits[0], references[task].logits(text), rtol=1e-5, atol=1e-5)


def test_auto_mode_measures_its_cost_model_at_start_up(tiny_bert: TinyPair, tmp_path: Path, task_files) -> None:
    async def body(engine: InferenceEngine, store: DirectorySubnetworkStore) -> CostModel | None:
        await store.put("news", task_files.news, {})
        await engine.predict("news", [TEXT])  # queued behind the calibration, which runs first
        return engine.mixed_cost_model

    cost_model, _ = run_engine(tiny_bert, tmp_path, body, mixed_batches="auto")
    assert isinstance(cost_model, CostModel) and cost_model.swap_entry_s > 0
    off, _ = run_engine(tiny_bert, tmp_path / "off", body, mixed_batches="off")
    assert off is None
