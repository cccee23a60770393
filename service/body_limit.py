"""ASGI middleware bounding request bodies, so a JSON request cannot make the server buffer without limit.

Uploads are exempt: their route streams the body against its own, larger limit (``api/body.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.error_handlers import error_content


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt: Callable[[str, str], bool]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt  # (method, path) -> bool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body parsing as they are (others become 400).
                    raise HTTPException(413, self._message)
            return message

        await self.app(scope, counting_receive, send)

    @property
    def _message(self) -> str:
        return f"the request body exceeds the {self.max_bytes}-byte limit"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = json.dumps(error_content(scope["path"], self._message)).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
