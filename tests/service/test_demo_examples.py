"""examples.build_demo against the real server: once a task is served, its example is asked there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import ken
from examples import build_demo
from service.settings import Settings
from tests.service.conftest import TaskFiles
from tests.service.servers import ServiceThread


def test_await_served_asks_the_server_the_tasks_example(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "subnetworks"
    folder.mkdir()
    service = serve(make_settings(preload_dir=folder, preload_watch_s=0.05))
    path = folder / "news.safetensors"
    path.write_bytes(task_files.news)
    labels = ken.load_bytes(task_files.news).info.id2label.values()
    monkeypatch.setitem(build_demo.EXAMPLES, "news", build_demo.Example("goal match team", expected="no-such-label"))
    report = build_demo.await_served(service.url, "news", path, timeout_s=60)
    assert "news is served. Try:" in report and '"task": "news"' in report and "goal match team" in report
    assert "UNEXPECTED: no-such-label expected" in report
    answer = report.split("-> ")[1].split(" ")[0]
    assert answer in labels

    monkeypatch.setitem(build_demo.EXAMPLES, "news", build_demo.Example("goal match team", expected=answer))
    assert "(as expected)" in build_demo.await_served(service.url, "news", path, timeout_s=60)
    assert "not served by" in build_demo.await_served(service.url, "absent", path, timeout_s=0.5)


def test_the_build_waits_for_the_server_it_starts_beside(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread]
) -> None:
    assert build_demo.wait_for_server(serve(make_settings()).url, timeout_s=60)
    assert not build_demo.wait_for_server("http://127.0.0.1:9", timeout_s=0.5)  # discard port: nothing there
