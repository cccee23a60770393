"""``/v1/subnetworks``: upload, list, describe and delete the tasks' subnetwork files."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response, status

from service.api.body import OCTET_STREAM, read_limited_body, require_octet_stream
from service.api.schemas import SubnetworkList, SubnetworkManifest
from service.deps import AdminAccess, ApiAccess, CatalogDep, SettingsDep, StoreDep, TaskName
from service.store import CorruptSubnetwork

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/subnetworks", tags=["subnetworks"])

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The subnetwork file's bytes (`ken extract` output).",
        "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {
        "model": SubnetworkManifest,
        "description": "Unchanged: these exact bytes are already the task's current version (nothing stored).",
    },
    400: {"description": "Not a valid subnetwork file (the message says what is wrong)."},
    401: {"description": "No bearer token."},
    403: {"description": "Wrong bearer token, or admin routes disabled."},
    404: {"description": "No such task."},
    409: {"description": "The subnetwork was extracted against another backbone."},
    413: {"description": "The body exceeds the upload limit."},
    415: {"description": "The body is not application/octet-stream."},
    422: {"description": "Invalid task name."},
    503: {"description": "The store is unreachable."},
}


@router.put(
    "/{task}",
    status_code=status.HTTP_201_CREATED,
    dependencies=[AdminAccess],
    openapi_extra=_UPLOAD_BODY,
    responses={code: _ERRORS[code] for code in (200, 400, 401, 403, 409, 413, 415, 422, 503)},
)
async def put_subnetwork(
    task: TaskName, request: Request, response: Response, catalog: CatalogDep, settings: SettingsDep
) -> SubnetworkManifest:
    """Store (or replace) a task's subnetwork after validating it completely against this backbone.

    201 with the new version; 200 with the current one when these exact bytes are already stored.
    """
    require_octet_stream(request)
    blob = await read_limited_body(request, settings.max_upload_bytes)
    upload = await catalog.upload(task, blob)
    if not upload.stored:
        response.status_code = status.HTTP_200_OK
    return SubnetworkManifest.from_stored(upload.manifest)


@router.get("", dependencies=[ApiAccess], responses={code: _ERRORS[code] for code in (401, 403, 503)})
async def list_subnetworks(store: StoreDep) -> SubnetworkList:
    """Every stored task; one whose stored manifest is unusable is left out (and logged), not a failed listing."""
    listed = []
    for manifest in await store.list():
        try:
            listed.append(SubnetworkManifest.from_stored(manifest))
        except CorruptSubnetwork as exc:
            logger.warning("listing skips task %r: %s", manifest.task, exc)
    return SubnetworkList(subnetworks=listed)


@router.get("/{task}", dependencies=[ApiAccess], responses={code: _ERRORS[code] for code in (401, 403, 404, 422, 503)})
async def get_subnetwork(task: TaskName, store: StoreDep) -> SubnetworkManifest:
    return SubnetworkManifest.from_stored(await store.manifest(task))


@router.delete(
    "/{task}", dependencies=[AdminAccess], responses={code: _ERRORS[code] for code in (401, 403, 404, 422, 503)}
)
async def delete_subnetwork(task: TaskName, store: StoreDep) -> SubnetworkManifest:
    """Remove a task; returns the manifest it had. Requests already queued still finish."""
    return SubnetworkManifest.from_stored(await store.delete(task))
