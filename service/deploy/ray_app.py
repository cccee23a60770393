"""The Ray Serve application: an ingress that routes by ``task@version``, and replicas that each run the service.

Every replica holds one resident backbone and its owner thread (the unchanged engine, inside the
unchanged FastAPI app) and shares the one store with the others. The ingress reads a request,
finds the task and its current version, and hands it to a replica through Ray Serve's model
multiplexing, which prefers a replica that already staged that ``task@version``. The replica's
delta cache stays the source of truth for what is staged; Ray's per-replica list of models only
steers routing (it is bounded by ``max_models_per_replica``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import status
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from service.app import create_app, is_upload
from service.deploy.forwarding import (
    AppCaller,
    BodyTooLarge,
    ForwardedRequest,
    ForwardedResponse,
    error_response,
    read_request,
    to_response,
)
from service.deploy.routing import PLAIN_ROUTING, ROUTING_HEADER, model_id, parse_model_id, requested_task
from service.deploy.versions import TaskVersions
from service.deps import Services
from service.errors import ServiceError
from service.settings import Settings
from service.store import CorruptSubnetwork, StoreUnavailable, TaskNotFound, open_store

logger = logging.getLogger(__name__)

APP_NAME = "ken"
REPLICA_DEPLOYMENT = "KenReplica"
INGRESS_DEPLOYMENT = "KenIngress"
#: Response header naming the replica that answered (for operators, the tests and the benchmark).
REPLICA_HEADER = "x-ken-replica"
#: Staging errors the replica's app answers itself (404, 409, 500, 503) when it runs the request.
STAGING_ERRORS = (ServiceError, TaskNotFound, StoreUnavailable, CorruptSubnetwork)
REPLICA_GONE = "the replica serving this request stopped before answering; Ray is replacing it, retry the request"


@dataclass(frozen=True)
class ScaleOut:
    """How many replicas, what each one gets, and how many models Ray tracks per replica."""

    replicas: int = 2
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_models_per_replica: int = 16
    #: Requests a replica takes at once; more than one batch's worth, so its scheduler can batch them.
    max_ongoing_requests: int = 64


def replica_deployment(max_models_per_replica: int) -> Any:
    """The replica class; built per call because Ray reads the model bound from the decorator."""

    @serve.deployment(name=REPLICA_DEPLOYMENT)
    class KenReplica:
        async def __init__(self, settings: Settings) -> None:
            self._app = create_app(settings)
            self._lifespan = contextlib.AsyncExitStack()
            await self._lifespan.enter_async_context(self._app.router.lifespan_context(self._app))
            self._call_app = AppCaller(self._app)
            self._replica = serve.get_replica_context().replica_id.unique_id

        @serve.multiplexed(max_num_models_per_replica=max_models_per_replica)
        async def _stage(self, multiplexed_id: str) -> str:
            task, version = parse_model_id(multiplexed_id)
            services: Services = self._app.state.services
            await services.engine.stage(task, version)
            return multiplexed_id

        async def forward(self, request: ForwardedRequest) -> ForwardedResponse:
            multiplexed_id = serve.get_multiplexed_model_id()
            if multiplexed_id:
                with contextlib.suppress(*STAGING_ERRORS):  # the app answers the same error with its status below
                    await self._stage(multiplexed_id)
            response = await self._call_app(request)
            return response.with_header(REPLICA_HEADER, self._replica)

        async def __del__(self) -> None:  # Ray Serve awaits this when it stops the replica
            await self._call_app.close()
            await self._lifespan.aclose()

    return KenReplica


@serve.deployment(name=INGRESS_DEPLOYMENT, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
class KenIngress:
    """Behind Ray Serve's HTTP proxy: reads each request, names its model, forwards it to a replica."""

    async def __init__(self, settings: Settings, replicas: DeploymentHandle) -> None:
        self._replicas = replicas
        self._max_body_bytes = max(settings.max_upload_bytes, settings.max_request_bytes)
        self._store = open_store(settings.redis_url, settings.store_dir, key_prefix=settings.redis_key_prefix)
        self._versions = TaskVersions(self._store)
        await self._store.start()

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        try:
            forwarded = await read_request(request, self._max_body_bytes)
        except BodyTooLarge as exc:
            return error_response(path, status.HTTP_413_CONTENT_TOO_LARGE, str(exc))
        handle = self._replicas
        task = requested_task(forwarded.method, path, forwarded.body)
        if task is not None and request.headers.get(ROUTING_HEADER) != PLAIN_ROUTING:
            version = await self._versions.current(task)
            if version is not None:
                handle = handle.options(multiplexed_model_id=model_id(task, version))
        try:
            response: ForwardedResponse = await handle.forward.remote(forwarded)
        except (RayActorError, ActorUnavailableError):
            logger.warning("a replica stopped during a request", extra={"path": path})
            return error_response(path, status.HTTP_503_SERVICE_UNAVAILABLE, REPLICA_GONE)
        if response.status == status.HTTP_201_CREATED and is_upload(forwarded.method, path):
            manifest = json.loads(response.body)
            self._versions.learned(manifest["task"], manifest["version"])  # this client's next request sees it
        return to_response(response)

    async def __del__(self) -> None:
        await self._store.close()


def build_app(settings: Settings, scale: ScaleOut) -> serve.Application:
    """The application to ``serve.run``: the ingress bound to ``scale.replicas`` replicas of the service."""
    replica = replica_deployment(scale.max_models_per_replica).options(
        num_replicas=scale.replicas,
        max_ongoing_requests=scale.max_ongoing_requests,
        ray_actor_options={"num_cpus": scale.cpus_per_replica, "num_gpus": scale.gpus_per_replica},
    )
    return KenIngress.bind(settings, replica.bind(settings))
