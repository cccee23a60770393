"""Carrying a request to a replica's app: the whole body within the limit, errors in the route's API shape."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request

from service.deploy.forwarding import BodyTooLarge, ForwardedRequest, error_response, read_request


def incoming(chunks: list[bytes], headers: dict[str, str]) -> Request:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict:
        return messages.pop(0)

    scope = {
        "type": "http",
        "method": "PUT",
        "path": "/v1/subnetworks/news",
        "query_string": b"a=1",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive)


def test_the_whole_body_travels_without_connection_headers() -> None:
    request = incoming([b"ab", b"cd"], {"authorization": "Bearer t", "connection": "keep-alive"})
    forwarded = asyncio.run(read_request(request, max_body_bytes=4))
    headers = (("authorization", "Bearer t"),)
    assert forwarded == ForwardedRequest("PUT", "/v1/subnetworks/news", "a=1", headers, b"abcd")


@pytest.mark.parametrize(
    ("chunks", "headers"),
    [([b"abcde"], {"content-length": "5"}), ([b"abc", b"de"], {})],  # declared, or found while streaming
)
def test_a_body_over_the_limit_is_refused(chunks: list[bytes], headers: dict[str, str]) -> None:
    with pytest.raises(BodyTooLarge, match="limit of 4 bytes"):
        asyncio.run(read_request(incoming(chunks, headers), max_body_bytes=4))


def test_errors_answered_by_the_ingress_use_each_api_shape() -> None:
    v1 = error_response("/v1/predict", 503, "gone")
    v2 = error_response("/v2/models/news/infer", 413, "big")
    assert (v1.status_code, json.loads(v1.body), v1.headers["retry-after"]) == (503, {"detail": "gone"}, "1")
    assert (v2.status_code, json.loads(v2.body), "retry-after" in v2.headers) == (413, {"error": "big"}, False)
