"""Uploads are validated completely before anything is stored; each problem gets its own 4xx and message."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

import ken
from service.settings import Settings
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread


@pytest.fixture
def service(make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread]) -> ServiceThread:
    return serve(make_settings(max_upload_bytes=60_000))


def with_nan_values(subnetwork: ken.Subnetwork) -> bytes:
    name, delta = next(iter(subnetwork.deltas.items()))
    values = delta.values.clone()
    values[0] = float("nan")
    broken = ken.SparseRows(delta.shape, delta.indptr, delta.indices, values)
    return ken.save_bytes(ken.Subnetwork({**subnetwork.deltas, name: broken}, subnetwork.head, subnetwork.info))


def with_misshapen_head(subnetwork: ken.Subnetwork) -> bytes:
    head = dict(subnetwork.head)
    head["classifier.weight"] = torch.zeros(7, head["classifier.weight"].shape[1])
    return ken.save_bytes(ken.Subnetwork(subnetwork.deltas, head, subnetwork.info))


def bad_uploads(files: TaskFiles) -> list[tuple[str, bytes, int, str]]:
    """(case, body, expected status, a fragment of the expected message)."""
    return [
        ("garbage", b"definitely not safetensors", 400, "not a subnetwork file"),
        ("empty", b"", 400, "too short"),
        ("truncated", files.news[: len(files.news) // 2], 400, "truncated"),
        ("nan", with_nan_values(files.news_subnetwork), 400, "NaN"),
        ("head", with_misshapen_head(files.news_subnetwork), 400, "head"),
        ("foreign backbone", files.foreign, 409, "backbone"),
    ]


def test_invalid_files_are_refused_with_a_reason_and_nothing_is_stored(
    service: ServiceThread, task_files: TaskFiles
) -> None:
    with service.client() as client:
        for case, body, status, fragment in bad_uploads(task_files):
            response = client.put("/v1/subnetworks/news", content=body, headers=OCTET)
            assert response.status_code == status, (case, response.text)
            assert fragment.lower() in response.json()["detail"].lower(), (case, response.text)
        assert client.get("/v1/subnetworks").json() == {"subnetworks": []}


def test_content_type_must_be_octet_stream(service: ServiceThread, task_files: TaskFiles) -> None:
    with service.client() as client:
        for headers in ({"Content-Type": "application/json"}, {}):
            response = client.put("/v1/subnetworks/news", content=task_files.news, headers=headers)
            assert response.status_code == 415, response.text
            assert "application/octet-stream" in response.json()["detail"]
        ok = client.put(
            "/v1/subnetworks/news", content=task_files.news, headers={"Content-Type": "application/octet-stream; x=1"}
        )
        assert ok.status_code == 201


def chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_bodies_over_the_limit_are_refused_with_and_without_content_length(
    service: ServiceThread, task_files: TaskFiles
) -> None:
    too_big = task_files.news + bytes(60_000)
    with service.client() as client:
        response = client.put("/v1/subnetworks/news", content=too_big, headers=OCTET)
        assert response.status_code == 413 and "limit" in response.json()["detail"]
        streamed = client.put("/v1/subnetworks/news", content=chunks(too_big), headers=OCTET)  # chunked encoding
        assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]
        assert client.get("/v1/subnetworks").json() == {"subnetworks": []}
        streamed_ok = client.put("/v1/subnetworks/news", content=chunks(task_files.news), headers=OCTET)
        assert streamed_ok.status_code == 201


def test_task_names_are_validated(service: ServiceThread, task_files: TaskFiles) -> None:
    with service.client() as client:
        for name in ("News", "-news", "a" * 65, "new%20s", "ne:ws"):
            response = client.put(f"/v1/subnetworks/{name}", content=task_files.news, headers=OCTET)
            assert response.status_code == 422, (name, response.text)
            assert "invalid task name" in response.text
        response = client.post("/v1/predict", json={"task": "Bad Name", "inputs": ["x"]})
        assert response.status_code == 422 and "invalid task name" in response.text
        assert client.put("/v1/subnetworks/a.b_c-9", content=task_files.news, headers=OCTET).status_code == 201
