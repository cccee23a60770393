"""Overwriting or deleting a task while its requests are in flight, through HTTP: requests already accepted
finish on the version they started with; requests sent after the change see the new state.

The owner thread is held inside a forward pass of another task (a gate on the backbone), so the requests
of interest are provably queued (resolved to their version, waiting for the backbone) when the change
happens. tests/service/test_engine.py shows the same at engine level.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import torch

import ken
from service.catalog import describe
from service.settings import Settings
from tests.reliability.helpers import engine_of, wait_for
from tests.service.conftest import OCTET, Reference, TaskFiles
from tests.service.servers import ServiceThread

TEXT = "the team won the cup match"
IN_FLIGHT = 6


@contextmanager
def owner_held(service: ServiceThread, client: httpx.Client) -> Iterator[None]:
    """Hold the owner thread inside a forward pass of task "other" until the block ends."""
    engine = engine_of(service)
    entered, release = threading.Event(), threading.Event()

    def gate(module: torch.nn.Module, args: object) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(30)

    handle = engine.backbone.model.register_forward_pre_hook(gate)
    pool = ThreadPoolExecutor(1)
    blocker = pool.submit(client.post, "/v1/predict", json={"task": "other", "inputs": ["x"]})
    try:
        assert entered.wait(10), "the owner never started the blocking batch"
        yield
    finally:
        release.set()
        handle.remove()
        assert blocker.result(30).status_code == 200
        pool.shutdown()


def send(pool: ThreadPoolExecutor, service: ServiceThread, count: int) -> list[Future[httpx.Response]]:
    def one() -> httpx.Response:
        with service.client() as client:
            return client.post("/v1/predict", json={"task": "news", "inputs": [TEXT], "return_logits": True})

    return [pool.submit(one) for _ in range(count)]


def logits(response: httpx.Response) -> torch.Tensor:
    return torch.tensor(response.json()["predictions"][0]["logits"])


def test_overwrite_and_delete_while_requests_are_in_flight(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    references: dict[str, Reference],
) -> None:
    service = serve(make_settings())
    engine = engine_of(service)
    v1, v2 = references["news"].logits(TEXT), references["news_v2"].logits(TEXT)
    assert (v1 - v2).abs().max() > 1e-3  # the versions are distinguishable by their answers
    with service.client() as client, ThreadPoolExecutor(IN_FLIGHT + 2) as pool:
        assert client.put("/v1/subnetworks/other", content=task_files.five, headers=OCTET).status_code == 201
        assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
        assert client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).json()["version"] == 1

        # Overwrite: v1 requests queued, then v2 committed to the store (and the service notified) while they
        # wait. (An upload through HTTP would queue its head check behind them: the store's put is direct.)
        with owner_held(service, client):
            started_on_v1 = send(pool, service, IN_FLIGHT)
            wait_for(lambda: engine._queues.pending_requests >= IN_FLIGHT, what="requests queued")
            store = service.app.state.services.store
            info = describe(ken.load_bytes(task_files.news_v2))
            loop = engine._integrity_task.get_loop()  # the service's event loop
            asyncio.run_coroutine_threadsafe(store.put("news", task_files.news_v2, info), loop).result(10)
            assert client.get("/v1/subnetworks/news").json()["version"] == 2
            assert engine._queues.pending_requests >= IN_FLIGHT  # still waiting
        for future in started_on_v1:
            response = future.result(30)
            assert response.status_code == 200 and response.json()["version"] == 1
            assert torch.allclose(logits(response), v1, atol=1e-5)
        later = client.post("/v1/predict", json={"task": "news", "inputs": [TEXT], "return_logits": True})
        assert later.json()["version"] == 2 and torch.allclose(logits(later), v2, atol=1e-5)

        # Delete: v2 requests queued, the task deleted while they wait; they still answer, on v2.
        with owner_held(service, client):
            started_on_v2 = send(pool, service, IN_FLIGHT)
            wait_for(lambda: engine._queues.pending_requests >= IN_FLIGHT, what="requests queued")
            assert client.delete("/v1/subnetworks/news").status_code == 200
            assert client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).status_code == 404
        for future in started_on_v2:
            response = future.result(30)
            assert response.status_code == 200 and response.json()["version"] == 2
            assert torch.allclose(logits(response), v2, atol=1e-5)
        assert client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).status_code == 404
        assert client.get("/v1/backbone/integrity").json()["intact"] is True
