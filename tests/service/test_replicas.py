"""Two service processes (``python -m service serve``) on one Redis see each other's changes within a second."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.redis_server import RedisServer
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceProcess
from tests.tiny_models import TinyPair

PROPAGATION_S = 1.0


@pytest.fixture
def replicas(tiny_bert: TinyPair, service_redis: RedisServer, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    env = {"KEN_REDIS_KEY_PREFIX": f"replicas-{uuid.uuid4().hex[:8]}:", "KEN_LOG_LEVEL": "WARNING"}
    args = ["--backbone", str(tiny_bert.base), "--redis-url", service_redis.url]
    processes = [ServiceProcess(args, env, tmp_path / f"replica-{i}.log") for i in range(2)]
    try:
        for process in processes:
            process.wait_ready()
        yield processes
    finally:
        for process in processes:
            process.stop()


def within(seconds: float, check: Callable[[], bool]) -> float:
    """Poll ``check`` until true; return how long it took (fail after ``seconds``)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not seen within {seconds}s"
        time.sleep(0.02)
    return time.monotonic() - started


def predicted_version(client: httpx.Client) -> int | None:
    response = client.post("/v1/predict", json={"task": "news", "inputs": ["goal"]})
    return response.json()["version"] if response.status_code == 200 else None


def test_uploads_updates_and_deletes_propagate(replicas: list[ServiceProcess], task_files: TaskFiles) -> None:
    first, second = (httpx.Client(base_url=replica.url, timeout=30) for replica in replicas)
    with first, second:
        assert first.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
        within(PROPAGATION_S, lambda: second.get("/v1/subnetworks/news").status_code == 200)
        assert predicted_version(second) == 1  # the second replica now caches version 1

        assert first.put("/v1/subnetworks/news", content=task_files.news_v2, headers=OCTET).status_code == 201
        within(PROPAGATION_S, lambda: predicted_version(second) == 2)

        assert second.delete("/v1/subnetworks/news").status_code == 200
        within(PROPAGATION_S, lambda: predicted_version(first) is None)
        assert first.post("/v1/predict", json={"task": "news", "inputs": ["goal"]}).status_code == 404
        assert first.get("/v1/subnetworks").json() == {"subnetworks": []}
