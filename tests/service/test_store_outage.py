"""A Redis outage: the service turns unready, cached tasks keep answering, the rest answers 503; then it recovers."""

from __future__ import annotations

import time
from collections.abc import Callable

from service.settings import Settings
from tests.redis_server import start_redis_server
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_redis_outage_and_recovery(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> None:
    with start_redis_server() as redis:
        service = serve(make_settings("redis", redis_url=redis.url))
        with service.client() as client:
            assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
            assert client.post("/v1/predict", json={"task": "news", "inputs": ["goal"]}).status_code == 200

            redis.stop()
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["store"] is False
            assert client.get("/v2/health/ready").status_code == 503
            cached = client.post("/v1/predict", json={"task": "news", "inputs": ["goal"]})
            assert cached.status_code == 200  # served from the cache without the store
            uncached = client.post("/v1/predict", json={"task": "other", "inputs": ["goal"]})
            assert uncached.status_code == 503 and "unavailable" in uncached.json()["detail"].lower()
            assert client.get("/v1/subnetworks").status_code == 503

            redis.restart()  # comes back empty: the service notices that "news" is gone
            wait_for(lambda: client.get("/readyz").status_code == 200)
            wait_for(lambda: client.post("/v1/predict", json={"task": "news", "inputs": ["x"]}).status_code == 404)
