"""The embedding example's data and metric: distinct (line, reply) pairs, a disjoint split, correct ranks."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from examples.embedding_finetune import dialogue_pairs, retrieval_metrics


@pytest.mark.skipif(importlib.util.find_spec("chatterbot_corpus") is None, reason="chatterbot-corpus not installed")
def test_dialogue_pairs_are_distinct_and_split_disjointly() -> None:
    (train_lines, train_replies), (test_lines, test_replies) = dialogue_pairs(seed=0)
    assert len(train_lines) == len(train_replies) and len(test_lines) == len(test_replies)
    assert round(0.2 * (len(train_lines) + len(test_lines))) == len(test_lines) > 100
    lines = [line.lower() for line in train_lines + test_lines]
    replies = [reply.lower() for reply in train_replies + test_replies]
    assert len(set(lines)) == len(lines) and len(set(replies)) == len(replies)  # one right answer per query
    assert dialogue_pairs(seed=0) == ((train_lines, train_replies), (test_lines, test_replies))  # seeded
    assert dialogue_pairs(seed=1)[1][0] != test_lines


def test_retrieval_metrics_rank_the_relevant_document() -> None:
    documents = torch.eye(4)
    queries = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0], [0, 0.5, 0.2, 0.1]])
    # query 0: rank 1; query 1: document 0 scores higher than its own -> rank 2; query 2: rank 1; query 3: rank 3
    metrics = retrieval_metrics(queries, documents)
    assert metrics["recall@1"] == pytest.approx(0.5)
    assert metrics["recall@5"] == pytest.approx(1.0)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 3) / 4)
