"""The console page, its KEN_viz images and the API docs pages, over HTTP (the browser test is test_console_browser)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

import ken
from service import console_viz
from service.api.console import CONSOLE_DIR
from service.settings import Settings
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread

TOKEN = "console-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def service(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> ServiceThread:
    service = serve(make_settings(api_token=TOKEN))
    with service.client() as client:
        assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
    return service


def test_the_console_page_and_its_assets_are_served(service: ServiceThread) -> None:
    with service.client() as client:  # the page itself is open; what it shows comes from the API with the token
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', page.text)
        assert sorted(assets) == ["/console/static/console.css", "/console/static/console.js"]
        for asset, media_type in zip(sorted(assets), ("text/css", "text/javascript"), strict=True):
            response = client.get(asset)
            assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        assert client.get("/console/static/missing.js").status_code == 404


@pytest.mark.parametrize("path", sorted(CONSOLE_DIR.iterdir()), ids=lambda path: path.name)
def test_the_console_names_no_other_host(path: Path) -> None:
    """Everything the page loads comes from this server: no absolute URL, no protocol-relative one."""
    text = path.read_text()
    assert not re.search(r"https?://|(?:src|href|url)\s*[=(]\s*[\"']?//", text), path.name


def test_docs_pages_load_their_assets_from_this_server(service: ServiceThread) -> None:
    with service.client() as client:
        for page, assets in (("/docs", 2), ("/redoc", 1)):
            html = client.get(page)
            assert html.status_code == 200
            urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", html.text)
            scripts = [url for url in urls if url.endswith((".js", ".css"))]
            assert len(scripts) == assets and all(url.startswith("/docs/assets/") for url in scripts), urls
            assert "http" not in html.text.replace("http-equiv", ""), "a docs page names another host"
            for url in scripts:
                response = client.get(url)
                assert response.status_code == 200 and len(response.content) > 100_000, url
        assert client.get("/openapi.json").json()["info"]["title"] == "ken-serve"


def test_docs_can_be_turned_off(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread]
) -> None:
    service = serve(make_settings(docs_enabled=False))
    with service.client() as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css"):
            assert client.get(path).status_code == 404, path
        assert client.get("/").status_code == 200  # the console does not depend on the docs


def test_ken_viz_images_are_rendered_once_per_version(
    service: ServiceThread, task_files: TaskFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    renders: list[int] = []
    real_render = console_viz.render_views

    def counting_render(subnetwork: ken.Subnetwork) -> dict[str, bytes]:
        renders.append(subnetwork.info.k)
        return real_render(subnetwork)

    monkeypatch.setattr(console_viz, "render_views", counting_render)
    with service.client(TOKEN) as client:
        index = client.get("/console/viz/news").json()
        assert index["task"] == "news" and index["version"] == 1
        views = [image["view"] for image in index["images"]]
        assert views[:3] == ["retention", "matrix", "neighbours"] and set(views) <= set(console_viz.VIEWS)
        first = {}
        for image in index["images"]:
            response = client.get(image["url"])
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert response.content.startswith(PNG_MAGIC) and response.headers["x-ken-task-version"] == "1"
            first[image["view"]] = response.content
        assert renders == [8]  # one render served the index and every image

        assert client.put("/v1/subnetworks/news", content=task_files.news_v2, headers=OCTET).status_code == 201
        replaced = client.get("/console/viz/news/matrix.png")
        assert replaced.headers["x-ken-task-version"] == "2" and replaced.content != first["matrix"]
        assert renders == [8, 16]

        assert client.get("/console/viz/news/nonsense.png").status_code == 422
        missing = client.get("/console/viz/newz")
        assert missing.status_code == 404 and "did you mean 'news'" in missing.json()["detail"]
    with service.client() as anonymous:
        for path in ("/console/viz/news", "/console/viz/news/matrix.png"):  # they show what a task stores: API access
            assert anonymous.get(path).status_code == 401, path
