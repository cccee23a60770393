"""Fixtures of the reliability suite: the service suite's fixtures (tiny BERT tasks, references, Redis, servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.service.conftest import (  # noqa: F401  (re-exported fixtures)
    make_settings,
    references,
    serve,
    service_redis,
    task_files,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a busy 2-core machine: torch's second intra-op thread mostly spins (10x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
