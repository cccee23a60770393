"""Static checks of Dockerfile and docker-compose.yml (no Docker engine here): they agree with the settings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
SETTING_FIELDS = set(Settings.model_fields)


def setting_name(variable: str) -> str:
    assert variable.startswith("KEN_"), variable
    return variable.removeprefix("KEN_").lower()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_compose_runs_redis_and_the_service_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "ken"}
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    ken = services["ken"]
    assert ken["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(ken["healthcheck"]["test"])
    assert ken["build"]["context"] == "."
    assert {"BASE_IMAGE", "TORCH_INDEX_URL"} <= set(ken["build"]["args"])


def test_compose_environment_matches_the_settings(compose: dict[str, Any]) -> None:
    ken = compose["services"]["ken"]
    environment = ken["environment"]
    unknown = sorted(name for name in environment if setting_name(name) not in SETTING_FIELDS)
    assert not unknown, f"not settings: {unknown}"
    port = environment["KEN_PORT"]
    assert [mapping.split(":")[-1] for mapping in ken["ports"]] == [port]
    assert f":{port}/readyz" in " ".join(ken["healthcheck"]["test"])
    assert environment["KEN_HOST"] == "0.0.0.0"
    # The Redis URL names the compose service and the port Redis listens on.
    assert re.fullmatch(r"redis://redis:6379/\d+", environment["KEN_REDIS_URL"])
    for name in ("KEN_DEVICE", "KEN_DTYPE"):
        default = environment[name].split(":-")[-1].rstrip("}")
        Settings(**{setting_name(name): default})  # a valid value


def test_compose_mounts_a_backbone_volume(compose: dict[str, Any]) -> None:
    mounts = compose["services"]["ken"]["volumes"]
    assert "backbone:/models:ro" in mounts
    assert "backbone" in compose["volumes"]


def test_dockerfile_builds_cpu_by_default_and_cuda_by_argument(dockerfile: str) -> None:
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.MULTILINE)
    assert "ARG TORCH_VERSION=2.13.0" in dockerfile
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    torch_install = dockerfile.index('pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"')
    project_install = dockerfile.index('pip install ".[serve]"')
    assert torch_install < project_install, "torch must be installed before the project"
    assert "nvidia/cuda" in dockerfile  # the documented CUDA build argument


def test_dockerfile_environment_port_and_command_match_the_settings(dockerfile: str) -> None:
    variables = re.findall(r"\b(KEN_[A-Z_]+)=", dockerfile)
    assert variables and all(setting_name(v) in SETTING_FIELDS for v in variables)
    port = re.search(r"KEN_PORT=(\d+)", dockerfile)
    assert port is not None and re.search(rf"^EXPOSE {port.group(1)}$", dockerfile, re.MULTILINE)
    healthcheck = re.search(r"^\s+CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert healthcheck is not None and "/readyz" in " ".join(json.loads(healthcheck.group(1)))
    assert re.search(r'^CMD \["ken", "serve"\]$', dockerfile, re.MULTILINE)
    assert re.search(r"^USER \w+$", dockerfile, re.MULTILINE), "run as an unprivileged user"


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") :][:5] == ["*", "!pyproject.toml", "!README.md", "!ken/", "!service/"]
