"""Small helpers shared by the reliability tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.service.servers import ServiceThread


def wait_for(check: Callable[[], bool], seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached within {seconds} s"
        time.sleep(0.05)


def metric(service: ServiceThread, name: str, **labels: str) -> float:
    """One sample of the service's /metrics (0.0 when absent)."""
    text = service.client().get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def engine_of(service: ServiceThread):  # type: ignore[no-untyped-def]
    """The in-process engine of a service thread (white-box access for fault injection)."""
    return service.app.state.services.engine
