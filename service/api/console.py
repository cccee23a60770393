"""The console: a page for people at ``/`` (plain HTML, JS and CSS from ``service/console``) and its KEN_viz images.

The page uses the public API from the browser (tasks, predictions, uploads, ``/metrics``); the only
routes of its own are the static files and the images. Nothing on it is loaded from elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from service.console_viz import VIEWS, VizCache
from service.deps import ApiAccess, TaskName
from service.errors import InvalidInput

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
STATIC_PREFIX = "/console/static"

router = APIRouter(tags=["console"], include_in_schema=False)


class VizImage(BaseModel):
    view: str
    description: str
    url: str


class VizIndex(BaseModel):
    task: str
    version: int
    images: list[VizImage]


def get_viz(request: Request) -> VizCache:
    return request.app.state.viz


VizDep = Annotated[VizCache, Depends(get_viz)]


@router.get("/")
async def console_page() -> FileResponse:
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/console/viz/{task}", dependencies=[ApiAccess])
async def viz_index(task: TaskName, viz: VizDep) -> VizIndex:
    """The KEN_viz views of the task's current version (rendered now if they are not cached)."""
    images = await viz.images(task)
    return VizIndex(
        task=images.task,
        version=images.version,
        images=[
            VizImage(view=view, description=VIEWS[view], url=f"/console/viz/{task}/{view}.png") for view in images.png
        ],
    )


@router.get("/console/viz/{task}/{view}.png", dependencies=[ApiAccess])
async def viz_image(task: TaskName, view: str, viz: VizDep) -> Response:
    images = await viz.images(task)
    if view not in images.png:
        raise InvalidInput(f"no view {view!r} for task {task!r}; it has: {', '.join(images.png)}")
    return Response(
        images.png[view],
        media_type="image/png",
        headers={"Cache-Control": "no-cache", "X-Ken-Task-Version": str(images.version)},
    )


def install_console(app: FastAPI) -> None:
    """The page, its static files and the image routes."""
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=CONSOLE_DIR), name="console-static")
