"""The fine-tuning recipe and the ``ken finetune`` subcommand, on the tiny BERT fixture."""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertTokenizerFast

from ken.errors import KenError
from ken.finetune import (
    TRAINING_LOG,
    accuracy,
    finetune,
    macro_f1,
    predict_labels,
    read_jsonl,
    register,
    resolve_labels,
    write_jsonl,
)
from tests.tiny_models import TinyPair

TOPICS = {
    "sport": "goal match team win score player league cup".split(),
    "business": "market shares profit bank economy growth".split(),
    "culture": "film music actor award song band".split(),
}
FILLER = "the a of and to in is it that was for on".split()
NAMES = list(TOPICS)
SETTINGS = {"epochs": 10, "max_length": 16, "batch_size": 8, "lr": 3e-3, "seed": 0, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    barriers make every small op wait for a descheduled thread: one thread is ~10x faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_data(n_per_label: int = 32, seed: int = 0) -> tuple[list[str], list[int]]:
    """Sentences of a few topic words mixed with filler: linearly separable by vocabulary."""
    rng = random.Random(seed)
    texts, labels = [], []
    for label, name in enumerate(NAMES):
        for _ in range(n_per_label):
            words = rng.sample(TOPICS[name], 3) + rng.sample(FILLER, 3)
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def tiny_base(tiny_bert: TinyPair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT backbone, with a tokenizer that knows the vocabulary.

    ``BertTokenizerFast(vocab_file=...)`` (as tests/tiny_models.py builds it) ignores the file under
    transformers 5 and tokenises every word to ``[UNK]``, so nothing could be learnt from text; this
    copy gets a tokenizer built from the same vocabulary (a no-op once the fixture is fixed).
    """
    folder = tmp_path_factory.mktemp("tiny-base") / "base"
    shutil.copytree(tiny_bert.base, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.convert_tokens_to_ids("goal") == tokenizer.unk_token_id:
        vocab = (folder / "vocab.txt").read_text().split()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink(missing_ok=True)
        BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts, labels = toy_data()
    return finetune(tiny_base, texts, labels, NAMES, tmp_path_factory.mktemp("ft") / "model", **SETTINGS)


def test_training_lowers_loss_and_fits_the_data(trained: Path) -> None:
    log = json.loads((trained / TRAINING_LOG).read_text())
    losses = log["epoch_losses"]
    assert len(losses) == SETTINGS["epochs"]
    assert losses[-1] < 0.5 * losses[0]
    texts, labels = toy_data()
    predicted = predict_labels(trained, None, texts, max_length=16, batch_size=7)
    assert accuracy(labels, predicted) >= 0.9


def test_writes_a_loadable_classifier_folder(trained: Path) -> None:
    assert (trained / "model.safetensors").is_file()
    assert not list(trained.glob("*.bin"))
    model = AutoModelForSequenceClassification.from_pretrained(trained, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(trained, local_files_only=True)
    assert model.config.id2label == dict(enumerate(NAMES))
    assert model.config.label2id == {name: i for i, name in enumerate(NAMES)}
    assert model.config.architectures == ["BertForSequenceClassification"]
    texts, _ = toy_data(2, seed=5)
    assert predict_labels(model, tokenizer, texts, 16) == predict_labels(trained, None, texts, 16)
    assert not [p for p in trained.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_deterministic_for_a_seed(tiny_base: Path, trained: Path, tmp_path: Path) -> None:
    texts, labels = toy_data()
    again = finetune(tiny_base, texts, labels, NAMES, tmp_path / "again", **SETTINGS)
    first, second = load_file(trained / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    other = finetune(tiny_base, texts, labels, NAMES, tmp_path / "other", **{**SETTINGS, "epochs": 1, "seed": 1})
    one_epoch = finetune(tiny_base, texts, labels, NAMES, tmp_path / "one", **{**SETTINGS, "epochs": 1})
    third, fourth = load_file(other / "model.safetensors"), load_file(one_epoch / "model.safetensors")
    assert not torch.equal(third["classifier.weight"], fourth["classifier.weight"])


def test_embedding_rows_of_unseen_tokens_stay_pretrained(tiny_base: Path, trained: Path) -> None:
    base = load_file(tiny_base / "model.safetensors")
    tuned = load_file(trained / "model.safetensors")
    key = next(k for k in base if k.endswith("word_embeddings.weight"))
    tuned_key = next(k for k in tuned if k.endswith("word_embeddings.weight"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    unseen = tokenizer.convert_tokens_to_ids(["election", "minister", "phone", "software"])
    seen = tokenizer.convert_tokens_to_ids(["goal", "profit", "film"])
    assert torch.equal(base[key][unseen], tuned[tuned_key][unseen])
    assert not torch.equal(base[key][seen], tuned[tuned_key][seen])


def test_rejects_bad_input(tiny_base: Path, trained: Path, tmp_path: Path) -> None:
    texts, labels = toy_data(2)
    with pytest.raises(KenError, match="texts but"):
        finetune(tiny_base, texts, labels[:-1], NAMES, tmp_path / "a", **SETTINGS)
    with pytest.raises(KenError, match="not an id"):
        finetune(tiny_base, texts, [*labels[:-1], 3], NAMES, tmp_path / "b", **SETTINGS)
    with pytest.raises(KenError, match="epochs"):
        finetune(tiny_base, texts, labels, NAMES, tmp_path / "c", **{**SETTINGS, "epochs": 0})
    with pytest.raises(KenError, match="not empty"):
        finetune(tiny_base, texts, labels, NAMES, trained, **SETTINGS)
    with pytest.raises(KenError, match=r"config\.json"):
        finetune(tmp_path, texts, labels, NAMES, tmp_path / "d", **SETTINGS)


def test_metrics() -> None:
    gold = [0, 0, 1, 1, 2, 2]
    predicted = [0, 1, 1, 1, 0, 2]
    assert accuracy(gold, predicted) == pytest.approx(4 / 6)
    # F1 per label: 0 -> 2·1/(2+1+1) = 0.5; 1 -> 2·2/(4+1+0) = 0.8; 2 -> 2·1/(2+0+1) = 2/3
    assert macro_f1(gold, predicted) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert macro_f1(gold, predicted, num_labels=4) == pytest.approx((0.5 + 0.8 + 2 / 3) / 4)
    assert macro_f1(gold, gold) == 1.0
    with pytest.raises(ValueError):
        accuracy([0], [0, 1])


def test_jsonl_round_trip_and_labels(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ["a b", "ünï"], ["x", "y"])
    assert read_jsonl(path) == (["a b", "ünï"], ["x", "y"])
    assert resolve_labels(["y", "x", "y"], None) == ([1, 0, 1], ["x", "y"])
    assert resolve_labels(["y", "x"], ["y", "x"]) == ([0, 1], ["y", "x"])
    assert resolve_labels([1, 0], None) == ([1, 0], ["LABEL_0", "LABEL_1"])
    with pytest.raises(KenError, match="not one of"):
        resolve_labels(["z"], ["x", "y"])
    with pytest.raises(KenError, match="mix"):
        resolve_labels(["x", 1], None)
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "", "label": "x"}\n')
    with pytest.raises(KenError, match=r"bad\.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ken")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_subcommand_end_to_end(tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = toy_data()
    train = write_jsonl(tmp_path / "train.jsonl", texts, [NAMES[i] for i in labels])
    argv = ["finetune", "--base", str(tiny_base), "--train-file", str(train), "--output", str(tmp_path / "out")]
    argv += ["--epochs", "10", "--max-length", "16", "--batch-size", "8", "--lr", "3e-3", "--seed", "0"]
    argv += ["--labels", ",".join(NAMES), "--eval-file", str(train), "--quiet"]
    args = _parser().parse_args(argv)
    assert args.epochs == 10 and args.lr == 3e-3 and args.max_length == 16
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "macro-F1" in out
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", local_files_only=True)
    assert model.config.id2label == dict(enumerate(NAMES))
    # Same data, seed and settings as the ``trained`` fixture through the Python API.
    assert accuracy(labels, predict_labels(tmp_path / "out", None, texts, 16)) >= 0.9


def test_cli_rejects_bad_arguments(tiny_base: Path, tmp_path: Path) -> None:
    parser = _parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--base", "b", "--train-file", "t", "--output", "o", "--epochs", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--base", "b", "--output", "o"])
    single = write_jsonl(tmp_path / "one.jsonl", ["goal match"], ["sport"])
    args = parser.parse_args(["finetune", "--base", str(tiny_base), "--train-file", str(single), "--output", "o"])
    with pytest.raises(KenError, match="single label"):
        args.handler(args)


def test_registered_in_the_ken_command_line(tiny_base: Path, tmp_path: Path) -> None:
    cli = pytest.importorskip("ken.cli")
    texts, labels = toy_data(4)
    train = write_jsonl(tmp_path / "train.jsonl", texts, [NAMES[i] for i in labels])
    argv = ["finetune", "--base", str(tiny_base), "--train-file", str(train), "--output", str(tmp_path / "o")]
    assert cli.main([*argv, "--epochs", "1", "--max-length", "16", "--quiet"]) == 0
    assert (tmp_path / "o" / "model.safetensors").is_file()
    assert cli.main([*argv, "--epochs", "1"]) == 2  # output exists: a usage error, not a traceback
