"""The service on a real local Ray cluster: 2 replicas of the tiny model, one real Redis, real HTTP.

One cluster for the whole module (Ray takes tens of seconds to start on a small machine); the
tests run in order and build on each other's uploads, and the last one kills a replica.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from service.deploy.cluster import deploy, start_local
from service.deploy.ray_app import REPLICA_DEPLOYMENT, REPLICA_GONE, REPLICA_HEADER, ScaleOut
from service.deploy.routing import PLAIN_ROUTING, ROUTING_HEADER
from service.settings import Settings
from tests.redis_server import RedisServer
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceProcess, bound_socket
from tests.tiny_models import TinyPair

pytestmark = pytest.mark.slow

TASKS = ("news", "five", "news-b", "five-b")  # four tasks, two head shapes
TEXTS = ("the team won the cup match with a late goal", "bank shares fell as profit growth slowed", "a")
PROPAGATION_S = 1.0
PLAIN = {ROUTING_HEADER: PLAIN_ROUTING}
REPLACEMENT_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class RayService:
    url: str
    settings: Settings

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


def free_port() -> int:
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture(scope="module")
def ray_service(tiny_bert: TinyPair, service_redis: RedisServer) -> Iterator[RayService]:
    settings = Settings(
        backbone=tiny_bert.base,
        redis_url=service_redis.url,
        redis_key_prefix=f"ray-{uuid.uuid4().hex[:8]}:",
        port=free_port(),
        max_wait_ms=1.0,
        log_level="WARNING",
    )
    start_local(num_cpus=2, log_to_driver=False)
    try:
        deploy(settings, ScaleOut(replicas=2, cpus_per_replica=0.5, max_models_per_replica=4))
        yield RayService(f"http://127.0.0.1:{settings.port}", settings)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def single_server(tiny_bert: TinyPair, tmp_path: Path) -> Iterator[ServiceProcess]:
    """The reference: one ordinary server process, computing with one thread like each replica does."""
    args = ["--backbone", str(tiny_bert.base), "--store-dir", str(tmp_path / "store")]
    server = ServiceProcess(args, {"OMP_NUM_THREADS": "1", "KEN_MAX_WAIT_MS": "1"}, tmp_path / "single.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def file_of(task: str, task_files: TaskFiles) -> bytes:
    return task_files.five if task.startswith("five") else task_files.news


def predict(client: httpx.Client, task: str, text: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"task": task, "inputs": [text], "return_logits": True, "top_k": 2}
    return client.post("/v1/predict", json=body, headers=headers)


def listing(client: httpx.Client) -> list[tuple[str, int, str]]:
    return [(m["task"], m["version"], m["sha256"]) for m in client.get("/v1/subnetworks").json()["subnetworks"]]


def until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what}: not seen within {seconds} s"
        time.sleep(0.02)


def answers_by_replica(client: httpx.Client, task: str, text: str, replicas: int = 2) -> dict[str, dict[str, Any]]:
    """Plain-routed predictions until ``replicas`` different replicas answered; each one's answer."""
    answers: dict[str, dict[str, Any]] = {}
    for _ in range(200):  # Ray's default routing picks at random between replicas: 2 need a few tries
        response = predict(client, task, text, PLAIN)
        assert response.status_code == 200, response.text
        answers[response.headers[REPLICA_HEADER]] = response.json()
        if len(answers) == replicas:
            return answers
    raise AssertionError(f"only replicas {sorted(answers)} answered")


def test_uploads_through_one_replica_are_served_by_every_replica_with_single_server_outputs(
    ray_service: RayService,
    task_files: TaskFiles,
    single_server: ServiceProcess,
) -> None:
    with ray_service.client() as ray_client, httpx.Client(base_url=single_server.url, timeout=60) as single_client:
        uploaded_by = set()
        for task in TASKS:
            response = ray_client.put(f"/v1/subnetworks/{task}", content=file_of(task, task_files), headers=OCTET)
            assert response.status_code == 201, response.text
            uploaded_by.add(response.headers[REPLICA_HEADER])
            assert single_client.put(f"/v1/subnetworks/{task}", content=file_of(task, task_files), headers=OCTET)

        # Every replica answers every task (uploaded through whichever replica took the upload) like one server.
        for task in TASKS:
            expected = predict(single_client, task, TEXTS[0]).json()
            answers = answers_by_replica(ray_client, task, TEXTS[0])
            assert all(answer == expected for answer in answers.values()), (task, answers, expected)
        assert uploaded_by <= set(answers)

        # A stream over the tasks, routed by task affinity: exactly the single server's answers.
        stream = [(task, text) for text in TEXTS for task in TASKS] * 2
        for task, text in stream:
            response = predict(ray_client, task, text)
            assert response.status_code == 200, response.text
            assert response.json() == predict(single_client, task, text).json(), (task, text)

        # The same API surface and errors as one server, through the proxy and the ingress.
        assert listing(ray_client) == listing(single_client)
        missing = predict(ray_client, "absent", "goal")
        assert missing.status_code == 404 and missing.json() == predict(single_client, "absent", "goal").json()
        infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["goal"]}]}
        v2 = ray_client.post("/v2/models/five/infer", json=infer)
        assert (
            v2.status_code == 200
            and v2.json()["outputs"] == single_client.post("/v2/models/five/infer", json=infer).json()["outputs"]
        )
        absent = "/v2/models/absent/infer"
        assert ray_client.post(absent, json=infer).json() == single_client.post(absent, json=infer).json()
        assert ray_client.post("/v1/predict", json={"task": "news"}).status_code == 422


def test_an_overwrite_is_served_at_once_by_affinity_and_reaches_every_replica_within_a_second(
    ray_service: RayService, task_files: TaskFiles
) -> None:
    with ray_service.client() as client:
        before = answers_by_replica(client, "news", TEXTS[1])  # both replicas now hold version 1
        assert {answer["version"] for answer in before.values()} == {1}

        response = client.put("/v1/subnetworks/news", content=task_files.news_v2, headers=OCTET)
        assert response.status_code == 201 and response.json()["version"] == 2
        # Routed as news@2: whichever replica gets it stages version 2 first, without waiting for pub/sub.
        assert predict(client, "news", TEXTS[1]).json()["version"] == 2

        until(
            lambda: {a["version"] for a in answers_by_replica(client, "news", TEXTS[1]).values()} == {2},
            PROPAGATION_S,
            "version 2 on both replicas",
        )


def replica_actor_names() -> set[str]:
    actors = ray.util.list_named_actors(all_namespaces=True)
    return {actor["name"] for actor in actors if f"#{REPLICA_DEPLOYMENT}#" in actor["name"]}


def test_a_killed_replica_is_replaced_and_later_requests_are_all_answered(ray_service: RayService) -> None:
    with ray_service.client() as client:
        stored = client.get("/v1/subnetworks").json()
        old = replica_actor_names()
        assert len(old) == 2
        victim = sorted(old)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

        # Until the ingress's router knows the replacement, a request may still reach the dead replica:
        # then, and only then, it answers 503 saying so.
        old_ids = {name.rsplit("#", 1)[1] for name in old}
        deadline = time.monotonic() + REPLACEMENT_TIMEOUT_S
        while True:
            response = predict(client, "five", TEXTS[0], PLAIN)
            if response.status_code == 200 and response.headers[REPLICA_HEADER] not in old_ids:
                break
            if response.status_code != 200:
                assert response.status_code == 503 and response.json() == {"detail": REPLICA_GONE}, response.text
            assert time.monotonic() < deadline, "no replacement replica answered"
            time.sleep(0.05)

        assert client.get("/v1/subnetworks").json() == stored  # nothing lost from the store
        for task in TASKS * 3:
            response = predict(client, task, TEXTS[2])
            assert response.status_code == 200, response.text
