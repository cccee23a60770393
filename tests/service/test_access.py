"""Bearer tokens on admin and inference routes, admin routes without a token, and the OpenAPI switch."""

from __future__ import annotations

from collections.abc import Callable

from service.settings import Settings
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread

ADMIN, API = "admin-secret", "api-secret"


def test_tokens_are_required_and_checked(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> None:
    service = serve(make_settings(admin_token=ADMIN, api_token=API))
    put = {"url": "/v1/subnetworks/news", "content": task_files.news, "headers": OCTET}
    with service.client() as anonymous, service.client("wrong") as wrong, service.client(API) as user:
        missing = anonymous.put(**put)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert wrong.put(**put).status_code == 403
        assert user.put(**put).status_code == 403  # the API token is not an admin token
        with service.client(ADMIN) as admin:
            assert admin.put(**put).status_code == 201
            assert admin.get("/v1/backbone/integrity").json()["intact"] is True
            assert user.get("/v1/backbone/integrity").status_code == 403

        body = {"task": "news", "inputs": ["goal"]}
        assert anonymous.post("/v1/predict", json=body).status_code == 401
        assert wrong.post("/v1/predict", json=body).status_code == 403
        assert user.post("/v1/predict", json=body).status_code == 200
        assert anonymous.get("/v1/subnetworks").status_code == 401
        assert user.get("/v1/subnetworks/news").status_code == 200
        assert anonymous.post("/v2/models/news/infer", json={}).json() == {
            "error": "this route needs 'Authorization: Bearer <token>'"
        }
        assert anonymous.delete("/v1/subnetworks/news").status_code == 401
        assert user.delete("/v1/subnetworks/news").status_code == 403

        for open_route in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"):
            assert anonymous.get(open_route).status_code == 200, open_route


def test_without_an_admin_token_admin_routes_are_open_on_loopback_only(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> None:
    # The test server always listens on 127.0.0.1; the settings say where a real one would bind.
    loopback = serve(make_settings(host="127.0.0.1"))
    exposed = serve(make_settings(host="0.0.0.0", store_dir=loopback.settings.store_dir))
    with loopback.client() as client:
        assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
    with exposed.client() as client:
        refused = client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET)
        assert refused.status_code == 403 and "KEN_ADMIN_TOKEN" in refused.json()["detail"]
        assert client.delete("/v1/subnetworks/news").status_code == 403
        assert client.post("/v1/predict", json={"task": "news", "inputs": ["goal"]}).status_code == 200


def test_openapi_docs_can_be_switched_off(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread]
) -> None:
    with serve(make_settings()).client() as client:
        schema = client.get("/openapi.json").json()
        upload = schema["paths"]["/v1/subnetworks/{task}"]["put"]
        assert "application/octet-stream" in upload["requestBody"]["content"]
        assert client.get("/docs").status_code == 200
    with serve(make_settings(docs_enabled=False)).client() as client:
        assert client.get("/openapi.json").status_code == 404
        assert client.get("/docs").status_code == 404
