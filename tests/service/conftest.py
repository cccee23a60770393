"""Fixtures of the service tests: subnetwork files of the tiny models, reference models, Redis, running services."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

import ken
from service.settings import Settings
from tests.redis_server import RedisServer, start_redis_server
from tests.service.servers import ServiceThread
from tests.tiny_models import TinyPair, make_bert_pair

MAX_LENGTH = 64  # the tiny BERT's max_position_embeddings: the service truncates to it
OCTET = {"Content-Type": "application/octet-stream"}


@dataclass(frozen=True)
class TaskFiles:
    """Subnetwork files (bytes) of the tiny BERT tasks."""

    news: bytes  # 3 labels, k=8
    news_v2: bytes  # the same fine-tune at k=16: another version of the task
    five: bytes  # 5 labels (another head shape), k=8
    foreign: bytes  # extracted against another backbone
    news_subnetwork: ken.Subnetwork


@dataclass(frozen=True)
class Reference:
    """A materialised task model and the tokenizer settings the service uses."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    def logits(self, text: str) -> torch.Tensor:
        inputs = self.tokenizer([text], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.no_grad():
            return self.model(**inputs).logits[0]


@pytest.fixture(scope="session")
def task_files(tiny_bert: TinyPair, tiny_bert_other_task: Path, tmp_path_factory: pytest.TempPathFactory) -> TaskFiles:
    news = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=8, progress=False)
    news_v2 = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=16, progress=False)
    five = ken.extract(tiny_bert.base, tiny_bert_other_task, k=8, progress=False)
    other = make_bert_pair(tmp_path_factory.mktemp("other-backbone"), seed=7)
    foreign = ken.extract(other.base, other.finetuned, k=8, progress=False)
    return TaskFiles(
        news=ken.save_bytes(news),
        news_v2=ken.save_bytes(news_v2),
        five=ken.save_bytes(five),
        foreign=ken.save_bytes(foreign),
        news_subnetwork=news,
    )


@pytest.fixture(scope="session")
def references(
    tiny_bert: TinyPair, task_files: TaskFiles, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Reference]:
    """Per task name ('news', 'news_v2', 'five'): the materialised subnetwork model, loaded from disk.

    Built with ``ken.materialize`` and ``from_pretrained``, then laid out in memory like the service's.
    """
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert.base)
    out = {}
    for name in ("news", "news_v2", "five"):
        folder = tmp_path_factory.mktemp(f"materialized-{name}") / "model"
        ken.materialize(tiny_bert.base, ken.load_bytes(getattr(task_files, name)), folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        out[name] = Reference(model, tokenizer)
        # Same memory layout as the service (backbone in one flat buffer, head in fresh tensors), because
        # CPU matmul kernels can round differently at the last bit depending on the operands' alignment.
        # Values are untouched: this changes where the weights live, not what they are.
        ken.FlatParameters(model.base_model)
        for parameter_name, parameter in model.named_parameters():
            if not parameter_name.startswith(model.base_model_prefix + "."):
                parameter.data = parameter.data.clone()
    return out


@pytest.fixture(scope="session")
def service_redis() -> Iterator[RedisServer]:
    with start_redis_server() as server:
        yield server


@pytest.fixture
def make_settings(tiny_bert: TinyPair, tmp_path: Path, service_redis: RedisServer) -> Callable[..., Settings]:
    """Settings for a test service on the tiny backbone: ``store="directory"`` (tmp dir) or ``"redis"``."""

    def build(store: str = "directory", **overrides: Any) -> Settings:
        values: dict[str, Any] = {"backbone": tiny_bert.base, "store_dir": tmp_path / "store", "max_wait_ms": 1.0}
        if store == "redis":
            values |= {"redis_url": service_redis.url, "redis_key_prefix": f"test-{uuid.uuid4().hex[:12]}:"}
        return Settings(**(values | overrides))

    return build


@pytest.fixture
def serve() -> Iterator[Callable[[Settings], ServiceThread]]:
    """Start services in threads of the test process; all are stopped after the test."""
    started: list[ServiceThread] = []

    def start(settings: Settings) -> ServiceThread:
        service = ServiceThread(settings).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
