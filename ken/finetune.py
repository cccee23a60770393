"""A small, generic fine-tuning recipe for sequence classification (plain PyTorch, no ``Trainer``).

It exists so that the project can produce its own fine-tuned checkpoints to extract subnetworks
from: AdamW with a linear warm-up then linear decay, dynamic padding, a tqdm bar showing the loss,
and bit-identical weights for a given seed on a given machine (the classifier's initialisation,
dropout and the shuffling all derive from ``seed``).

The ``ken finetune`` subcommand trains on a JSON Lines file, one ``{"text": ..., "label": ...}``
object per line; labels are label names (strings) or ids (integers)::

    ken finetune --base all-MiniLM-L6-v2/ --train-file train.jsonl --output ft/ \\
        --epochs 3 --max-length 128 --batch-size 16 --lr 1e-4 --seed 0 --eval-file test.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ken.errors import KenError

#: Share of the optimisation steps spent warming the learning rate up from zero.
WARMUP_RATIO = 0.1
#: Written next to the weights: the settings and the per-epoch mean training loss.
TRAINING_LOG = "training_log.json"


def _check_folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise KenError(f"{folder} is not a Hugging Face model folder (no config.json there)")
    return folder


def _validate(texts: Sequence[str], labels: Sequence[int], label_names: Sequence[str], **settings: float | int) -> None:
    if len(texts) != len(labels):
        raise KenError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise KenError("no training examples")
    if len(label_names) < 2:
        raise KenError(f"need at least 2 label names, got {list(label_names)!r}")
    if len(set(label_names)) != len(label_names):
        raise KenError(f"label names are not unique: {list(label_names)!r}")
    bad = [label for label in labels if isinstance(label, bool) or not isinstance(label, int)]
    bad += [label for label in labels if isinstance(label, int) and not 0 <= label < len(label_names)]
    if bad:
        raise KenError(f"label {bad[0]!r} is not an id in 0..{len(label_names) - 1}")
    for name, value in settings.items():
        if not value > 0:
            raise KenError(f"{name} must be > 0, got {value!r}")


def _batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def _collate(tokenizer: Any, encodings: list[dict[str, list[int]]], ids: Sequence[int]) -> dict[str, torch.Tensor]:
    return tokenizer.pad([encodings[i] for i in ids], padding=True, return_tensors="pt")


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
    batch = tokenizer(list(texts), truncation=True, max_length=max_length)
    keys = list(batch.keys())
    return [{key: batch[key][i] for key in keys} for i in range(len(texts))]


def finetune(
    base_dir: str | os.PathLike[str],
    texts: Sequence[str],
    labels: Sequence[int],
    label_names: Sequence[str],
    output_dir: str | os.PathLike[str],
    *,
    epochs: int,
    max_length: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Fine-tune the model in ``base_dir`` as a sequence classifier and save it to ``output_dir``.

    ``labels`` are ids into ``label_names``. The folder gets the model (safetensors), its config
    (with ``id2label``/``label2id``), the tokenizer files and :data:`TRAINING_LOG`. The folder is
    written under a temporary name and renamed at the end, so an interrupted run leaves nothing
    that looks finished. With ``weight_decay == 0`` (the default) embedding rows of tokens that
    never occur in the training texts keep their pretrained values exactly.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    base = _check_folder(base_dir)
    out = Path(output_dir)
    _validate(texts, labels, label_names, epochs=epochs, max_length=max_length, batch_size=batch_size, lr=lr)
    if weight_decay < 0:
        raise KenError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise KenError(f"{out} exists and is not empty; choose a new output folder")

    started = time.perf_counter()
    torch.manual_seed(seed)
    id2label = {i: str(name) for i, name in enumerate(label_names)}
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were newly initialized" is the point here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            num_labels=len(label_names),
            id2label=id2label,
            label2id={name: i for i, name in id2label.items()},
            local_files_only=True,
            dtype=torch.float32,
        )
    finally:
        hf_logging.set_verbosity(verbosity)

    encodings = _encode(tokenizer, texts, max_length)
    targets = torch.tensor(list(labels), dtype=torch.long)
    steps_per_epoch = math.ceil(len(texts) / batch_size)
    total_steps = steps_per_epoch * epochs
    warmup = max(1, round(WARMUP_RATIO * total_steps))

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.dim() < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    decay_steps = max(1, total_steps - warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else max(0.0, (total_steps - step) / decay_steps)
    )
    generator = torch.Generator().manual_seed(seed)
    epoch_losses: list[float] = []
    model.train()
    with tqdm(total=total_steps, desc=f"fine-tune {out.name}", unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            order = torch.randperm(len(texts), generator=generator).tolist()
            total, seen = 0.0, 0
            for ids in _batches(order, batch_size):
                batch = _collate(tokenizer, encodings, ids)
                logits = model(**batch).logits
                loss = F.cross_entropy(logits, targets[ids])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(ids)
                seen += len(ids)
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{total / seen:.4f}")
            epoch_losses.append(total / seen)
    model.eval()
    seconds = time.perf_counter() - started

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        log = {
            "base": str(base),
            "examples": len(texts),
            "label_names": list(id2label.values()),
            "epochs": epochs,
            "max_length": max_length,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "weight_decay": weight_decay,
            "warmup_steps": warmup,
            "steps": total_steps,
            "epoch_losses": epoch_losses,
            "seconds": round(seconds, 2),
            "torch_threads": torch.get_num_threads(),
        }
        (staging / TRAINING_LOG).write_text(json.dumps(log, indent=2) + "\n")
        _ordinary_permissions(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _ordinary_permissions(folder: Path) -> None:
    """Give a ``mkdtemp`` folder (0700) and its files the modes a plain ``mkdir``/``open`` would."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def predict_logits(
    model_dir_or_model: str | os.PathLike[str] | torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """Logits ``[len(texts), num_labels]`` (float32) of a sequence classifier, in input order.

    ``tokenizer`` may be ``None`` when ``model_dir_or_model`` is a folder holding tokenizer files.
    Inputs are batched by length (less padding); the model runs in eval mode without gradients.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if isinstance(model_dir_or_model, torch.nn.Module):
        model = model_dir_or_model
    else:
        folder = _check_folder(model_dir_or_model)
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer is None:
        raise KenError("pass a tokenizer (or a model folder that holds one)")
    if not texts:
        return torch.zeros(0, int(getattr(model.config, "num_labels", 0)))
    was_training = model.training
    model.eval()
    encodings = _encode(tokenizer, texts, max_length)
    order = sorted(range(len(texts)), key=lambda i: len(encodings[i]["input_ids"]))
    out: list[torch.Tensor | None] = [None] * len(texts)
    try:
        with torch.inference_mode():
            for ids in _batches(order, batch_size):
                logits = model(**_collate(tokenizer, encodings, ids)).logits.float()
                for row, i in enumerate(ids):
                    out[i] = logits[row]
    finally:
        model.train(was_training)
    return torch.stack([t for t in out if t is not None])


def predict_labels(
    model_dir_or_model: str | os.PathLike[str] | torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
) -> list[int]:
    """The predicted label id of each text (argmax of the logits); see :func:`predict_logits`."""
    return predict_logits(model_dir_or_model, tokenizer, texts, max_length, batch_size).argmax(dim=-1).tolist()


def accuracy(gold: Sequence[int], predicted: Sequence[int]) -> float:
    """Share of positions where ``predicted`` equals ``gold``."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold) if gold else 0.0


def macro_f1(gold: Sequence[int], predicted: Sequence[int], num_labels: int | None = None) -> float:
    """Unweighted mean over labels of F1 = 2·TP / (2·TP + FP + FN).

    Labels range over ``0..num_labels-1`` (default: every label seen in either list); a label
    with no gold and no predicted occurrence has F1 0 only when ``num_labels`` names it, as in
    scikit-learn's ``f1_score(average="macro", labels=range(num_labels), zero_division=0)``.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    labels = range(num_labels) if num_labels is not None else sorted(set(gold) | set(predicted))
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


# --- JSON Lines data and the ``ken finetune`` subcommand -------------------------------------------


def read_jsonl(path: str | os.PathLike[str]) -> tuple[list[str], list[str | int]]:
    """Texts and raw labels of a ``{"text": ..., "label": ...}`` per line file (blank lines skipped)."""
    texts: list[str] = []
    labels: list[str | int] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KenError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or "text" not in record or "label" not in record:
                raise KenError(f'{path}:{number}: expected an object with "text" and "label"')
            text, label = record["text"], record["label"]
            if not isinstance(text, str) or not text.strip():
                raise KenError(f"{path}:{number}: text must be a non-empty string")
            if isinstance(label, bool) or not isinstance(label, (str, int)):
                raise KenError(f"{path}:{number}: label must be a string or an integer, got {label!r}")
            texts.append(text)
            labels.append(label)
    if not texts:
        raise KenError(f"{path} holds no examples")
    return texts, labels


def write_jsonl(path: str | os.PathLike[str], texts: Sequence[str], labels: Sequence[str | int]) -> Path:
    """Write examples in the format :func:`read_jsonl` reads."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8") as handle:
        for text, label in zip(texts, labels, strict=True):
            handle.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    return target


def resolve_labels(raw: Sequence[str | int], label_names: Sequence[str] | None) -> tuple[list[int], list[str]]:
    """Label ids and names for raw labels: names map through ``label_names`` (default: sorted names
    seen); integer ids index ``label_names`` (default: ``LABEL_0``... up to the largest id)."""
    if all(isinstance(label, str) for label in raw):
        names = list(label_names) if label_names else sorted(set(raw))  # type: ignore[arg-type]
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({label for label in raw if label not in index})  # type: ignore[misc]
        if unknown:
            raise KenError(f"label {unknown[0]!r} is not one of --labels {','.join(names)}")
        return [index[label] for label in raw], names  # type: ignore[index]
    if all(isinstance(label, int) for label in raw):
        ids = [int(label) for label in raw]
        if min(ids) < 0:
            raise KenError(f"label id {min(ids)} is negative")
        names = list(label_names) if label_names else [f"LABEL_{i}" for i in range(max(ids) + 1)]
        if max(ids) >= len(names):
            raise KenError(f"label id {max(ids)} has no name among {len(names)} --labels")
        return ids, names
    raise KenError("labels mix names and integer ids; use one kind")


def _parse_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise KenError("--labels names no label")
    return names


def _cmd_finetune(args: argparse.Namespace) -> int:
    texts, raw = read_jsonl(args.train_file)
    labels, names = resolve_labels(raw, _parse_names(args.labels))
    if len(names) < 2:
        raise KenError(f"{args.train_file} has a single label {names[0]!r}; a classifier needs at least 2")
    print(f"fine-tuning {args.base} on {len(texts)} examples, {len(names)} labels: {', '.join(names)}")
    out = finetune(
        args.base,
        texts,
        labels,
        names,
        args.output,
        epochs=args.epochs,
        max_length=args.max_length,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        weight_decay=args.weight_decay,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    log = json.loads((out / TRAINING_LOG).read_text())
    losses = ", ".join(f"{loss:.4f}" for loss in log["epoch_losses"])
    print(f"saved {out} in {log['seconds']:.1f} s; mean training loss per epoch: {losses}")
    if args.eval_file:
        eval_texts, eval_raw = read_jsonl(args.eval_file)
        gold, _ = resolve_labels(eval_raw, names)
        predicted = predict_labels(out, None, eval_texts, args.max_length, args.batch_size)
        print(
            f"{args.eval_file}: {len(gold)} examples, accuracy {accuracy(gold, predicted):.4f}, "
            f"macro-F1 {macro_f1(gold, predicted, len(names)):.4f}"
        )
    return 0


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to the ``ken`` command line's subparsers."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a sequence classifier on a JSON Lines file",
        description='Fine-tune a sequence classifier. Data: JSON Lines, one {"text": ..., "label": ...} per line.',
    )
    parser.add_argument("--base", required=True, help="pretrained Hugging Face model folder (with tokenizer)")
    parser.add_argument("--train-file", required=True, help="training examples (.jsonl)")
    parser.add_argument("--output", required=True, help="folder to write the fine-tuned model to")
    parser.add_argument("--eval-file", help="held-out examples (.jsonl): report accuracy and macro-F1")
    parser.add_argument("--labels", help="comma-separated label names, in id order (default: sorted names seen)")
    parser.add_argument("--epochs", type=_positive(int), default=3)
    parser.add_argument("--max-length", type=_positive(int), default=128, help="tokens per text (truncated)")
    parser.add_argument("--batch-size", type=_positive(int), default=16)
    parser.add_argument("--lr", type=_positive(float), default=1e-4, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_cmd_finetune)
    return parser
