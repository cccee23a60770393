"""Inference limits, /metrics series, the KServe V2 routes, and the Python client."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from service.client import KenClient, KenServiceError
from service.settings import Settings
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread


@pytest.fixture
def service(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> ServiceThread:
    service = serve(make_settings(max_inputs_per_request=4, max_input_chars=500))
    with service.client() as client:
        for task, blob in (("news", task_files.news), ("five", task_files.five)):
            assert client.put(f"/v1/subnetworks/{task}", content=blob, headers=OCTET).status_code == 201
    return service


def test_input_limits_and_truncation(service: ServiceThread) -> None:
    with service.client() as client:
        too_many = client.post("/v1/predict", json={"task": "news", "inputs": ["a"] * 5})
        assert too_many.status_code == 422 and "at most 4" in too_many.json()["detail"]
        too_long = client.post("/v1/predict", json={"task": "news", "inputs": ["ok", "x" * 501]})
        assert too_long.status_code == 422 and "input 1 has 501 characters" in too_long.json()["detail"]
        assert client.post("/v1/predict", json={"task": "news", "inputs": []}).status_code == 422
        assert client.post("/v1/predict", json={"task": "news", "inputs": ["a"], "top_k": 0}).status_code == 422

        response = client.post("/v1/predict", json={"task": "five", "inputs": ["goal " * 99, "goal"], "top_k": 50})
        assert response.status_code == 200
        first, second = response.json()["predictions"]
        assert first["truncated"] is True and second["truncated"] is False
        assert len(first["labels"]) == 5  # top_k is capped at the task's labels
        assert abs(sum(label["score"] for label in first["labels"]) - 1) < 1e-5
        assert first["logits"] is None


def test_metrics_have_per_task_series(service: ServiceThread) -> None:
    with service.client() as client:
        for task in ("news", "five", "news"):
            assert client.post("/v1/predict", json={"task": task, "inputs": ["goal", "bank"]}).status_code == 200
        assert client.post("/v1/predict", json={"task": "missing", "inputs": ["x"]}).status_code == 404
        text = client.get("/metrics").text
    for series in (
        'ken_inference_requests_total{outcome="ok",task="news"} 2.0',
        'ken_inference_requests_total{outcome="ok",task="five"} 1.0',
        'ken_inference_requests_total{outcome="not_found",task=""} 1.0',
        'ken_inference_inputs_total{task="news"} 4.0',
        'ken_swaps_total{task="news"} 2.0',
        'ken_swaps_total{task="five"} 1.0',
        'ken_swap_seconds_count{op="apply",task="news"} 1.0',  # from pristine
        'ken_swap_seconds_count{op="switch",task="five"} 1.0',  # news -> five in one pass, no revert
        'ken_swap_seconds_count{op="switch",task="news"} 1.0',
        "ken_queue_wait_seconds_count 3.0",
        "ken_batch_size_inputs_sum 6.0",
        "ken_forward_seconds_count 3.0",
        'ken_cache_hits_total{tier="device"} 1.0',
        'ken_cache_misses_total{tier="device"}',
        'ken_cache_bytes{tier="device"}',
        'ken_cache_entries{tier="host"} 0.0',  # no host tier beside a CPU backbone: it would duplicate the device tier
        'ken_http_requests_total{method="POST",route="/v1/predict",status="200"} 3.0',
        'ken_http_request_duration_seconds_count{method="POST",route="/v1/predict"} 4.0',
    ):
        assert series in text, series


def test_kserve_v2_routes(service: ServiceThread) -> None:
    with service.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/v2").json()["name"] == "ken-serve"

        metadata = client.get("/v2/models/five").json()
        assert metadata["name"] == "five" and metadata["versions"] == ["1"] and metadata["platform"]
        assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        outputs = {o["name"]: o for o in metadata["outputs"]}
        assert outputs["logits"] == {"name": "logits", "datatype": "FP32", "shape": [-1, 5]}
        assert outputs["label"]["datatype"] == "BYTES" and outputs["score"]["datatype"] == "FP32"
        assert client.get("/v2/models/five/ready").json() == {"name": "five", "ready": True}
        missing = client.get("/v2/models/nope/ready")
        assert missing.status_code == 404 and missing.json() == {
            "error": "task not found: nope; known tasks: five, news"
        }

        texts = ["the team won the cup", "bank profit", "music award"]
        request = {"id": "r1", "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": texts}]}
        response = client.post("/v2/models/five/infer", json=request)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_name"] == "five" and body["model_version"] == "1" and body["id"] == "r1"
        tensors = {o["name"]: o for o in body["outputs"]}
        assert set(tensors) == {"label", "score", "logits"}
        assert tensors["label"]["shape"] == [3] and tensors["label"]["datatype"] == "BYTES"
        assert tensors["score"]["shape"] == [3] and tensors["score"]["datatype"] == "FP32"
        assert tensors["logits"]["shape"] == [3, 5] and len(tensors["logits"]["data"]) == 15

        v1 = client.post("/v1/predict", json={"task": "five", "inputs": texts, "return_logits": True}).json()
        assert tensors["label"]["data"] == [p["labels"][0]["label"] for p in v1["predictions"]]
        assert tensors["logits"]["data"] == [x for p in v1["predictions"] for x in p["logits"]]

        nested = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}]}
        nested["outputs"] = [{"name": "truncated"}, {"name": "label"}]
        body = client.post("/v2/models/news/infer", json=nested).json()
        assert [o["name"] for o in body["outputs"]] == ["truncated", "label"]
        assert body["outputs"][0] == {"name": "truncated", "shape": [2], "datatype": "BOOL", "data": [False, False]}


@pytest.mark.parametrize(
    ("request_body", "status", "fragment"),
    [
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": ["a"]}]}, 422, "BYTES"),
        ({"inputs": [{"name": "words", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, 422, "'text'"),
        ({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}, 422, "shape"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]}]}, 422, "strings"),
        ({"inputs": [{"name": "text", "shape": [5], "datatype": "BYTES", "data": ["a"] * 5}]}, 422, "at most 4"),
        ({"inputs": []}, 422, "inputs"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "outputs": [{"name": "x"}]},
         422, "unknown output"),
    ],
)  # fmt: skip
def test_kserve_v2_errors(service: ServiceThread, request_body: dict, status: int, fragment: str) -> None:
    with service.client() as client:
        response = client.post("/v2/models/news/infer", json=request_body)
        assert response.status_code == status, response.text
        assert fragment in response.json()["error"]


def test_kserve_v2_unknown_model(service: ServiceThread) -> None:
    with service.client() as client:
        request = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
        response = client.post("/v2/models/nope/infer", json=request)
        assert response.status_code == 404 and response.json() == {
            "error": "task not found: nope; known tasks: five, news"
        }
        assert client.get("/v2/models/nope").status_code == 404
        assert client.get("/v2/models/nope/whatever").json() == {"error": "Not Found"}


def test_python_client(service: ServiceThread, task_files: TaskFiles) -> None:
    with KenClient(service.url) as client:
        assert client.put("other", task_files.five).version == 1
        assert [m.task for m in client.list()] == ["five", "news", "other"]
        assert client.get("other").labels == client.get("five").labels
        result = client.predict("other", ["goal", "bank"], top_k=2, return_logits=True)
        assert result.task == "other" and len(result.predictions) == 2
        assert len(result.predictions[0].labels) == 2 and len(result.predictions[0].logits or []) == 5
        assert client.delete("other").task == "other"
        with pytest.raises(KenServiceError) as error:
            client.get("other")
        assert error.value.status_code == 404 and "other" in error.value.message


def test_json_bodies_are_bounded_but_uploads_have_their_own_limit(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> None:
    service = serve(make_settings(max_request_bytes=1000))
    big = {"task": "news", "inputs": ["goal " * 300]}
    with service.client() as client:
        declared = client.post("/v1/predict", json=big)
        assert declared.status_code == 413 and "1000-byte limit" in declared.json()["detail"]
        payload = json.dumps(big).encode()
        streamed = client.post("/v1/predict", content=iter([payload[:600], payload[600:]]))  # no Content-Length
        assert streamed.status_code == 413 and "1000-byte limit" in streamed.json()["detail"]
        v2 = client.post("/v2/models/news/infer", content=b"x" * 2000)
        assert v2.status_code == 413 and "limit" in v2.json()["error"]
        # the upload (about 50 kB) is only subject to max_upload_bytes
        assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
        assert client.post("/v1/predict", json={"task": "news", "inputs": ["goal"]}).status_code == 200
