"""Hostile inference requests over real HTTP (uvicorn): each a 4xx with a message, never a 500 or a hang.

* lone UTF-16 surrogates (JSON ``"\\ud800"``) in inputs, the task name and the v2 ``id``: 422;
* a 17 MiB predict body sent chunked (no Content-Length) past the default 16 MiB limit: 413;
* JSON nested far deeper than any request needs, in v1 and v2 bodies: 4xx;
* after all of it, the service answers normally and the backbone is intact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from service.settings import Settings
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread

TEXT = "the team won the cup match"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def service(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> ServiceThread:
    service = serve(make_settings())
    with service.client() as client:
        assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
    return service


def v1(inputs: str, task: str = '"news"') -> bytes:
    return f'{{"task": {task}, "inputs": {inputs}}}'.encode()


def v2(data: str, extra: str = "") -> bytes:
    return f'{{{extra}"inputs": [{{"name": "text", "shape": [1], "datatype": "BYTES", "data": {data}}}]}}'.encode()


SURROGATES = [
    ("v1 lone high surrogate", "/v1/predict", v1('["abc \\ud800 def"]')),
    ("v1 lone low surrogate", "/v1/predict", v1('["\\udfff"]')),
    ("v1 reversed pair", "/v1/predict", v1('["\\ude00\\ud83d"]')),
    ("v1 surrogate in the second input", "/v1/predict", v1('["fine", "x\\udbff"]')),
    ("v1 surrogate in the task name", "/v1/predict", v1('["fine"]', task='"ne\\ud800ws"')),
    ("v2 lone surrogate", "/v2/models/news/infer", v2('["\\ud800"]')),
    ("v2 surrogate in the id", "/v2/models/news/infer", v2('["fine"]', extra='"id": "\\udc00", ')),
    ("rerank query", "/v1/rerank", b'{"task": "news", "query": "\\ud800", "texts": ["fine"]}'),
    ("rerank text", "/v1/rerank", b'{"task": "news", "query": "fine", "texts": ["\\udc00"]}'),
    ("embed input", "/v1/embed", b'{"task": "news", "inputs": "\\ud800"}'),
    ("OpenAI embeddings input", "/v1/embeddings", b'{"model": "news", "input": ["\\ud800"]}'),
    ("token classification input", "/v1/token-classification", b'{"task": "news", "inputs": ["\\ud800"]}'),
    (
        "v2 surrogate in an output name",
        "/v2/models/news/infer",
        v2('["fine"]', extra='"outputs": [{"name": "\\ud800"}], '),
    ),
]


@pytest.mark.parametrize(("case", "path", "body"), SURROGATES, ids=[case for case, _, _ in SURROGATES])
def test_lone_surrogates_are_a_422(service: ServiceThread, case: str, path: str, body: bytes) -> None:
    with service.client() as client:
        response = client.post(path, content=body, headers=JSON)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/json"
        assert client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).status_code == 200


def test_a_valid_surrogate_pair_is_an_ordinary_character(service: ServiceThread) -> None:
    with service.client() as client:
        response = client.post("/v1/predict", content=v1('["goal \\ud83d\\ude00 match"]'), headers=JSON)
    assert response.status_code == 200, response.text


def chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    yield b'{"task": "news", "inputs": ["'
    sent = 0
    while sent < total:
        yield b"a" * size
        sent += size
    yield b'"]}'


@pytest.mark.parametrize("path", ["/v1/predict", "/v2/models/news/infer"])
def test_a_17_mib_chunked_body_is_a_413(service: ServiceThread, path: str) -> None:
    assert service.settings.max_request_bytes == 16 << 20
    with service.client() as client:
        try:
            response = client.post(path, content=chunks(17 << 20), headers=JSON)
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError) as exc:  # pragma: no cover
            pytest.fail(f"the server dropped the connection instead of answering 413: {exc!r}")
        assert response.status_code == 413, response.text[:300]
        assert "limit" in response.text
        assert client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).status_code == 200


NESTED = [
    ("v1 inputs nested 100,000 deep", "/v1/predict", v1("[" * 100_000 + "]" * 100_000)),
    ("v1 inputs nested 500 deep", "/v1/predict", v1("[" * 500 + '"x"' + "]" * 500)),
    ("v2 data nested 100,000 deep", "/v2/models/news/infer", v2("[" * 100_000 + "]" * 100_000)),
    ("v2 data nested 900 deep", "/v2/models/news/infer", v2("[" * 900 + '"x"' + "]" * 900)),
    (
        "v2 parameters nested 900 deep",
        "/v2/models/news/infer",
        v2('["x"]', extra=f'"parameters": {{"a": {"[" * 900 + "]" * 900}}}, '),
    ),
    ("v2 huge integer shape", "/v2/models/news/infer", v2('["x"]').replace(b"[1]", b"[" + b"9" * 5000 + b"]")),
    ("v2 shape of 2**64", "/v2/models/news/infer", v2('["x"]').replace(b"[1]", b"[18446744073709551616]")),
]


#: Parameters are ignored by this model, so nesting there is accepted (but must not break anything).
IGNORED = {"v2 parameters nested 900 deep"}


@pytest.mark.parametrize(("case", "path", "body"), NESTED, ids=[case for case, _, _ in NESTED])
def test_deeply_nested_and_huge_json_is_a_4xx(service: ServiceThread, case: str, path: str, body: bytes) -> None:
    with service.client() as client:
        response = client.post(path, content=body, headers=JSON)
        assert 400 <= response.status_code < 500 or case in IGNORED, response.text[:300]
        assert response.status_code < 500, response.text[:300]
        assert client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).status_code == 200
        assert client.get("/v1/backbone/integrity").json()["intact"] is True
