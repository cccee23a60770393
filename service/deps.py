"""FastAPI dependencies as ``Annotated`` aliases: the app's services, task names and access checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import check_admin, check_api
from service.catalog import SubnetworkCatalog
from service.engine import InferenceEngine
from service.errors import InvalidTaskName
from service.metrics import ServiceMetrics
from service.preload import PreloadFolder
from service.settings import Settings
from service.store import SubnetworkStore, validate_task


@dataclass(frozen=True)
class Services:
    """What the lifespan builds and the routes use; lives on ``app.state.services``."""

    store: SubnetworkStore
    engine: InferenceEngine
    catalog: SubnetworkCatalog
    preload: PreloadFolder | None = None  # --preload DIR: the folder, and which expected tasks are pending


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_store(services: Annotated[Services, Depends(get_services)]) -> SubnetworkStore:
    return services.store


def get_engine(services: Annotated[Services, Depends(get_services)]) -> InferenceEngine:
    return services.engine


def get_catalog(services: Annotated[Services, Depends(get_services)]) -> SubnetworkCatalog:
    return services.catalog


def task_name(task: str) -> str:
    """The ``{task}`` path parameter, validated (422 with the rule otherwise)."""
    try:
        return validate_task(task)
    except ValueError as exc:
        raise InvalidTaskName(str(exc)) from None


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
StoreDep = Annotated[SubnetworkStore, Depends(get_store)]
EngineDep = Annotated[InferenceEngine, Depends(get_engine)]
CatalogDep = Annotated[SubnetworkCatalog, Depends(get_catalog)]
TaskName = Annotated[str, Depends(task_name)]
# auto_error=False: missing or malformed credentials reach our checks, which answer 401/403 themselves.
AdminCredentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(scheme_name="admin token", auto_error=False, description="KEN_ADMIN_TOKEN")),
]
ApiCredentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(scheme_name="API token", auto_error=False, description="KEN_API_TOKEN")),
]


def require_admin(settings: SettingsDep, credentials: AdminCredentials) -> None:
    check_admin(settings.admin_token, settings.binds_loopback, credentials.credentials if credentials else None)


def require_api(settings: SettingsDep, credentials: ApiCredentials) -> None:
    check_api(settings.api_token, credentials.credentials if credentials else None)


#: For ``dependencies=[...]`` of routers and routes.
AdminAccess = Depends(require_admin)
ApiAccess = Depends(require_api)
