"""The periodic integrity check: it passes on intact weights (pristine or with a delta applied), catches any
stray write, a partial apply or wrong originals, and a failure shows in /readyz, the metrics and on /v1/predict."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import ken
from service.engine import load_backbone
from service.engine.integrity import IntegrityMonitor
from service.settings import Settings
from tests.reliability.helpers import engine_of, metric, wait_for
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread
from tests.tiny_models import TinyPair


@pytest.fixture
def flat(tiny_bert: TinyPair) -> ken.FlatParameters:
    return load_backbone(tiny_bert.base, name="tiny", device=torch.device("cpu"), dtype=torch.float32).flat


def flip_bit(flat: ken.FlatParameters, position: int) -> None:
    flat.buffer.view(torch.int32)[position] ^= 1  # the smallest possible change: one mantissa bit


def test_a_sweep_passes_on_intact_weights_pristine_or_applied(flat: ken.FlatParameters, task_files: TaskFiles) -> None:
    monitor = IntegrityMonitor(flat, segment_bytes=4096)
    assert monitor.segments > 10
    swapper = ken.Swapper(flat)
    assert monitor.check_all() is None
    swapper.apply(ken.DeltaPlan(task_files.news_subnetwork, flat))
    assert monitor.check_all(swapper, task="news") is None
    swapper.revert()
    assert monitor.check_all(swapper) is None
    assert monitor.status.ok and monitor.status.checks == 3 * monitor.segments


def test_a_flipped_bit_anywhere_is_found_within_one_sweep(flat: ken.FlatParameters, task_files: TaskFiles) -> None:
    plan = ken.DeltaPlan(task_files.news_subnetwork, flat)
    untouched = int(torch.isin(torch.arange(flat.buffer.numel()), plan.positions.long(), invert=True).nonzero()[-1])
    swapper = ken.Swapper(flat)
    for applied in (False, True):
        monitor = IntegrityMonitor(flat, segment_bytes=4096)
        if applied:
            swapper.apply(plan)
        flip_bit(flat, untouched)
        problem = monitor.check_all(swapper, task="news")
        assert problem is not None and "differs from the pristine weights" in problem
        assert not monitor.status.ok and monitor.status.failures == 1
        flip_bit(flat, untouched)
        swapper.revert()


def test_a_partial_apply_is_found(flat: ken.FlatParameters, task_files: TaskFiles) -> None:
    monitor = IntegrityMonitor(flat, segment_bytes=4096)
    plan = ken.DeltaPlan(task_files.news_subnetwork, flat)
    swapper = ken.Swapper(flat)
    swapper.apply(plan)
    half = plan.nnz // 2
    flat.buffer.put_(plan.positions[half:].long(), swapper.originals[half:])  # as if the apply stopped half way
    problem = monitor.check_all(swapper, task="news")
    assert problem is not None and "do not hold the subnetwork's values" in problem and "'news'" in problem
    swapper.revert()
    assert IntegrityMonitor(flat).check_all() is None  # the revert restored everything (fresh monitor: not sticky)


def test_originals_captured_from_a_non_pristine_backbone_are_found(
    flat: ken.FlatParameters, task_files: TaskFiles
) -> None:
    monitor = IntegrityMonitor(flat, segment_bytes=1 << 20)
    plan = ken.DeltaPlan(task_files.news_subnetwork, flat)
    swapper = ken.Swapper(flat)
    swapper.apply(plan)
    swapper.originals[:10] = plan.values[:10]  # originals saved from a backbone that held news already: the bug
    assert monitor.check(swapper, task="news") is not None  # checked as "reverted": differs from pristine
    swapper.revert()  # "restores" the fine-tuned values: the backbone is now damaged
    assert monitor.check() is not None


def test_failures_show_in_readyz_metrics_and_predict(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> None:
    service = serve(make_settings(integrity_check_interval_s=0.02, integrity_segment_bytes=8192))
    engine = engine_of(service)
    with service.client() as client:
        assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
        assert client.post("/v1/predict", json={"task": "news", "inputs": ["goal"]}).status_code == 200
        # a full sweep with the delta applied (the owner keeps it applied between batches)
        wait_for(lambda: engine.integrity.status.checks > 2 * engine.integrity.segments, what="a full sweep")
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["integrity"] and ready["integrity_checks"] > 0
        assert ready["integrity_last_check"] is not None
        assert metric(service, "ken_integrity_checks_total") > 0
        assert metric(service, "ken_integrity_failures_total") == 0
        assert metric(service, "ken_integrity_ok") == 1
        assert metric(service, "ken_integrity_last_check_timestamp_seconds") > 1e9

        # Damage one weight that no task touches, on the owner thread (as a stray write would).
        buffer = engine.backbone.flat.buffer
        engine._queues.submit_control(lambda: buffer.view(torch.int32)[100].bitwise_xor_(1)).result(5)
        wait_for(lambda: client.get("/readyz").status_code == 503, what="/readyz failing")
        ready = client.get("/readyz").json()
        assert ready["integrity"] is False and "integrity check failed" in ready["detail"]
        assert "differs from the pristine weights" in ready["detail"]
        assert client.get("/v2/health/ready").status_code == 503
        assert metric(service, "ken_integrity_failures_total") >= 1 and metric(service, "ken_integrity_ok") == 0
        refused = client.post("/v1/predict", json={"task": "news", "inputs": ["goal"]})
        assert refused.status_code == 503 and "integrity" in refused.json()["detail"]
        assert client.get("/v1/backbone/integrity").json()["intact"] is False
