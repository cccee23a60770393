"""Fixtures of the reliability suite: the service suite's fixtures (tiny BERT tasks, references, Redis, servers)."""

from __future__ import annotations

from tests.service.conftest import (  # noqa: F401  (re-exported fixtures)
    make_settings,
    references,
    serve,
    service_redis,
    task_files,
)
