"""examples.check_served on the tiny models: the real server (a subprocess) predicts what the
subnetwork predicts offline, input by input, including inputs cut at the length limit."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from transformers import AutoTokenizer, BertTokenizerFast

import ken
from examples import check_served
from ken.finetune import finetune
from tests.tiny_models import WORDS, TinyPair

TOPICS = {
    "sport": "goal match team win score player league cup".split(),
    "business": "market shares profit bank economy growth".split(),
    "culture": "film music actor award song band".split(),
}
FILLER = "the a of and to in is it that was for on".split()


@pytest.fixture(scope="module")
def served_setup(
    tiny_bert: TinyPair, tiny_bert_other_task: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """A tiny backbone folder whose tokenizer knows its vocabulary, and a folder of two subnetworks."""
    root = tmp_path_factory.mktemp("served")
    base = root / "base"
    shutil.copytree(tiny_bert.base, base)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if tokenizer.convert_tokens_to_ids("goal") == tokenizer.unk_token_id:
        # tests/tiny_models.py's BertTokenizerFast(vocab_file=...) is ignored by transformers 5 (all [UNK]).
        vocab = (base / "vocab.txt").read_text().split()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (base / name).unlink(missing_ok=True)
        BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True).save_pretrained(base)
    # A real (tiny) fine-tune, so that predictions differ from input to input; and the fixture's
    # 5-label fine-tune (another head shape).
    texts, labels = topic_data()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add OpenMP overhead
    try:
        news = finetune(
            base,
            texts,
            labels,
            list(TOPICS),
            root / "news",
            epochs=10,
            max_length=16,
            batch_size=8,
            lr=3e-3,
            seed=0,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    subnetworks = root / "subnetworks"
    ken.save_file(ken.extract(base, news, k=8, progress=False), subnetworks / "news.safetensors")
    ken.save_file(ken.extract(base, tiny_bert_other_task, k=8, progress=False), subnetworks / "five.safetensors")
    return base, subnetworks


def topic_data(n_per_label: int = 32) -> tuple[list[str], list[int]]:
    rng = random.Random(0)
    texts, labels = [], []
    for label, words in enumerate(TOPICS.values()):
        for _ in range(n_per_label):
            texts.append(" ".join(rng.sample(words, 3) + rng.sample(FILLER, 3)))
            labels.append(label)
    return texts, labels


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = [" ".join(rng.choices(WORDS, k=rng.randint(1, 20))) for _ in range(n)]
    out += [" ".join(rng.choices(WORDS, k=90)) for _ in range(4)]  # longer than the 64-token limit
    return out


def test_served_labels_equal_offline_labels(served_setup: tuple[Path, Path], tmp_path: Path) -> None:
    base, subnetworks = served_setup
    texts = {"news": sentences(70, seed=1), "five": sentences(45, seed=2)}
    results = check_served.check_all(base, subnetworks, texts, batch_size=16, log_path=tmp_path / "server.log")
    assert [r.task for r in results] == ["news", "five"]
    for result in results:
        assert result.inputs == len(texts[result.task])
        assert result.mismatches == 0, check_served.format_table(results)
        assert result.max_logit_diff < 1e-4
    assert results[0].distinct_labels >= 2, "a vacuous comparison: the fine-tuned task predicts one label"
    assert "| news | 74 | 0 |" in check_served.format_table(results)


def test_main_reports_missing_subnetworks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_served.main(["--cache", str(tmp_path), "--task", "bbc-news"]) == 2
    assert "build_demo" in capsys.readouterr().err
