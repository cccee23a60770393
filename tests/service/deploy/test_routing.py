"""Which model a request names: ``task@version`` ids and the task of each inference route."""

from __future__ import annotations

import json

import pytest

from service.deploy.routing import model_id, parse_model_id, requested_task


def test_model_ids_round_trip_and_name_the_version() -> None:
    assert model_id("news", 3) == "news@3"
    assert parse_model_id("news@3") == ("news", 3)
    assert parse_model_id(model_id("a.b-c_d", 12)) == ("a.b-c_d", 12)


@pytest.mark.parametrize("value", ["news", "news@", "news@x", "@3", "News@3", "news@-1"])
def test_malformed_model_ids_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_model_id(value)


def test_the_task_of_each_inference_route() -> None:
    body = json.dumps({"task": "news", "inputs": ["goal"]}).encode()
    assert requested_task("POST", "/v1/predict", body) == "news"
    assert requested_task("POST", "/v2/models/five/infer", b"{}") == "five"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/predict", b'{"task": "news"}'),  # not an inference call
        ("POST", "/v1/predict", b"not json"),
        ("POST", "/v1/predict", b'["news"]'),  # JSON, not an object
        ("POST", "/v1/predict", b'{"inputs": ["goal"]}'),  # no task
        ("POST", "/v1/predict", b'{"task": 7}'),
        ("POST", "/v1/predict", b'{"task": "Bad Name"}'),
        ("POST", "/v2/models/Bad Name/infer", b"{}"),
        ("POST", "/v2/models/news/ready", b""),
        ("PUT", "/v1/subnetworks/news", b"\x00"),
    ],
)
def test_requests_without_a_valid_task_are_routed_without_one(method: str, path: str, body: bytes) -> None:
    assert requested_task(method, path, body) is None
