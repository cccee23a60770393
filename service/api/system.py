"""The backbone, health, readiness and metrics endpoints."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import Field

from service.api.schemas import BackboneResponse, HealthResponse, IntegrityResponse, ReadinessResponse
from service.deps import AdminAccess, ApiAccess, EngineDep, MetricsDep
from service.store import StoreUnavailable

router = APIRouter(tags=["system"])


class Readiness(ReadinessResponse):
    """Readiness, with the state of the periodic backbone integrity check."""

    integrity: bool = Field(description="Every periodic integrity check so far found the weights as loaded.")
    integrity_checks: int = Field(description="Periodic integrity checks run since start-up.")
    integrity_last_check: datetime | None = Field(description="When the last integrity check ran (UTC).")
    pending_tasks: list[str] = Field(
        default_factory=list,
        description="Tasks the preload folder is expected to receive (KEN_PRELOAD_EXPECT) that are not loaded yet, "
        "e.g. still being built. They do not make the service unready: the loaded tasks are served.",
    )


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No bearer token."},
    403: {"description": "Wrong bearer token, or admin routes disabled."},
}


@router.get("/v1/backbone", dependencies=[ApiAccess], responses=_AUTH_ERRORS)
async def backbone(engine: EngineDep) -> BackboneResponse:
    resident = engine.backbone
    return BackboneResponse(
        name=resident.name,
        fingerprint=resident.fingerprint,
        parameters=resident.parameter_count,
        device=str(resident.device),
        dtype=str(resident.dtype).removeprefix("torch."),
        max_length=resident.max_length,
    )


@router.get(
    "/v1/backbone/integrity",
    dependencies=[AdminAccess],
    responses={**_AUTH_ERRORS, 503: {"description": "The engine is not running."}},
)
async def backbone_integrity(engine: EngineDep) -> IntegrityResponse:
    """Revert any applied delta (between batches) and checksum the weights: they must equal those loaded.

    Hashes every weight, so it holds the backbone for a moment (about a second per GB): a debugging aid.
    """
    report = await engine.verify_integrity()
    return IntegrityResponse(checksum=report.checksum, pristine_checksum=report.pristine_checksum, intact=report.intact)


@router.get("/healthz")
async def healthz() -> HealthResponse:
    """Liveness: the process answers."""
    return HealthResponse(status="ok")


@router.get("/readyz", responses={503: {"model": Readiness, "description": "Not ready."}})
async def readyz(request: Request, response: Response) -> Readiness:
    """Readiness: the backbone is loaded and intact, its owner thread runs and the store answers."""
    readiness = await check_readiness(request)
    if not readiness.ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return readiness


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text exposition."""
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def check_readiness(request: Request) -> Readiness:
    services = getattr(request.app.state, "services", None)
    if services is None:
        return Readiness(
            ready=False,
            backbone=False,
            engine=False,
            store=False,
            detail="starting",
            integrity=False,
            integrity_checks=0,
            integrity_last_check=None,
        )
    problems = []
    engine_ok = services.engine.running
    if not engine_ok:
        problems.append("the backbone owner is not running")
    integrity = services.engine.integrity.status
    if not integrity.ok:
        problems.append(f"backbone integrity check failed: {integrity.failure}")
    try:
        await services.store.ping()
        store_ok = True
    except StoreUnavailable as exc:
        store_ok = False
        problems.append(f"store unavailable: {exc}")
    pending = await services.preload.pending() if services.preload is not None and store_ok else []
    if pending:
        problems.append(f"waiting for tasks: {', '.join(pending)}")
    last = integrity.last_check
    return Readiness(
        ready=engine_ok and integrity.ok and store_ok,
        backbone=True,
        engine=engine_ok,
        store=store_ok,
        detail="; ".join(problems) or None,
        integrity=integrity.ok,
        integrity_checks=integrity.checks,
        integrity_last_check=None if last is None else datetime.fromtimestamp(last, timezone.utc),
        pending_tasks=pending,
    )
