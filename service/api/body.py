"""Reading an upload's body with a size limit, without ever holding more than the limit."""

from __future__ import annotations

from fastapi import Request

from service.errors import PayloadTooLarge, UnsupportedMediaType

OCTET_STREAM = "application/octet-stream"


def require_octet_stream(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != OCTET_STREAM:
        shown = media_type or "none"
        raise UnsupportedMediaType(f"send the subnetwork file as {OCTET_STREAM}, not {shown}")


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it is known to exceed ``limit`` bytes.

    A declared Content-Length over the limit is refused before reading anything; a chunked body
    (or one that lies about its length) is refused when the stream passes the limit.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body has {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body exceeds the {limit}-byte limit")
    return bytes(body)
