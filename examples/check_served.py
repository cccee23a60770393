"""Check that the HTTP service predicts what the subnetwork predicts offline, over whole test splits.

    python -m examples.check_served [--cache .cache/demo]

Starts the real server (``python -m service serve``, the same command as ``ken serve``) as a
subprocess on a free loopback port, with a throw-away directory store, the packaged backbone and
``--preload {cache}/subnetworks``. Then, per task, it sends the whole held-out split over HTTP in
batches (``POST /v1/predict``) and compares each served label with the label of the same
subnetwork materialised in memory (``ken.materialized_state``) and run offline with the same
tokenizer and truncation as the server. It prints a table (inputs, mismatches, the largest logit
difference, accuracy served and offline) and exits 1 on any mismatch, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class TaskCheck:
    task: str
    inputs: int
    mismatches: int
    max_logit_diff: float
    distinct_labels: int  # how many different labels the server predicted
    served_accuracy: float | None
    offline_accuracy: float | None
    seconds: float


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    base: Path,
    preload_dir: Path,
    *,
    max_length: int | None = None,
    max_input_chars: int | None = None,
    log_path: Path | None = None,
) -> Iterator[str]:
    """A ``python -m service serve`` subprocess on a free loopback port; yields its URL once ready."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="ken-check-") as tmp:
        log = Path(log_path) if log_path else Path(tmp) / "server.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        for name in [name for name in env if name.startswith("KEN_")]:
            del env[name]  # only what is passed here configures this server
        if max_length is not None:
            env["KEN_MAX_SEQUENCE_LENGTH"] = str(max_length)
        if max_input_chars is not None:
            env["KEN_MAX_INPUT_CHARS"] = str(max_input_chars)
        command = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--backbone", str(base), "--store-dir", str(Path(tmp) / "store"), "--preload", str(preload_dir)]
        command += ["--device", "cpu", "--log-level", "WARNING"]
        with log.open("wb") as handle:
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=handle)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited with {process.returncode}:\n{_tail(log)}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server was not ready after {START_TIMEOUT_S:.0f} s:\n{_tail(log)}")
                time.sleep(0.2)
            yield url
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def check_task(
    url: str,
    base: Path,
    task: str,
    subnetwork_file: Path,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
    gold: Sequence[int] | None = None,
) -> TaskCheck:
    """Served against offline predictions of one task's subnetwork over ``texts``."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    import ken
    from ken.finetune import accuracy, predict_logits
    from ken.taskmodel import task_config
    from service.client import KenClient

    started = time.perf_counter()
    sub = ken.load_file(subnetwork_file)
    labels = sub.info.labels
    # Built on the CPU, not on the meta device: non-persistent buffers (position ids) are not in any
    # state dict and would stay meta, giving silently wrong logits.
    model = AutoModelForSequenceClassification.from_config(task_config(sub.info, AutoConfig.from_pretrained(base)))
    model.load_state_dict(ken.materialized_state(base, sub), strict=True)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    offline_logits = predict_logits(model.eval(), tokenizer, texts, max_length, batch_size)
    offline = offline_logits.argmax(dim=-1).tolist()

    served: list[int] = []
    max_diff = 0.0
    with KenClient(url, timeout=300) as client:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            response = client.predict(task, batch, top_k=1, return_logits=True)
            for row, prediction in enumerate(response.predictions):
                served.append(labels.index(prediction.labels[0].label))
                if prediction.logits is not None:
                    diff = (torch.tensor(prediction.logits) - offline_logits[start + row]).abs().max().item()
                    max_diff = max(max_diff, diff if diff == diff else float("inf"))  # NaN counts as infinite
    mismatches = sum(a != b for a, b in zip(served, offline, strict=True))
    return TaskCheck(
        task=task,
        inputs=len(texts),
        mismatches=mismatches,
        max_logit_diff=max_diff,
        distinct_labels=len(set(served)),
        served_accuracy=accuracy(gold, served) if gold is not None else None,
        offline_accuracy=accuracy(gold, offline) if gold is not None else None,
        seconds=time.perf_counter() - started,
    )


def check_all(
    base: Path,
    subnetwork_dir: Path,
    texts: Mapping[str, Sequence[str]],
    *,
    gold: Mapping[str, Sequence[int]] | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    log_path: Path | None = None,
) -> list[TaskCheck]:
    """Start a server preloaded with ``subnetwork_dir`` and check every task named in ``texts``.

    ``max_length`` caps the server's truncation (``KEN_MAX_SEQUENCE_LENGTH``); the offline side
    uses whatever length the server reports at ``/v1/backbone``, so both cut inputs alike.
    """
    import httpx

    missing = [task for task in texts if not (subnetwork_dir / f"{task}.safetensors").is_file()]
    if missing:
        raise FileNotFoundError(f"no subnetwork file for {', '.join(missing)} in {subnetwork_dir}")
    # The server refuses inputs over 20,000 characters by default; a few BBC articles are longer.
    longest = max((len(text) for task_texts in texts.values() for text in task_texts), default=0)
    with running_server(
        base, subnetwork_dir, max_length=max_length, max_input_chars=max(longest, 20_000), log_path=log_path
    ) as url:
        served_length = int(httpx.get(f"{url}/v1/backbone", timeout=10).json()["max_length"])
        listed = {entry["task"] for entry in httpx.get(f"{url}/v1/subnetworks", timeout=10).json()["subnetworks"]}
        absent = [task for task in texts if task not in listed]
        if absent:
            raise RuntimeError(f"the server did not preload {', '.join(absent)} (it lists {sorted(listed)})")
        return [
            check_task(
                url,
                base,
                task,
                subnetwork_dir / f"{task}.safetensors",
                task_texts,
                max_length=served_length,
                batch_size=batch_size,
                gold=None if gold is None else gold[task],
            )
            for task, task_texts in texts.items()
        ]


def format_table(results: Sequence[TaskCheck]) -> str:
    def pct(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.2f}"

    lines = [
        "| task | inputs | mismatches | max abs logit difference | labels predicted | served accuracy % "
        "| offline accuracy % | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.task} | {r.inputs} | {r.mismatches} | {r.max_logit_diff:.2e} | {r.distinct_labels} | "
        f"{pct(r.served_accuracy)} | "
        f"{pct(r.offline_accuracy)} | {r.seconds:.0f} |"
        for r in results
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from examples.build_demo import DEFAULT_OUT, RECIPES

    parser = argparse.ArgumentParser(prog="python -m examples.check_served", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_OUT, help="build_demo's folder (subnetworks/ inside)")
    parser.add_argument("--base", type=Path, help="backbone folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--task", action="append", choices=sorted(RECIPES), help="check only this task (repeatable)")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per HTTP request (server limit: 64)")
    parser.add_argument(
        "--max-length",
        type=int,
        default=max(recipe.max_length for recipe in RECIPES.values()),
        help="server truncation, KEN_MAX_SEQUENCE_LENGTH (default: the longest the demo tasks were trained with)",
    )
    parser.add_argument("--log", type=Path, help="keep the server's log here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from examples.build_demo import default_base
    from examples.datasets import load

    tasks = args.task or list(RECIPES)
    base = args.base or default_base()
    try:
        datasets = {task: load(RECIPES[task].data, seed=RECIPES[task].data_seed) for task in tasks}
        results = check_all(
            base,
            args.cache / "subnetworks",
            {task: data.test_texts for task, data in datasets.items()},
            gold={task: data.test_labels for task, data in datasets.items()},
            max_length=args.max_length,
            batch_size=args.batch_size,
            log_path=args.log,
        )
    except FileNotFoundError as exc:
        print(f"check_served: {exc}; run python -m examples.build_demo --out {args.cache} first", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"check_served: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"backbone {base}; server truncation {args.max_length} tokens; {args.batch_size} inputs per request")
    print(format_table(results))
    bad = sum(r.mismatches for r in results)
    if bad:
        print(f"FAIL: {bad} served label(s) differ from the offline subnetwork", file=sys.stderr)
        return 1
    print("OK: every served label equals the offline prediction of the same subnetwork")
    return 0


if __name__ == "__main__":
    sys.exit(main())
