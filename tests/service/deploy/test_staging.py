"""The engine's staging hook: a request routed as ``task@version`` gets that version before the notification."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from service.engine import InferenceEngine, load_backbone
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.store import DirectorySubnetworkStore
from tests.service.conftest import TaskFiles
from tests.tiny_models import TinyPair


def test_stage_drops_an_older_cached_version_that_no_notification_replaced(
    tiny_bert: TinyPair, task_files: TaskFiles, tmp_path: Path
) -> None:
    settings = Settings(backbone=tiny_bert.base, max_wait_ms=1.0)
    backbone = load_backbone(tiny_bert.base, name="tiny", device=torch.device("cpu"), dtype=torch.float32)

    async def scenario() -> None:
        # The engine's store never starts its listener: changes made by another instance reach it only
        # through stage(), as when this replica's notification is still on its way.
        replica_store = DirectorySubnetworkStore(tmp_path)
        other_replica = DirectorySubnetworkStore(tmp_path)
        engine = InferenceEngine(backbone, replica_store, settings, ServiceMetrics())
        engine.start()
        try:
            await other_replica.put("news", task_files.news, {})
            assert (await engine.predict("news", ["goal"])).version == 1  # version 1 is now cached
            await other_replica.put("news", task_files.news_v2, {})
            assert (await engine.predict("news", ["goal"])).version == 1  # nothing told this replica

            assert await engine.stage("news", 2) == 2
            assert (await engine.predict("news", ["goal"])).version == 2
            assert await engine.stage("news", 1) == 2  # an older id never moves the cache back
        finally:
            await engine.stop()

    asyncio.run(scenario())
