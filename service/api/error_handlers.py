"""Every domain error mapped to its HTTP status, in one place.

v1 routes answer ``{"detail": "message"}`` (FastAPI's convention); ``/v2`` routes answer
``{"error": "message"}`` as the Open Inference Protocol specifies.
"""

from __future__ import annotations

import difflib
import email.message
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ken.metadata import json_depth
from service.errors import (
    AdminDisabled,
    BackboneMismatch,
    EngineStopped,
    InvalidInput,
    InvalidSubnetwork,
    InvalidTaskName,
    MissingCredentials,
    NonFiniteOutput,
    PayloadTooLarge,
    UnsupportedMediaType,
    WrongCredentials,
    WrongTaskType,
)
from service.store import CorruptSubnetwork, StoreUnavailable, TaskNotFound

STATUS_BY_ERROR: dict[type[Exception], int] = {
    InvalidSubnetwork: status.HTTP_400_BAD_REQUEST,
    WrongTaskType: status.HTTP_400_BAD_REQUEST,
    MissingCredentials: status.HTTP_401_UNAUTHORIZED,
    WrongCredentials: status.HTTP_403_FORBIDDEN,
    AdminDisabled: status.HTTP_403_FORBIDDEN,
    TaskNotFound: status.HTTP_404_NOT_FOUND,
    BackboneMismatch: status.HTTP_409_CONFLICT,
    PayloadTooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    UnsupportedMediaType: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    InvalidTaskName: status.HTTP_422_UNPROCESSABLE_CONTENT,
    InvalidInput: status.HTTP_422_UNPROCESSABLE_CONTENT,
    CorruptSubnetwork: status.HTTP_500_INTERNAL_SERVER_ERROR,
    NonFiniteOutput: status.HTTP_500_INTERNAL_SERVER_ERROR,
    EngineStopped: status.HTTP_503_SERVICE_UNAVAILABLE,
    StoreUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}

#: Store errors carry the backend's own wording; say first what it means for the client.
MESSAGE_PREFIX: dict[type[Exception], str] = {
    StoreUnavailable: "the subnetwork store is unavailable: ",
    CorruptSubnetwork: "the stored subnetwork is corrupt: ",
}


#: Up to this many task names are listed in a 404 for an unknown task; beyond it, the count and where to look.
KNOWN_TASKS_LISTED = 20


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_content(path: str, message: str) -> dict[str, str]:
    """The error body in the shape the route's API uses."""
    return {"error": message} if is_v2(path) else {"detail": message}


def error_response(
    request: Request, status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_content(request.url.path, message), status_code=status_code, headers=headers)


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    status_code = next(code for kind, code in STATUS_BY_ERROR.items() if isinstance(exc, kind))
    prefix = next((text for kind, text in MESSAGE_PREFIX.items() if isinstance(exc, kind)), "")
    headers = {"WWW-Authenticate": "Bearer"} if status_code == status.HTTP_401_UNAUTHORIZED else None
    message = prefix + str(exc)
    if isinstance(exc, TaskNotFound) and exc.args:
        message += await known_tasks_hint(request, str(exc.args[0]))
    return error_response(request, status_code, message, headers)


async def known_tasks_hint(request: Request, wanted: str) -> str:
    """What to ask for instead of an unknown task: the stored names (or their count), a close match first."""
    services = getattr(request.app.state, "services", None)
    if services is None:
        return ""
    try:
        tasks = [manifest.task for manifest in await services.store.list()]
    except (StoreUnavailable, CorruptSubnetwork):  # the 404 stands on its own, without the hint
        return ""
    if not tasks:
        return "; no tasks are stored yet (upload one with PUT /v1/subnetworks/{task})"
    close = difflib.get_close_matches(wanted, tasks, n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    if len(tasks) <= KNOWN_TASKS_LISTED:
        return f"{guess}; known tasks: {', '.join(tasks)}"
    return f"{guess}; {len(tasks)} tasks are stored: list them with GET /v1/subnetworks"


def sent_json(request: Request) -> bool:
    """Whether the request declares a JSON body (``application/json`` or ``application/*+json``)."""
    declared = request.headers.get("content-type")
    if not declared:
        return False
    parsed = email.message.Message()
    parsed["content-type"] = declared
    subtype = parsed.get_content_subtype()
    return parsed.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def not_json_message(request: Request) -> str:
    declared = request.headers.get("content-type")
    got = f"Content-Type was {declared!r}" if declared else "no Content-Type header was sent"
    return f"send the body as JSON with the header Content-Type: application/json ({got})"


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    body_refused = any(tuple(error["loc"]) == ("body",) for error in exc.errors())
    if body_refused and not sent_json(request):  # FastAPI left the body unparsed: "not a valid dictionary"
        return error_response(request, status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, not_json_message(request))
    if not is_v2(request.url.path):
        return await request_validation_exception_handler(request, exc)
    problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors())
    return error_response(request, status.HTTP_422_UNPROCESSABLE_CONTENT, problems)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if not is_v2(request.url.path):
        return await http_exception_handler(request, exc)  # type: ignore[return-value]
    return error_response(request, exc.status_code, str(exc.detail), exc.headers)


def printable(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (lone surrogates become ``\\udXXX`` escapes).

    Validation errors echo the offending input; one holding a lone surrogate must still render.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(key): printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [printable(item) for item in value]
    return value


#: A refused input nested deeper than this is not echoed back (encoding it would recurse that deep).
MAX_ECHOED_DEPTH = 16


async def printable_validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        if "input" in error and json_depth(error["input"]) > MAX_ECHOED_DEPTH:
            error = {**error, "input": f"(not shown: nested deeper than {MAX_ECHOED_DEPTH} levels)"}
        errors.append(printable(jsonable_encoder(error)))
    return await validation_error_handler(request, RequestValidationError(errors, body=None))


def install_error_handlers(app: FastAPI) -> None:
    for kind in STATUS_BY_ERROR:
        app.add_exception_handler(kind, domain_error_handler)
    app.add_exception_handler(RequestValidationError, printable_validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
