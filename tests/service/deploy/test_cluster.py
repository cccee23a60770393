"""Starting a local Ray cluster: a raylet that misses Ray's registration window gets another try."""

from __future__ import annotations

import pytest
import ray

from service.deploy.cluster import start_local

TIMED_OUT = Exception("The current node timed out during startup. This could happen because ...")


def fake_ray(monkeypatch: pytest.MonkeyPatch, failures: list[Exception]) -> list[str]:
    calls: list[str] = []

    def init(**options: object) -> None:
        calls.append("init")
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    return calls


def test_a_startup_timeout_is_tried_again_after_cleaning_up(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_ray(monkeypatch, [TIMED_OUT, TIMED_OUT])
    start_local(num_cpus=1)
    assert calls == ["init", "shutdown", "init", "shutdown", "init"]


def test_other_errors_and_the_last_timeout_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ray(monkeypatch, [ValueError("bad option")])
    with pytest.raises(ValueError, match="bad option"):
        start_local(num_cpus=1)
    fake_ray(monkeypatch, [TIMED_OUT, TIMED_OUT])
    with pytest.raises(Exception, match="timed out during startup"):
        start_local(num_cpus=1, attempts=2)
