"""Shared fixtures: offline mode, tiny model folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny_models import TinyPair, make_bert_pair, make_bert_task, make_gpt2_pair


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    """A tiny BERT backbone folder (with tokenizer) and a fine-tuned 3-label classifier folder."""
    return make_bert_pair(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_bert_other_task(tmp_path_factory: pytest.TempPathFactory, tiny_bert: TinyPair) -> Path:
    """A second fine-tune of the same tiny backbone, with 5 labels (a different head shape)."""
    root = tmp_path_factory.mktemp("tiny-bert-5")
    pair = make_bert_pair(root, seed=0, num_labels=5)
    # make_bert_pair with the same seed rebuilds the identical backbone; use its fine-tune only.
    return pair.finetuned


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    return make_gpt2_pair(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_bert_kinds(tmp_path_factory: pytest.TempPathFactory, tiny_bert: TinyPair) -> dict[str, Path]:
    """Fine-tunes of the tiny backbone by task type: token-classification, pair-scoring, feature-extraction."""
    root = tmp_path_factory.mktemp("tiny-bert-kinds")
    kinds = ("token-classification", "pair-scoring", "feature-extraction")
    return {kind: make_bert_task(tiny_bert.base, root / kind, kind) for kind in kinds}
