"""The API docs pages (Swagger UI at ``/docs``, ReDoc at ``/redoc``) with their assets served by this app.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank offline. The assets
come from the ``fastapi-offline`` package (MIT; Swagger UI 5 and ReDoc bundles), used for its files only.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PREFIX = "/docs/assets"


def assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI, *, openapi_url: str, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve both docs pages and their assets; the app must be created with ``docs_url=None, redoc_url=None``."""
    title = app.title
    favicon = f"{ASSETS_PREFIX}/favicon.png"
    oauth2_redirect = f"{docs_url}/oauth2-redirect"
    app.mount(ASSETS_PREFIX, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSETS_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PREFIX}/swagger-ui.css",
            swagger_favicon_url=favicon,
            oauth2_redirect_url=oauth2_redirect,
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from the online validator
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSETS_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
