"""The backbone, health, readiness and metrics endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from service.api.schemas import BackboneResponse, HealthResponse, IntegrityResponse, ReadinessResponse
from service.deps import AdminAccess, ApiAccess, EngineDep, MetricsDep
from service.store import StoreUnavailable

router = APIRouter(tags=["system"])


@router.get("/v1/backbone", dependencies=[ApiAccess])
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


@router.get("/v1/backbone/integrity", dependencies=[AdminAccess])
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


@router.get("/readyz", responses={503: {"model": ReadinessResponse, "description": "Not ready."}})
async def readyz(request: Request, response: Response) -> ReadinessResponse:
    """Readiness: the backbone is loaded, its owner thread runs and the store answers."""
    readiness = await check_readiness(request)
    if not readiness.ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return readiness


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text exposition."""
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def check_readiness(request: Request) -> ReadinessResponse:
    services = getattr(request.app.state, "services", None)
    if services is None:
        return ReadinessResponse(ready=False, backbone=False, engine=False, store=False, detail="starting")
    engine_ok = services.engine.running
    detail = None if engine_ok else "the backbone owner is not running"
    try:
        await services.store.ping()
        store_ok = True
    except StoreUnavailable as exc:
        store_ok, detail = False, f"store unavailable: {exc}"
    return ReadinessResponse(
        ready=engine_ok and store_ok, backbone=True, engine=engine_ok, store=store_ok, detail=detail
    )
