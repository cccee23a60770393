"""``ken serve --ray``: the flags become the scale-out plan handed to the cluster code."""

from __future__ import annotations

import argparse

import pytest

import service.deploy.cluster
from service.cli import register_serve
from service.deploy.ray_app import ScaleOut
from service.settings import Settings


def parse(*argv: str) -> argparse.Namespace:
    root = argparse.ArgumentParser(prog="ken")
    register_serve(root.add_subparsers())
    return root.parse_args(["serve", *argv])


def test_ray_flags_reach_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Settings, ScaleOut, str | None]] = []
    monkeypatch.setattr(service.deploy.cluster, "serve_until_stopped", lambda *call: seen.append(call))
    args = parse(
        "--ray", "--replicas", "3", "--gpus-per-replica", "1", "--max-models-per-replica", "5",
        "--ray-address", "ray://head:10001", "--port", "9100",
    )  # fmt: skip
    assert args.handler(args) == 0
    settings, scale, address = seen[0]
    assert scale == ScaleOut(replicas=3, cpus_per_replica=1.0, gpus_per_replica=1.0, max_models_per_replica=5)
    assert address == "ray://head:10001" and settings.port == 9100


@pytest.mark.parametrize("flag", ["--replicas", "--max-models-per-replica"])
def test_zero_replicas_or_models_is_refused_before_ray_starts(
    flag: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(service.deploy.cluster, "serve_until_stopped", pytest.fail)
    args = parse("--ray", flag, "0")
    assert args.handler(args) == 2
    assert "at least 1" in capsys.readouterr().err
