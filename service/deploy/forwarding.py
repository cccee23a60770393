"""An HTTP request carried from the ingress to a replica's app (the unchanged FastAPI service) and back.

The replica runs the whole app on its request, so auth, limits, validation and error bodies are
exactly those of a single server. What travels is plain data, so Ray can ship it between processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import httpx
from fastapi import status
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from service.api.error_handlers import error_content

#: Headers that describe one connection, not the request: each hop sets its own (and httpx hands bodies over decoded).
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "upgrade", "te", "trailer"}
)


@dataclass(frozen=True)
class ForwardedRequest:
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class ForwardedResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def with_header(self, name: str, value: str) -> ForwardedResponse:
        return replace(self, headers=(*self.headers, (name, value)))

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


class BodyTooLarge(Exception):
    pass


async def read_request(request: Request, max_body_bytes: int) -> ForwardedRequest:
    """The request with its whole body; BodyTooLarge past ``max_body_bytes`` (from Content-Length, or while reading)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise BodyTooLarge(f"the request body ({declared} bytes) is over the limit of {max_body_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise BodyTooLarge(f"the request body is over the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
    headers = tuple((key, value) for key, value in request.headers.items() if key not in HOP_HEADERS)
    return ForwardedRequest(request.method, request.url.path, request.url.query, headers, b"".join(chunks))


class AppCaller:
    """Calls an ASGI app in this process with forwarded requests (its lifespan is run by the owner of the app)."""

    def __init__(self, app: ASGIApp) -> None:
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica")

    async def __call__(self, request: ForwardedRequest) -> ForwardedResponse:
        response = await self._client.request(
            request.method,
            request.path,
            params=httpx.QueryParams(request.query),
            headers=list(request.headers),
            content=request.body,
        )
        headers = tuple((key, value) for key, value in response.headers.multi_items() if key not in HOP_HEADERS)
        return ForwardedResponse(response.status_code, headers, response.content)

    async def close(self) -> None:
        await self._client.aclose()


def to_response(forwarded: ForwardedResponse) -> Response:
    response = Response(forwarded.body, status_code=forwarded.status)
    for key, value in forwarded.headers:
        response.headers.append(key, value)
    return response


def error_response(path: str, status_code: int, message: str) -> JSONResponse:
    """An error answered by the ingress itself, in the body shape of the route's API (v1 or v2)."""
    headers = {"Retry-After": "1"} if status_code == status.HTTP_503_SERVICE_UNAVAILABLE else None
    return JSONResponse(error_content(path, message), status_code=status_code, headers=headers)
