"""Redis faults under load: a private redis-server is stopped, restarted, frozen (SIGSTOP) and killed in the
middle of a chunked upload.

* cached tasks keep answering (correctly) throughout; uploads and uncached tasks fail fast with 503 and a
  message saying the store is unavailable; /readyz says so; when Redis is back everything recovers
  without restarting the service;
* a frozen Redis never holds the backbone: cached tasks answer promptly while an upload and a cold
  task wait for Redis;
* an upload cut off in the middle (Redis killed, or the service losing Redis) never becomes visible:
  readers keep getting the previous version, complete and verified.

(tests/service/test_store_outage.py covers a restart that comes back *empty*: tasks then answer 404.)
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis as redis_py
import torch

import ken
import service.store.factory
from service.catalog import describe
from service.settings import Settings
from service.store import RedisSubnetworkStore
from tests.redis_server import RedisServer, start_redis_server
from tests.reliability.helpers import wait_for
from tests.service.conftest import OCTET, Reference, TaskFiles
from tests.service.servers import ServiceThread

TEXT = "the team won the cup match"
FAST_S = 1.0  # "fails fast": a refused connection is reported well within the 2 s command timeout


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with start_redis_server() as server:
        yield server


def put_from_another_replica(url: str, prefix: str, task: str, blob: bytes) -> None:
    """Store a task without this service loading it (an upload through this service would cache it)."""

    async def put() -> None:
        replica = RedisSubnetworkStore(url, key_prefix=prefix)
        try:
            await replica.put(task, blob, describe(ken.load_bytes(blob)))
        finally:
            await replica.close()

    asyncio.run(put())


def snapshot(server: RedisServer) -> None:
    """SAVE: a restart of the test server (``--save ""``) then reloads this data, as a real Redis with RDB would."""
    client = redis_py.Redis.from_url(server.url)
    client.save()
    client.close()


class Load:
    """Client threads predicting cached tasks until stopped; every answer is checked against the reference."""

    def __init__(self, service: ServiceThread, expected: dict[str, torch.Tensor], threads: int = 3) -> None:
        self.expected = expected
        self.results: list[tuple[int, float, bool]] = []  # status, seconds, correct
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(service, i)) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, service: ServiceThread, index: int) -> None:
        tasks = list(self.expected)
        with service.client() as client:
            for i in range(100_000):
                if self._stop.is_set():
                    return
                task = tasks[(i + index) % len(tasks)]
                started = time.monotonic()
                try:
                    response = client.post("/v1/predict", json={"task": task, "inputs": [TEXT], "return_logits": True})
                except httpx.HTTPError:
                    self.results.append((-1, time.monotonic() - started, False))
                    continue
                seconds = time.monotonic() - started
                correct = response.status_code == 200 and torch.allclose(
                    torch.tensor(response.json()["predictions"][0]["logits"]), self.expected[task], atol=1e-5
                )
                self.results.append((response.status_code, seconds, correct))

    def stop(self) -> list[tuple[int, float, bool]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return self.results


def test_stop_and_restart_during_load(
    redis: RedisServer,
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    references: dict[str, Reference],
) -> None:
    service = serve(make_settings("redis", redis_url=redis.url))
    with service.client() as client:
        for task, blob in (("news", task_files.news), ("five", task_files.five)):
            assert client.put(f"/v1/subnetworks/{task}", content=blob, headers=OCTET).status_code == 201
        put_from_another_replica(redis.url, service.settings.redis_key_prefix, "cold", task_files.news_v2)
        expected = {task: references[task].logits(TEXT) for task in ("news", "five")}
        for task in expected:  # cached from now on; "cold" is stored but never loaded
            assert client.post("/v1/predict", json={"task": task, "inputs": [TEXT]}).status_code == 200
        snapshot(redis)
        load = Load(service, expected)
        time.sleep(0.5)

        redis.stop()
        outage_started = time.monotonic()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "store unavailable" in ready.json()["detail"]
        for attempt in (
            lambda: client.put("/v1/subnetworks/new", content=task_files.news, headers=OCTET),
            lambda: client.post("/v1/predict", json={"task": "cold", "inputs": [TEXT]}),
            lambda: client.get("/v1/subnetworks"),
            lambda: client.get("/v1/subnetworks/cold"),
        ):
            started = time.monotonic()
            response = attempt()
            assert response.status_code == 503, response.text
            assert "store is unavailable" in response.json()["detail"]
            assert time.monotonic() - started < FAST_S
        time.sleep(max(0.0, 2.0 - (time.monotonic() - outage_started)))  # keep the load running in the outage
        during = len(load.results)

        redis.restart()  # reloads the snapshot: news, five, cold
        wait_for(lambda: client.get("/readyz").status_code == 200, what="ready again")
        cold = client.post("/v1/predict", json={"task": "cold", "inputs": [TEXT], "return_logits": True})
        assert cold.status_code == 200
        assert torch.allclose(torch.tensor(cold.json()["predictions"][0]["logits"]), references["news_v2"].logits(TEXT))
        assert client.put("/v1/subnetworks/new", content=task_files.news, headers=OCTET).status_code == 201
        assert client.post("/v1/predict", json={"task": "new", "inputs": [TEXT]}).status_code == 200
        time.sleep(0.3)
        results = load.stop()

    statuses = [status for status, _, _ in results]
    print(f"\nload on cached tasks: {len(results)} requests ({during} up to the restart), statuses {set(statuses)}")
    assert len(results) > 20 and set(statuses) == {200}
    assert all(correct for _, _, correct in results)


def test_frozen_redis_never_holds_the_backbone(
    redis: RedisServer,
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    references: dict[str, Reference],
) -> None:
    service = serve(make_settings("redis", redis_url=redis.url))
    with service.client() as client:
        assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
        put_from_another_replica(redis.url, service.settings.redis_key_prefix, "cold", task_files.five)
        assert client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).status_code == 200

        redis.freeze()
        slow: dict[str, tuple[int, float, str]] = {}

        def call(name: str, request: Callable[[], object]) -> None:
            started = time.monotonic()
            response = request()
            slow[name] = (response.status_code, time.monotonic() - started, response.text)  # type: ignore[attr-defined]

        with service.client() as other:
            waiting = [
                threading.Thread(
                    target=call,
                    args=("upload", lambda: other.put("/v1/subnetworks/x", content=task_files.news, headers=OCTET)),
                ),
                threading.Thread(
                    target=call,
                    args=("cold", lambda: other.post("/v1/predict", json={"task": "cold", "inputs": ["a"]})),
                ),
            ]
            for thread in waiting:
                thread.start()
            time.sleep(0.1)  # both are now waiting for the frozen Redis
            latencies = []
            for _ in range(30):
                started = time.monotonic()
                response = client.post("/v1/predict", json={"task": "news", "inputs": [TEXT], "return_logits": True})
                latencies.append(time.monotonic() - started)
                assert response.status_code == 200
                got = torch.tensor(response.json()["predictions"][0]["logits"])
                assert torch.allclose(got, references["news"].logits(TEXT), atol=1e-5)
            for thread in waiting:
                thread.join(30)
        print(f"\nwhile Redis is frozen: cached predictions max {max(latencies) * 1000:.0f} ms; waiting calls {slow}")
        assert max(latencies) < 0.5
        for name in ("upload", "cold"):
            status, seconds, text = slow[name]
            assert status == 503 and "store is unavailable" in text, (name, text)
            assert seconds < 10, (name, seconds)  # bounded by the store's command timeout
        assert client.get("/readyz").status_code == 503

        redis.thaw()
        wait_for(lambda: client.get("/readyz").status_code == 200, what="ready again")
        assert client.put("/v1/subnetworks/x", content=task_files.news, headers=OCTET).status_code == 201
        assert client.post("/v1/predict", json={"task": "cold", "inputs": [TEXT]}).status_code == 200


@pytest.mark.parametrize("fault", ["redis killed", "connection lost"])
def test_an_upload_cut_off_midway_never_becomes_visible(
    fault: str,
    redis: RedisServer,
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Uploads in 512-byte chunks (dozens of staging writes); the fault hits at the 10th chunk of version 2."""
    chunk = 512
    assert len(task_files.news_v2) > 20 * chunk
    monkeypatch.setattr(
        service.store.factory, "RedisSubnetworkStore", functools.partial(RedisSubnetworkStore, chunk_size=chunk)
    )
    app = serve(make_settings("redis", redis_url=redis.url))
    store = app.app.state.services.store
    with app.client() as client:
        assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
        assert client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).status_code == 200
        snapshot(redis)

        original_set = store._redis.set
        writes = 0

        async def failing_set(*args: object, **kwargs: object) -> object:
            nonlocal writes
            writes += 1
            if writes == 10:
                if fault == "redis killed":
                    await asyncio.to_thread(redis.stop)
                else:  # the service loses Redis (as when its process dies): nothing is cleaned up
                    raise redis_py.exceptions.ConnectionError("injected: connection lost mid-upload")
            return await original_set(*args, **kwargs)

        monkeypatch.setattr(store._redis, "set", failing_set)
        response = client.put("/v1/subnetworks/news", content=task_files.news_v2, headers=OCTET)
        assert response.status_code == 503 and "store is unavailable" in response.json()["detail"]
        assert writes == 10
        monkeypatch.setattr(store._redis, "set", original_set)
        # The cached version keeps answering, as version 1.
        answer = client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]})
        assert answer.status_code == 200 and answer.json()["version"] == 1

        if fault == "redis killed":
            redis.restart()  # back from its last snapshot
            wait_for(lambda: client.get("/readyz").status_code == 200, what="ready again")
        raw = redis_py.Redis.from_url(redis.url)
        prefix = app.settings.redis_key_prefix
        staged = raw.keys(f"{prefix}staging:*")
        if fault == "connection lost":
            assert len(staged) == 9  # the chunks written before the fault are left...
            assert all(0 < raw.ttl(key) <= 3600 for key in staged)  # ...to expire
        raw.close()

        # Readers (this service, and a fresh replica) see version 1, complete and verified.
        assert client.get("/v1/subnetworks/news").json()["version"] == 1

        async def read_fresh() -> tuple[int, bytes]:
            replica = RedisSubnetworkStore(redis.url, key_prefix=prefix)
            try:
                manifest, blob = await replica.get("news")
                return manifest.version, blob
            finally:
                await replica.close()

        assert asyncio.run(read_fresh()) == (1, task_files.news)
        # And the next upload goes through whole.
        assert client.put("/v1/subnetworks/news", content=task_files.news_v2, headers=OCTET).status_code == 201
        assert asyncio.run(read_fresh()) == (2, task_files.news_v2)
        assert client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).json()["version"] == 2
