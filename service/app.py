"""The application factory: settings in, a FastAPI app out (its lifespan loads and closes everything)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import service
from service.api import completions, embeddings, predict, rerank, subnetworks, system, tokens, v2
from service.api.console import install_console
from service.api.docs import install_docs
from service.api.error_handlers import install_error_handlers
from service.body_limit import BodyLimitMiddleware
from service.catalog import SubnetworkCatalog
from service.console_viz import VizCache
from service.deps import Services
from service.engine import InferenceEngine, load_backbone
from service.http_metrics import HttpMetricsMiddleware
from service.metrics import ServiceMetrics
from service.preload import PreloadFolder
from service.settings import Settings
from service.store import open_store

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """A service instance. Nothing heavy happens here: the backbone and the store are opened by the lifespan."""
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backbone = await asyncio.to_thread(
            load_backbone,
            settings.backbone_path(),
            name=settings.backbone_display_name(),
            device=settings.torch_device(),
            dtype=settings.torch_dtype,
            max_sequence_length=settings.max_sequence_length,
            keep_originals=settings.keep_originals,
        )
        store = open_store(settings.redis_url, settings.store_dir, key_prefix=settings.redis_key_prefix)
        engine = InferenceEngine(backbone, store, settings, metrics)
        engine.start()
        watcher: asyncio.Task[None] | None = None
        try:
            await store.start()
            catalog = SubnetworkCatalog(store, engine)
            preload = None
            if settings.preload_dir is not None:
                preload = PreloadFolder(settings.preload_dir, catalog, store, expected=settings.preload_expect)
                await preload.scan()
                if settings.preload_watch_s > 0:
                    watcher = asyncio.create_task(preload.watch(settings.preload_watch_s), name="preload-watch")
            app.state.services = Services(store=store, engine=engine, catalog=catalog, preload=preload)
            app.state.viz = VizCache(store)
            logger.info("service ready", extra={"host": settings.host, "port": settings.port})
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            await engine.stop()
            await store.close()

    docs = settings.docs_enabled
    app = FastAPI(
        title="ken-serve",
        version=service.__version__,
        summary="Many fine-tuned tasks served from one resident backbone by swapping KEN subnetworks in place.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their assets from a CDN: install_docs serves them from here
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    if docs:
        install_docs(app, openapi_url="/openapi.json")
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    for router in (
        subnetworks.router,
        predict.router,
        embeddings.router,
        tokens.router,
        rerank.router,
        completions.router,
        system.router,
        v2.health_router,
        v2.router,
    ):
        app.include_router(router)
    install_console(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes, exempt=is_upload)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)  # added last: outermost, so it sees every answer
    return app


def is_upload(method: str, path: str) -> bool:
    """Uploads stream their body against ``max_upload_bytes`` instead of ``max_request_bytes``."""
    return method == "PUT" and path.startswith(subnetworks.router.prefix + "/")
