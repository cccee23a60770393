"""``ken serve`` / ``ken push`` (their register functions), and preloading a folder at start-up."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from service.cli import register_push, register_serve, settings_from_args
from service.settings import Settings
from tests.service.conftest import TaskFiles
from tests.service.servers import ServiceThread


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="ken")
    subparsers = root.add_subparsers()
    register_serve(subparsers)
    register_push(subparsers)
    return root


def test_serve_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEN_PORT", "9001")
    monkeypatch.setenv("KEN_MAX_BATCH_SIZE", "7")
    args = parser().parse_args(["serve", "--host", "0.0.0.0", "--store-dir", str(tmp_path), "--preload", "tasks"])
    settings = settings_from_args(args)
    assert settings.host == "0.0.0.0" and settings.port == 9001 and settings.max_batch_size == 7
    assert settings.store_dir == tmp_path and settings.preload_dir == Path("tasks")
    assert settings.redis_url is None and args.handler.__name__ == "run_serve"


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEN_ADMIN_TOKEN", "")  # what compose passes for an unset ${KEN_ADMIN_TOKEN:-}
    monkeypatch.setenv("KEN_BACKBONE", "")
    settings = Settings()
    assert settings.admin_token is None and settings.backbone is None


def test_push_uploads_a_file(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = serve(make_settings(admin_token="adm"))
    path = tmp_path / "news.safetensors"
    path.write_bytes(task_files.news)

    args = parser().parse_args(["push", str(path), "--url", service.url, "--token", "adm"])
    assert args.handler(args) == 0
    assert '"task": "news"' in capsys.readouterr().out

    args = parser().parse_args(["push", str(path), "--task", "copy", "--url", service.url, "--token", "nope"])
    assert args.handler(args) == 1
    assert "HTTP 403" in capsys.readouterr().err

    args = parser().parse_args(["push", str(tmp_path / "missing.safetensors"), "--url", service.url])
    assert args.handler(args) == 1
    assert "cannot read" in capsys.readouterr().err


def test_preload_uploads_a_folder_once(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "preload"
    folder.mkdir()
    (folder / "news.safetensors").write_bytes(task_files.news)
    (folder / "five.safetensors").write_bytes(task_files.five)
    (folder / "broken.safetensors").write_bytes(b"not a subnetwork")  # logged and skipped
    (folder / "Bad Name.safetensors").write_bytes(task_files.news)  # not a task name: skipped
    (folder / "notes.txt").write_text("ignored")
    settings = make_settings(preload_dir=folder)

    first = serve(settings)
    with first.client() as client:
        listed = client.get("/v1/subnetworks").json()["subnetworks"]
        assert [(m["task"], m["version"]) for m in listed] == [("five", 1), ("news", 1)]
        assert client.post("/v1/predict", json={"task": "five", "inputs": ["goal"]}).status_code == 200
    first.stop()

    with serve(settings).client() as client:  # same store, same files: nothing re-uploaded
        listed = client.get("/v1/subnetworks").json()["subnetworks"]
        assert [(m["task"], m["version"]) for m in listed] == [("five", 1), ("news", 1)]
