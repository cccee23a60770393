"""The engine without HTTP: swap economy, failure isolation, versions in flight, swap-per-request mode."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

import ken
from service.engine import InferenceEngine, load_backbone
from service.engine.scheduler import WorkItem
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.store import DirectorySubnetworkStore, TaskNotFound
from tests.service.conftest import Reference, TaskFiles
from tests.tiny_models import TinyPair

T = TypeVar("T")
TEXT = "the team won the cup match"


def run_engine(
    tiny_bert: TinyPair, store_dir: Path, body: Callable[[InferenceEngine, DirectorySubnetworkStore], Awaitable[T]],
    **settings: object,
) -> tuple[T, ServiceMetrics]:  # fmt: skip
    """Run ``body`` against a started engine on the tiny backbone and a directory store."""
    config = Settings(**({"backbone": tiny_bert.base, "max_wait_ms": 1.0} | settings))
    backbone = load_backbone(
        tiny_bert.base,
        name="tiny",
        device=torch.device("cpu"),
        dtype=torch.float32,
        keep_originals=config.keep_originals,
    )
    metrics = ServiceMetrics()

    async def main() -> T:
        store = DirectorySubnetworkStore(store_dir)
        engine = InferenceEngine(backbone, store, config, metrics)
        engine.start()
        await store.start()
        try:
            result = await body(engine, store)
            assert (await engine.verify_integrity()).intact
            return result
        finally:
            await engine.stop()
            await store.close()

    return asyncio.run(main()), metrics


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_run_of_one_task_costs_one_swap(tiny_bert: TinyPair, tmp_path: Path, task_files: TaskFiles) -> None:
    async def body(engine: InferenceEngine, store: DirectorySubnetworkStore) -> None:
        await store.put("news", task_files.news, {})
        for _ in range(5):
            await engine.predict("news", [TEXT])

    _, metrics = run_engine(tiny_bert, tmp_path, body)
    assert sample(metrics, "ken_swaps_total", task="news") == 1
    assert sample(metrics, "ken_swap_seconds_count", task="news", op="revert") == 1  # by the integrity check


def test_swap_per_request_mode_applies_and_reverts_every_request(
    tiny_bert: TinyPair, tmp_path: Path, task_files: TaskFiles, references: dict[str, Reference]
) -> None:
    async def body(engine: InferenceEngine, store: DirectorySubnetworkStore) -> list[torch.Tensor]:
        await store.put("news", task_files.news, {})
        return [(await engine.predict("news", [TEXT])).logits[0] for _ in range(3)]

    logits, metrics = run_engine(tiny_bert, tmp_path, body, scheduling="swap-per-request")
    assert all(torch.equal(row, references["news"].logits(TEXT)) for row in logits)
    assert sample(metrics, "ken_swaps_total", task="news") == 3
    assert sample(metrics, "ken_swap_seconds_count", task="news", op="revert") == 3


def test_a_failing_batch_fails_alone_and_the_backbone_is_restored(
    tiny_bert: TinyPair, tmp_path: Path, task_files: TaskFiles, references: dict[str, Reference]
) -> None:
    class Exploding(torch.nn.Module):
        def forward(self, **inputs: torch.Tensor) -> None:
            raise RuntimeError("boom")

    async def body(engine: InferenceEngine, store: DirectorySubnetworkStore) -> torch.Tensor:
        await store.put("news", task_files.news, {})
        await store.put("five", task_files.five, {})
        good = await engine._resolver.resolve("news")
        broken = await engine._resolver.resolve("five")
        broken.model = Exploding()  # the delta itself is fine: it is applied, then the forward pass raises
        failing = WorkItem(broken, engine._encoder.encode([TEXT]))
        engine._queues.submit(failing)
        with pytest.raises(RuntimeError, match="boom"):
            await asyncio.wrap_future(failing.future)
        assert (await engine.verify_integrity()).intact
        assert good.task == "news"
        return (await engine.predict("news", [TEXT])).logits[0]

    logits, metrics = run_engine(tiny_bert, tmp_path, body)
    assert torch.equal(logits, references["news"].logits(TEXT))
    assert sample(metrics, "ken_failed_batches_total", task="five") == 1


def test_requests_in_flight_finish_on_their_version_and_later_ones_see_the_change(
    tiny_bert: TinyPair, tmp_path: Path, task_files: TaskFiles, references: dict[str, Reference]
) -> None:
    async def body(engine: InferenceEngine, store: DirectorySubnetworkStore) -> None:
        await store.put("news", task_files.news, {})
        started_on_v1 = await engine._resolver.resolve("news")  # as a request that is already queued holds it
        await store.put("news", task_files.news_v2, {})  # the change notification invalidates the cache
        in_flight = WorkItem(started_on_v1, engine._encoder.encode([TEXT]))
        engine._queues.submit(in_flight)
        assert torch.equal((await asyncio.wrap_future(in_flight.future))[0], references["news"].logits(TEXT))
        later = await engine.predict("news", [TEXT])
        assert later.version == 2 and torch.equal(later.logits[0], references["news_v2"].logits(TEXT))
        await store.delete("news")
        with pytest.raises(TaskNotFound):
            await engine.predict("news", [TEXT])

    run_engine(tiny_bert, tmp_path, body)


def test_cache_budgets_evict_and_reload_from_the_store(
    tiny_bert: TinyPair, tmp_path: Path, task_files: TaskFiles, references: dict[str, Reference]
) -> None:
    async def body(engine: InferenceEngine, store: DirectorySubnetworkStore) -> None:
        await store.put("news", task_files.news, {})
        await store.put("five", task_files.five, {})
        for task in ("news", "five", "news", "five"):
            prediction = await engine.predict(task, [TEXT])
            assert torch.equal(prediction.logits[0], references[task].logits(TEXT))

    _, metrics = run_engine(tiny_bert, tmp_path, body, device_cache_bytes=1, host_cache_bytes=0)
    assert sample(metrics, "ken_cache_misses_total", tier="device") == 4  # one entry fits: each switch evicts
    assert sample(metrics, "ken_store_loads_total") == 4  # no host tier: every miss reads the store
    assert sample(metrics, "ken_cache_entries", tier="device") == 1


@pytest.mark.parametrize("keep_originals", [False, True])
def test_alternating_tasks_answer_exactly_with_or_without_kept_originals(
    tiny_bert: TinyPair, tmp_path: Path, task_files: TaskFiles, references: dict[str, Reference], keep_originals: bool
) -> None:
    async def body(engine: InferenceEngine, store: DirectorySubnetworkStore) -> list[tuple[str, torch.Tensor]]:
        await store.put("news", task_files.news, {})
        await store.put("five", task_files.five, {})
        tasks = ["news", "five", "news", "five", "five", "news"]
        return [(task, (await engine.predict(task, [TEXT])).logits[0]) for task in tasks]

    answers, metrics = run_engine(tiny_bert, tmp_path, body, keep_originals=keep_originals)
    assert all(torch.equal(logits, references[task].logits(TEXT)) for task, logits in answers)
    assert sample(metrics, "ken_swap_seconds_count", task="five", op="switch") >= 2  # straight between tasks
    news, five = (ken.DeltaPlan(ken.load_bytes(data), _flat(tiny_bert)) for data in (task_files.news, task_files.five))
    plans_bytes = news.nbytes + five.nbytes
    originals_bytes = 4 * (news.nnz + five.nnz)
    device_bytes = sample(metrics, "ken_cache_bytes", tier="device")
    heads = device_bytes - plans_bytes - (originals_bytes if keep_originals else 0)
    assert 0 < heads < originals_bytes  # the accounting holds the originals exactly when they are kept


def _flat(tiny_bert: TinyPair) -> ken.FlatParameters:
    return ken.FlatParameters(ken.load_backbone_model(tiny_bert.base))
