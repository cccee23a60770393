"""Refusals that say what to fix: content type, unknown tasks, misspelt fields; repeated uploads change nothing."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from service.api import error_handlers
from service.settings import Settings
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread

PREDICT = {"task": "news", "inputs": ["goal"]}
INFER = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["goal"]}]}


@pytest.fixture
def service(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> ServiceThread:
    service = serve(make_settings())
    with service.client() as client:
        for task, blob in (("news", task_files.news), ("five", task_files.five)):
            assert client.put(f"/v1/subnetworks/{task}", content=blob, headers=OCTET).status_code == 201
    return service


def message(response: httpx.Response) -> str:
    body = response.json()
    return str(body.get("detail", body.get("error")))


@pytest.mark.parametrize(("path", "body"), [("/v1/predict", PREDICT), ("/v2/models/news/infer", INFER)])
def test_a_body_not_sent_as_json_is_refused_with_the_header_to_send(
    service: ServiceThread, path: str, body: dict[str, object]
) -> None:
    with service.client() as client:
        for headers, said in (
            ({}, "no Content-Type header was sent"),
            ({"Content-Type": "text/plain"}, "'text/plain'"),
            ({"Content-Type": "application/x-www-form-urlencoded"}, "x-www-form-urlencoded"),
        ):
            response = client.post(path, content=json.dumps(body), headers=headers)
            assert response.status_code == 415, response.text
            text = message(response)
            assert "Content-Type: application/json" in text and said in text, text
            assert "dictionary" not in text
        # The same body sent as JSON answers, and so does a +json media type with parameters.
        for content_type in ("application/json", "application/vnd.api+json; charset=utf-8"):
            response = client.post(path, content=json.dumps(body), headers={"Content-Type": content_type})
            assert response.status_code == 200, response.text
        # A JSON body that is not an object stays a 422 (the media type was right).
        assert client.post(path, json=["goal"]).status_code == 422


def test_an_unknown_task_names_the_known_ones(service: ServiceThread, monkeypatch: pytest.MonkeyPatch) -> None:
    with service.client() as client:
        for response in (
            client.post("/v1/predict", json={"task": "newz", "inputs": ["goal"]}),
            client.get("/v1/subnetworks/newz"),
            client.post("/v2/models/newz/infer", json=INFER),
            client.get("/v2/models/newz"),
        ):
            assert response.status_code == 404, response.text
            assert message(response) == "task not found: newz; did you mean 'news'?; known tasks: five, news"
        nothing_close = client.post("/v1/predict", json={"task": "weather", "inputs": ["x"]})
        assert message(nothing_close) == "task not found: weather; known tasks: five, news"

        monkeypatch.setattr(error_handlers, "KNOWN_TASKS_LISTED", 1)  # too many to list: the count and where
        many = client.post("/v1/predict", json={"task": "weather", "inputs": ["x"]})
        assert message(many) == "task not found: weather; 2 tasks are stored: list them with GET /v1/subnetworks"

        for task in ("news", "five"):
            assert client.delete(f"/v1/subnetworks/{task}").status_code == 200
        empty = client.post("/v1/predict", json={"task": "news", "inputs": ["x"]})
        assert empty.status_code == 404
        assert "no tasks are stored yet (upload one with PUT /v1/subnetworks/{task})" in message(empty)


def test_misspelt_fields_are_refused_by_name(service: ServiceThread) -> None:
    with service.client() as client:
        v1 = client.post("/v1/predict", json={**PREDICT, "topk": 3})
        assert v1.status_code == 422
        assert "unknown field 'topk' (did you mean 'top_k'?); the fields are: task, inputs, top_k, return_logits" in (
            v1.text
        )
        both = client.post("/v1/predict", json={**PREDICT, "topk": 3, "colour": "red"})
        assert "unknown fields 'topk' (did you mean 'top_k'?), 'colour'" in both.text

        top = client.post("/v2/models/news/infer", json={**INFER, "output": [{"name": "label"}]})
        assert top.status_code == 422
        assert "unknown field 'output' (did you mean 'outputs'?)" in message(top)
        nested = {"inputs": [{**INFER["inputs"][0], "datatyp": "BYTES"}]}
        inner = client.post("/v2/models/news/infer", json=nested)
        assert inner.status_code == 422
        assert message(inner).startswith("body.inputs.0: unknown field 'datatyp' (did you mean 'datatype'?)")

        assert client.post("/v1/predict", json={**PREDICT, "top_k": 3}).status_code == 200


def test_pushing_identical_bytes_keeps_the_version(service: ServiceThread, task_files: TaskFiles) -> None:
    with service.client() as client:
        again = client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET)
        assert again.status_code == 200, again.text
        assert again.json()["version"] == 1
        assert client.get("/v1/subnetworks/news").json()["version"] == 1

        replaced = client.put("/v1/subnetworks/news", content=task_files.news_v2, headers=OCTET)
        assert (replaced.status_code, replaced.json()["version"]) == (201, 2)
        back = client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET)  # differs from v2
        assert (back.status_code, back.json()["version"]) == (201, 3)
        # Identical bytes are still validated first: a foreign file is refused however often it comes.
        for _ in range(2):
            assert client.put("/v1/subnetworks/alien", content=task_files.foreign, headers=OCTET).status_code == 409
        response = client.post("/v1/predict", json=PREDICT)
        assert response.json()["version"] == 3
