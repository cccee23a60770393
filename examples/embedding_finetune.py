"""A real embedding task: contrastive fine-tune of all-MiniLM-L6-v2 for chatterbot-corpus reply retrieval.

    python -m examples.embedding_finetune --out .cache/embedding [--train-pairs N] [--k 50 100] [--write-docs]

Pairs: consecutive lines of the English chatterbot-corpus conversations (a line, the reply to it),
whitespace-normalised; a pair whose line or reply (case-insensitively) already occurred is dropped,
so every query has one right answer (996 pairs). A seeded 80/20 split. Training uses in-batch
negatives (MultipleNegativesRankingLoss: cross entropy over the scaled cosine similarities of every
line with every reply of its batch), the loss all-MiniLM-L6-v2 was trained with. The metric: on the
held-out 20 %, each line retrieves among all held-out replies; Recall@1/@5 and MRR@10 of the
pretrained model, the full fine-tune and its KEN subnetworks at several k (pooled and normalised
as the service serves them: ``ken.taskmodel.task_outputs`` over the materialised model).
``--write-docs`` puts the table into docs/results.md between its embedding markers.

Writes ``{out}/finetuned/`` (a sentence-transformers folder) and
``{out}/subnetworks/chatter-replies-k{k}.safetensors`` (ready for ``ken serve --preload``); a re-run
reuses a fine-tune made with the same settings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

BEGIN, END = "<!-- embedding-results:begin -->", "<!-- embedding-results:end -->"


@dataclass(frozen=True)
class Recipe:
    """Everything that changes the fine-tuned weights (kept cheap: a few minutes on 2 CPU cores)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    scale: float = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default
    query_tokens: int = 24
    document_tokens: int = 32
    seed: int = 0


def dialogue_pairs(seed: int = 0) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    """((train lines, train replies), (test lines, test replies)) of chatterbot-corpus, 80/20 seeded."""
    import yaml

    from examples.datasets import TEST_FRACTION, _package_dir

    root = _package_dir("chatterbot_corpus") / "data" / "english"
    pairs: list[tuple[str, str]] = []
    seen_lines: set[str] = set()
    seen_replies: set[str] = set()
    for path in sorted(root.glob("*.yml")):
        for conversation in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []:
            lines = [" ".join(line.split()) for line in conversation if isinstance(line, str)]
            for line, reply in itertools.pairwise(lines):
                if line and reply and line.lower() not in seen_lines and reply.lower() not in seen_replies:
                    seen_lines.add(line.lower())
                    seen_replies.add(reply.lower())
                    pairs.append((line, reply))
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = round(TEST_FRACTION * len(pairs))
    test, train = [pairs[i] for i in sorted(order[:n_test])], [pairs[i] for i in sorted(order[n_test:])]
    return ([a for a, _ in train], [b for _, b in train]), ([a for a, _ in test], [b for _, b in test])


def embed(model, tokenizer, texts: Sequence[str], max_length: int, info, batch_size: int = 64) -> torch.Tensor:
    """Normalised embeddings, pooled as the service pools the task (``ken.taskmodel.task_outputs``)."""
    from ken.taskmodel import task_outputs

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out += task_outputs(model, info, dict(batch))
    return F.normalize(torch.stack(out), dim=1)


def retrieval_metrics(queries: torch.Tensor, documents: torch.Tensor) -> dict[str, float]:
    """Query i's relevant document is document i: Recall@1, Recall@5 and MRR@10 over all documents."""
    scores = queries @ documents.T
    target = scores.diagonal().unsqueeze(1)
    rank = (scores > target).sum(dim=1) + 1  # 1-based rank of the relevant document
    return {
        "recall@1": float((rank == 1).float().mean()),
        "recall@5": float((rank <= 5).float().mean()),
        "mrr@10": float(torch.where(rank <= 10, 1.0 / rank.float(), torch.zeros(())).mean()),
    }


def finetune(base: Path, out: Path, queries: list[str], documents: list[str], recipe: Recipe) -> Path:
    """In-batch-negatives contrastive fine-tune of the backbone; saved as a sentence-transformers folder."""
    from transformers import AutoModel, AutoTokenizer

    from ken.pooling import read_pooling, write_sentence_transformers_files

    settings_file = out / "recipe.json"
    wanted = {"base": str(base.resolve()), **asdict(recipe), "pairs": len(queries)}
    done = (out / "model.safetensors").is_file() and settings_file.is_file()
    if done and json.loads(settings_file.read_text()).get("settings") == wanted:
        return out
    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModel.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    steps = recipe.epochs * math.ceil(len(queries) / recipe.batch_size)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / (steps - warmup))
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    started, losses = time.perf_counter(), []
    model.train()
    with tqdm(total=steps, desc="contrastive fine-tune", unit="step") as bar:
        for _ in range(recipe.epochs):
            order = torch.randperm(len(queries), generator=generator).tolist()
            for start in range(0, len(order), recipe.batch_size):
                ids = order[start : start + recipe.batch_size]
                q = _pooled(model, tokenizer, [queries[i] for i in ids], recipe.query_tokens)
                d = _pooled(model, tokenizer, [documents[i] for i in ids], recipe.document_tokens)
                logits = recipe.scale * F.normalize(q, dim=1) @ F.normalize(d, dim=1).T
                loss = F.cross_entropy(logits, torch.arange(len(ids)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    pooling = read_pooling(base)
    assert pooling is not None, "the packaged backbone is a sentence-transformers folder"
    write_sentence_transformers_files(out, pooling, model.config.hidden_size)
    log = {"settings": wanted, "steps": steps, "seconds": round(time.perf_counter() - started, 1), "losses": losses}
    settings_file.write_text(json.dumps(log, indent=2) + "\n")
    return out


def _pooled(model, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    from ken.pooling import pool

    batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return pool(model(**batch).last_hidden_state, batch["attention_mask"], "mean")


def evaluate(base: Path, finetuned: Path, out: Path, ks: Sequence[int], queries, documents, recipe: Recipe) -> list:
    """Rows of the results table: pretrained, full fine-tune, KEN subnetworks (materialised and embedded)."""
    from transformers import AutoTokenizer

    import ken
    from ken.pooling import read_pooling

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    rows = []

    def measure(name: str, model, info, extra: dict) -> None:
        started = time.perf_counter()
        q = embed(model, tokenizer, queries, recipe.query_tokens, info)
        d = embed(model, tokenizer, documents, recipe.document_tokens, info)
        rows.append({"model": name, **extra, **retrieval_metrics(q, d), "seconds": time.perf_counter() - started})
        print(rows[-1], flush=True)

    backbone = ken.load_backbone_model(base)
    numel = sum(p.numel() for p in backbone.parameters())
    # the dense models pool as the subnetworks do: the backbone's sentence-transformers pooling
    dense = ken.SubnetworkInfo("", "dense", 1, task_type="feature-extraction", pooling=read_pooling(base))
    measure("pretrained all-MiniLM-L6-v2", backbone, dense, {"kept": 0.0, "bytes": 0})
    measure("full fine-tune", ken.load_backbone_model(finetuned), dense, {"kept": 1.0, "bytes": 0})
    for k in tqdm(ks, desc="KEN subnetworks", unit="k"):
        sub = ken.extract(base, finetuned, k=k, progress=False)
        path = out / "subnetworks" / f"chatter-replies-k{k}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        ken.save_file(sub, path)
        model = ken.load_backbone_model(base)
        model.load_state_dict(ken.materialized_state(base, sub))
        measure(f"KEN k={k}", model, sub.info, {"kept": sub.kept_fraction(numel), "bytes": path.stat().st_size})
    return rows


def render(rows: list[dict], test_pairs: int, train_pairs: int, recipe: Recipe, seconds: float, command: str) -> str:
    import torch as _torch

    lines = [
        BEGIN,
        "",
        "## Embedding task: chatterbot-corpus reply retrieval",
        "",
        f"Produced by `{command}`. A contrastive fine-tune (in-batch negatives, scale {recipe.scale}, "
        f"{recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''}, batch {recipe.batch_size}, lr {recipe.lr}, "
        f"lines ≤ {recipe.query_tokens} and "
        f"replies ≤ {recipe.document_tokens} tokens) of the packaged all-MiniLM-L6-v2 on {train_pairs} (line, reply) "
        f"pairs of chatterbot-corpus took {seconds:.0f} s on {_torch.get_num_threads()} torch threads "
        f"(the 2-core machine shared with other work, load average {os.getloadavg()[0]:.0f}). Each of the "
        f"{test_pairs} held-out lines retrieves among all {test_pairs} held-out replies (cosine of mean-pooled, "
        "normalised embeddings, as `POST /v1/embed` serves the task). *Kept %*: backbone entries that take a "
        "fine-tuned value (an embedding task has no head); *file*: the subnetwork file.",
        "",
        "| model | kept % | file | Recall@1 | Recall@5 | MRR@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        size = f"{row['bytes'] / 1e6:.2f} MB" if row["bytes"] else "–"
        lines.append(
            f"| {row['model']} | {100 * row['kept']:.1f} | {size} | {row['recall@1']:.3f} | {row['recall@5']:.3f} "
            f"| {row['mrr@10']:.3f} |"
        )
    lines += ["", END]
    return "\n".join(lines)


def write_docs(path: Path, section: str) -> None:
    text = path.read_text() if path.is_file() else "# Results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    from examples.build_demo import default_base

    parser = argparse.ArgumentParser(prog="python -m examples.embedding_finetune", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/embedding"))
    parser.add_argument("--base", type=Path, help="backbone folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--k", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--write-docs", action="store_true", help="update docs/results.md")
    parser.add_argument("--train-pairs", type=int, help="train on the first N training pairs only (default: all)")
    parser.add_argument("--limit", type=int, help="use only this many train and test pairs (a quick smoke run)")
    args = parser.parse_args(argv)
    base = args.base or default_base()
    recipe = Recipe()
    (train_q, train_d), (test_q, test_d) = dialogue_pairs(seed=recipe.seed)
    if args.train_pairs:
        train_q, train_d = train_q[: args.train_pairs], train_d[: args.train_pairs]
    if args.limit:
        train_q, train_d, test_q, test_d = (part[: args.limit] for part in (train_q, train_d, test_q, test_d))
    started = time.perf_counter()
    finetuned = finetune(base, args.out / "finetuned", train_q, train_d, recipe)
    seconds = json.loads((finetuned / "recipe.json").read_text())["seconds"] or time.perf_counter() - started
    rows = evaluate(base, finetuned, args.out, sorted(args.k), test_q, test_d, recipe)
    command = " ".join(["python -m examples.embedding_finetune", *(argv if argv is not None else sys.argv[1:])])
    section = render(rows, len(test_q), len(train_q), recipe, seconds, command)
    print(section)
    if args.write_docs:
        write_docs(Path("docs/results.md"), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
