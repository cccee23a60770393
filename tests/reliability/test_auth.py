"""Auth, systematically: every route but the open ones refuses a missing token (401) and any wrong one (403);
tokens are compared in constant time; the server binds to loopback unless told otherwise; docs can be off.

tests/service/test_access.py covers the basic matrix (admin vs API token, loopback-only admin without a
token, the OpenAPI switch); this adds the sweep over every route of the app and the edge cases.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable

import pytest

import service.auth
from service.cli import register_serve, settings_from_args
from service.settings import Settings
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread

ADMIN, API = "admin-secret-0123456789", "api-secret-0123456789"
OPEN = {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"}


def test_tokens_are_compared_with_hmac_compare_digest_only() -> None:
    source = inspect.getsource(service.auth.check_token)
    assert "hmac.compare_digest(" in source
    tree = ast.parse(source)
    compares = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)]
    assert not compares, "tokens must not be compared with ==, != or in (not constant-time)"


def test_every_protected_route_refuses_missing_and_wrong_tokens(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> None:
    service = serve(make_settings(admin_token=ADMIN, api_token=API))
    # Every operation of the OpenAPI schema (which lists every API route of the app).
    paths = service.app.openapi()["paths"]
    protected = [(method.upper(), path) for path, ops in paths.items() if path not in OPEN for method in ops]
    assert len(protected) >= 10
    wrong_headers = {
        "no header": ({}, 401),
        "bearer without token": ({"Authorization": "Bearer"}, 401),
        "basic scheme": ({"Authorization": f"Basic {ADMIN}"}, 401),
        "wrong token": ({"Authorization": "Bearer nope"}, 403),
        "one character off": ({"Authorization": f"Bearer {ADMIN[:-1]}X"}, 403),
        "prefix": ({"Authorization": f"Bearer {ADMIN[:-1]}"}, 403),
        "longer": ({"Authorization": f"Bearer {ADMIN}0"}, 403),
        "non-ASCII bytes": ({"Authorization": "Bearer s\u00e9cret".encode()}, 403),
    }
    checked = 0
    with service.client() as client:
        for method, template in protected:
            path = template.replace("{task}", "news")
            admin = "integrity" in path or method in ("PUT", "DELETE")
            for case, (headers, status) in wrong_headers.items():
                content = task_files.news if method == "PUT" else b"{}"
                kind = OCTET if method == "PUT" else {"Content-Type": "application/json"}
                response = client.request(method, path, content=content, headers={**kind, **headers})
                assert response.status_code == status, (method, path, case, response.text)
                if status == 401:
                    assert response.headers["www-authenticate"] == "Bearer"
                checked += 1
            if admin:  # the API token is not an admin token
                response = client.request(method, path, headers={"Authorization": f"Bearer {API}"})
                assert response.status_code == 403, (method, path)
        assert client.get("/v1/subnetworks").status_code == 401
        for path in OPEN:
            assert client.get(path).status_code == 200, path
    print(f"\n{len(protected)} protected routes x {len(wrong_headers)} bad credentials: {checked} refusals")


def test_the_server_binds_to_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KEN_HOST", "KEN_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().host == "127.0.0.1" and Settings().binds_loopback
    import argparse

    parser = argparse.ArgumentParser()
    register_serve(parser.add_subparsers())
    assert settings_from_args(parser.parse_args(["serve"])).host == "127.0.0.1"
    assert settings_from_args(parser.parse_args(["serve", "--host", "0.0.0.0"])).host == "0.0.0.0"
    for host, loopback in (("localhost", True), ("::1", True), ("127.0.0.2", True), ("0.0.0.0", False),
                           ("::", False), ("10.0.0.1", False), ("example.com", False)):  # fmt: skip
        assert Settings(host=host).binds_loopback is loopback, host


def test_docs_switched_off_leave_no_schema_or_ui(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread]
) -> None:
    with serve(make_settings(docs_enabled=False)).client() as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            assert client.get(path).status_code == 404, path
