"""``ken serve`` / ``ken push`` (their register functions), and preloading a folder at start-up."""

from __future__ import annotations

import argparse
import socket
import time
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
    assert args.handler(args) == 2
    assert "HTTP 403" in capsys.readouterr().err

    args = parser().parse_args(["push", str(path), "--task", "copy", "--url", service.url])
    assert args.handler(args) == 2
    assert "HTTP 401" in (err := capsys.readouterr().err) and "--token or KEN_ADMIN_TOKEN" in err

    args = parser().parse_args(["push", str(tmp_path / "missing.safetensors"), "--url", service.url])
    assert args.handler(args) == 2
    assert "cannot read" in capsys.readouterr().err


def test_push_reports_bad_files_urls_and_refused_connections_as_bad_input(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = serve(make_settings())
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a subnetwork at all")
    args = parser().parse_args(["push", str(junk), "--url", service.url])
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert "HTTP 400" in err and "not a subnetwork file" in err  # the server's own explanation

    news = tmp_path / "news.safetensors"
    news.write_bytes(task_files.news)
    args = parser().parse_args(["push", str(news), "--task", "Bad Name", "--url", service.url])
    assert args.handler(args) == 2
    assert "HTTP 4" in capsys.readouterr().err

    # The API's prefix in --url (a common slip) still reaches the upload route, not a false "413".
    args = parser().parse_args(["push", str(news), "--url", service.url + "/v1/"])
    assert args.handler(args) == 0
    assert '"task": "news"' in capsys.readouterr().out

    with socket.socket() as closed:  # a port with nothing listening
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    args = parser().parse_args(["push", str(news), "--url", f"http://127.0.0.1:{port}"])
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert "nothing answers at" in err and "--url or KEN_URL" in err


def test_serve_on_a_busy_port_exits_2_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # A backbone folder that does not exist: reaching the loading step would fail differently.
        args = parser().parse_args(["serve", "--port", str(port), "--backbone", str(tmp_path / "absent")])
        assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port N or KEN_PORT=N" in err
    assert "service ready" not in caplog.text


def test_serve_flags_for_watching_and_truncation(monkeypatch: pytest.MonkeyPatch) -> None:
    args = parser().parse_args(["serve", "--watch", "2", "--expect", "news, five", "--max-length", "64"])
    settings = settings_from_args(args)
    assert settings.preload_watch_s == 2 and settings.preload_expect == ["news", "five"]
    assert settings.max_sequence_length == 64
    monkeypatch.setenv("KEN_PRELOAD_EXPECT", "a,b")
    assert Settings().preload_expect == ["a", "b"]


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


def test_a_watched_preload_folder_serves_tasks_as_they_arrive(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "arriving"  # does not exist yet: the builder creates it
    service = serve(make_settings(preload_dir=folder, preload_watch_s=0.05, preload_expect=["news", "five"]))
    with service.client() as client:
        readiness = client.get("/readyz").json()
        assert readiness["ready"] and readiness["pending_tasks"] == ["news", "five"]
        assert "waiting for tasks: news, five" in readiness["detail"]

        folder.mkdir()
        (folder / "broken.safetensors").write_bytes(b"half a file")  # skipped, the watch goes on
        (folder / "news.safetensors").write_bytes(task_files.news)
        listed = wait_for(lambda: client.get("/v1/subnetworks").json()["subnetworks"])
        assert [m["task"] for m in listed] == ["news"]
        assert client.get("/readyz").json()["pending_tasks"] == ["five"]
        assert client.post("/v1/predict", json={"task": "news", "inputs": ["goal"]}).status_code == 200

        (folder / "five.safetensors").write_bytes(task_files.five)
        wait_for(lambda: not client.get("/readyz").json()["pending_tasks"])
        assert client.get("/readyz").json()["detail"] is None


def wait_for(condition: Callable[[], object], timeout_s: float = 30.0) -> object:
    """Poll ``condition`` until it returns something truthy (a generous limit: not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value
