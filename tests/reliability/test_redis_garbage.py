"""Redis contents written by something else: a clear error naming the task and the key, never a crash, a
hang or wrong weights; a re-upload repairs the task.

A real redis-server; the garbage is written with a plain client under the service's key prefix, for a
task the service has not loaded (so the store is really read), then the task is uploaded again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_py
import torch

from service.settings import Settings
from tests.service.conftest import OCTET, Reference, TaskFiles
from tests.service.servers import ServiceThread

TEXT = "the team won the cup match"
TASK = "t"


@pytest.fixture
def service(make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread]) -> ServiceThread:
    return serve(make_settings("redis"))


@pytest.fixture
def raw(service: ServiceThread) -> redis_py.Redis:
    client = redis_py.Redis.from_url(service.settings.redis_url)
    yield client
    client.close()


def manifest_json(size: int = 100, **overrides: Any) -> str:
    body = {"task": TASK, "sha256": "0" * 64, "size": size, "created": "2026-01-01T00:00:00+00:00", "info": {}}
    return json.dumps(body | overrides)


def hset(**fields: Any) -> Callable[[redis_py.Redis, str], None]:
    return lambda r, p: r.hset(f"{p}manifest:{TASK}", mapping=fields)


GARBAGE: list[tuple[str, Callable[[redis_py.Redis, str], None], str]] = [
    ("manifest key a string", lambda r, p: r.set(f"{p}manifest:{TASK}", "garbage"), "manifest:t"),
    ("manifest key a list", lambda r, p: r.rpush(f"{p}manifest:{TASK}", "a", "b"), "manifest:t"),
    ("manifest key a set", lambda r, p: r.sadd(f"{p}manifest:{TASK}", "a"), "manifest:t"),
    ("manifest JSON garbage", hset(version=1, chunks=1, manifest="{nope"), "manifest:t"),
    ("manifest JSON a list", hset(version=1, chunks=1, manifest="[1, 2]"), "manifest:t"),
    ("manifest JSON nested 100,000 deep", hset(version=1, chunks=1, manifest="[" * 100_000), "manifest:t"),
    ("manifest JSON not UTF-8", hset(version=1, chunks=1, manifest=b"\xff\xfe{"), "manifest:t"),
    ("manifest hash without chunks nor body", hset(version=1), "manifest:t"),
    ("manifest hash without version", hset(chunks=1, manifest=manifest_json()), "manifest:t"),
    ("manifest version garbage", hset(version="banana", chunks=1, manifest=manifest_json()), "manifest:t"),
    ("manifest version negative", hset(version=-3, chunks=1, manifest=manifest_json()), "manifest:t"),
    ("manifest version of 5,000 digits", hset(version="9" * 5000, chunks=1, manifest=manifest_json()), "manifest:t"),
    ("manifest size Infinity", hset(version=1, chunks=1, manifest=manifest_json(size=float("inf"))), "manifest:t"),
    ("manifest of another task", hset(version=1, chunks=1, manifest=manifest_json(task="other")), "manifest:t"),
    ("a billion chunks for 100 bytes", hset(version=1, chunks=10**9, manifest=manifest_json()), "manifest:t"),
    ("a billion chunks for a terabyte", hset(version=1, chunks=10**9, manifest=manifest_json(size=10**12)), "blob:t:1"),
    (
        "chunk key a list",
        lambda r, p: (hset(version=1, chunks=1, manifest=manifest_json())(r, p), r.rpush(f"{p}blob:{TASK}:1:0", "x")),
        "blob:t:1:0",
    ),
    (
        "chunks longer than the manifest says",
        lambda r, p: (
            hset(version=1, chunks=1, manifest=manifest_json())(r, p),
            r.set(f"{p}blob:{TASK}:1:0", b"x" * 500),
        ),
        "blob:t:1:0",
    ),
    (
        "chunk garbage of the right size",
        lambda r, p: (
            hset(version=1, chunks=1, manifest=manifest_json())(r, p),
            r.set(f"{p}blob:{TASK}:1:0", b"x" * 100),
        ),
        "blob:t:1",
    ),
]


def assert_repaired(service: ServiceThread, task_files: TaskFiles, reference: Reference) -> None:
    with service.client() as client:
        response = client.put(f"/v1/subnetworks/{TASK}", content=task_files.news, headers=OCTET)
        assert response.status_code == 201, response.text
        answer = client.post("/v1/predict", json={"task": TASK, "inputs": [TEXT], "return_logits": True})
        assert answer.status_code == 200, answer.text
        assert client.get(f"/v1/subnetworks/{TASK}").status_code == 200
        assert [m["task"] for m in client.get("/v1/subnetworks").json()["subnetworks"]] == [TASK]
        assert client.get("/v1/backbone/integrity").json()["intact"] is True
    logits = torch.tensor(answer.json()["predictions"][0]["logits"])
    torch.testing.assert_close(logits, reference.logits(TEXT), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("case", "write", "key"), GARBAGE, ids=[case for case, _, _ in GARBAGE])
def test_garbage_in_redis_is_a_clear_error_and_a_reupload_repairs_it(
    service: ServiceThread,
    raw: redis_py.Redis,
    task_files: TaskFiles,
    references: dict[str, Reference],
    case: str,
    write: Callable[[redis_py.Redis, str], None],
    key: str,
) -> None:
    prefix = service.settings.redis_key_prefix
    write(raw, prefix)
    raw.sadd(f"{prefix}tasks", TASK)
    with service.client() as client:
        for method, path, body in (
            ("POST", "/v1/predict", {"task": TASK, "inputs": [TEXT]}),
            ("GET", f"/v1/subnetworks/{TASK}", None),
            ("GET", f"/v2/models/{TASK}", None),
        ):
            response = client.request(method, path, json=body)
            assert response.status_code == 500, (path, response.text)
            message = response.text
            assert f"'{TASK}'" in message and "upload the task again" in message, message
            # The manifest routes stop at the (readable) manifest, whose info is empty: they name the field.
            assert key in message or ("chunk" in case and "lacks 'k'" in message), message
        listing = client.get("/v1/subnetworks")
        assert listing.status_code == 200, listing.text
    assert_repaired(service, task_files, references["news"])


VERSION_AND_SET_GARBAGE: list[tuple[str, Callable[[redis_py.Redis, str], None]]] = [
    ("version counter a word", lambda r, p: r.set(f"{p}version:{TASK}", "banana")),
    ("version counter beyond int64", lambda r, p: r.set(f"{p}version:{TASK}", "9" * 30)),
    ("version counter at int64's max", lambda r, p: r.set(f"{p}version:{TASK}", str(2**63 - 1))),
    ("version counter a hash", lambda r, p: r.hset(f"{p}version:{TASK}", "a", "b")),
    ("version counter negative", lambda r, p: r.set(f"{p}version:{TASK}", "-5")),
    ("task set a string", lambda r, p: r.set(f"{p}tasks", "garbage")),
    ("task set a hash", lambda r, p: r.hset(f"{p}tasks", "a", "b")),
    ("task set with non-names", lambda r, p: r.sadd(f"{p}tasks", "../evil", b"\xff\xfe", "A B", "ok-but-absent")),
]


@pytest.mark.parametrize(("case", "write"), VERSION_AND_SET_GARBAGE, ids=[c for c, _ in VERSION_AND_SET_GARBAGE])
def test_garbage_counters_and_task_sets_do_not_break_listing_or_uploads(
    service: ServiceThread,
    raw: redis_py.Redis,
    task_files: TaskFiles,
    references: dict[str, Reference],
    case: str,
    write: Callable[[redis_py.Redis, str], None],
) -> None:
    write(raw, service.settings.redis_key_prefix)
    with service.client() as client:
        listing = client.get("/v1/subnetworks")
        assert listing.status_code == 200 and listing.json() == {"subnetworks": []}, listing.text
    assert_repaired(service, task_files, references["news"])
    with service.client() as client:  # a second upload still gets a new, higher version
        first = client.get(f"/v1/subnetworks/{TASK}").json()["version"]
        again = client.put(f"/v1/subnetworks/{TASK}", content=task_files.news_v2, headers=OCTET)
        assert again.status_code == 201 and again.json()["version"] == first + 1, again.text


def test_garbage_chunks_behind_a_cached_task(
    service: ServiceThread,
    raw: redis_py.Redis,
    task_files: TaskFiles,
    references: dict[str, Reference],
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
) -> None:
    """The cache keeps answering the weights it verified; an uncached replica refuses the garbage; a re-upload
    (of the same bytes) repairs the store for both."""
    with service.client() as client:
        assert client.put(f"/v1/subnetworks/{TASK}", content=task_files.news, headers=OCTET).status_code == 201
        assert client.post("/v1/predict", json={"task": TASK, "inputs": [TEXT]}).status_code == 200
    prefix = service.settings.redis_key_prefix
    chunk = f"{prefix}blob:{TASK}:1:0"
    raw.set(chunk, b"\x00" * raw.strlen(chunk))
    replica = serve(make_settings("redis", redis_key_prefix=prefix))
    with service.client() as cached, replica.client() as fresh:
        answer = cached.post("/v1/predict", json={"task": TASK, "inputs": [TEXT], "return_logits": True})
        assert answer.status_code == 200
        torch.testing.assert_close(
            torch.tensor(answer.json()["predictions"][0]["logits"]),
            references["news"].logits(TEXT),
            rtol=1e-5,
            atol=1e-5,
        )
        refused = fresh.post("/v1/predict", json={"task": TASK, "inputs": [TEXT]})
        assert refused.status_code == 500 and f"blob:{TASK}:1" in refused.text and "sha256" in refused.text, (
            refused.text
        )
        repaired = cached.put(f"/v1/subnetworks/{TASK}", content=task_files.news, headers=OCTET)
        assert repaired.status_code == 201, repaired.text
        assert fresh.post("/v1/predict", json={"task": TASK, "inputs": [TEXT]}).status_code == 200
