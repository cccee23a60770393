"""Scale-out on Ray Serve: 1 vs N replicas, task-affinity routing vs Ray's default routing, 16 tasks.

    python -m bench.bench_scaleout [--replicas 1 2] [--requests 400] [--concurrency 8] [--models-per-replica 8]

Starts a local Ray cluster (stopped at the end) and, per replica count, the service on it with a
synthetic BERT (built from a config, so nothing is downloaded) and 16 tasks in the Redis at
``--redis-url`` (keys under a fresh prefix, removed at the end). Each replica's delta cache holds
``--models-per-replica`` tasks, as does Ray's model list. Per mix (uniform, Zipf over 16 tasks)
and routing (``affinity``: multiplexed ``task@version``; ``plain``: the same requests with
``X-Ken-Routing: plain``, Ray's default power-of-two-choices routing), a closed loop of
``--concurrency`` clients sends ``--requests`` predictions after a warm-up, and the table shows:

- throughput and p50/p99 latency through Ray's HTTP proxy;
- **loads/request**: tasks staged into a replica (read from the store, planned) per request, the
  "model swaps" of multiplexing; **hit rate** = 1 - loads/request;
- **writes/request**: deltas written into a backbone per request (the in-place swaps);
- **mismatches**: answers whose label or logits differ from the task's own (computed here with the
  library, one text at a time): any cross-task mix-up would show.

The ratio column compares each row's loads/request with plain routing on as many replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from tqdm import tqdm

import ken
from bench.common import CACHE, METRIC_LINE, log, metric_sum, prepare_texts
from bench.loadgen import percentile, task_sequence

TASKS = 16
LABELS = 4
MIXES = ("uniform", "zipf")
ROUTINGS = ("plain", "affinity")
REPLICA_HEADER = "x-ken-replica"  # service.deploy.ray_app.REPLICA_HEADER, not imported: that imports Ray


@dataclass(frozen=True)
class Workload:
    backbone: Path
    files: dict[str, bytes]
    texts: list[str]
    expected: dict[tuple[str, str], torch.Tensor]  # (task, text) -> logits
    staged_bytes: int  # the largest task's device bytes


def load_workload(text_count: int) -> Workload:
    """The workload, built once into CACHE (a few minutes on a busy machine) and read back after that."""
    from safetensors.torch import load_file, save_file

    root = CACHE / f"scaleout-v1-{text_count}"
    answers = root / "expected.safetensors"
    if not answers.is_file():
        if root.exists():
            shutil.rmtree(root)
        workload = build_workload(root, text_count)
        for task, blob in workload.files.items():
            (root / f"{task}.safetensors").write_bytes(blob)
        (root / "staged-bytes").write_text(str(workload.staged_bytes))
        index = {text: i for i, text in enumerate(workload.texts)}
        save_file({f"{task}/{index[text]}": v.contiguous() for (task, text), v in workload.expected.items()}, answers)
        return workload
    texts = json.loads(prepare_texts().read_text())[:text_count]
    files = {path.stem: path.read_bytes() for path in sorted(root.glob("task-*.safetensors"))}
    stored = load_file(answers)
    expected = {(task, text): stored[f"{task}/{i}"] for task in files for i, text in enumerate(texts)}
    return Workload(root / "base", files, texts, expected, int((root / "staged-bytes").read_text()))


def build_workload(root: Path, text_count: int) -> Workload:
    """A small synthetic BERT (vocabulary from the texts), 16 perturbed fine-tunes, their subnetworks and answers.

    Small on purpose: the benchmark measures routing and swaps, and has to run on a busy 2-core box.
    """
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    texts = json.loads(prepare_texts().read_text())[:text_count]
    words = sorted({word for text in texts for word in text.lower().split()})
    base_dir = root / "base"
    base_dir.mkdir(parents=True)
    vocab = base_dir / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(words) + 5, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=256, max_position_embeddings=128, num_labels=LABELS,
        id2label={i: f"label-{i}" for i in range(LABELS)}, label2id={f"label-{i}": i for i in range(LABELS)},
    )  # fmt: skip
    torch.manual_seed(0)
    base = BertModel(config).eval()
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    backbone = ken.load_backbone_model(base_dir)
    flat = ken.FlatParameters(backbone)
    swapper = ken.Swapper(flat)
    inputs = [tokenizer([text], truncation=True, max_length=128, return_tensors="pt") for text in texts]
    files, expected, staged = {}, {}, []
    for index in tqdm(range(TASKS), desc="tasks (fine-tune, extract, reference answers)"):
        finetuned = BertForSequenceClassification(config)
        finetuned.bert.load_state_dict(base.state_dict())
        generator = torch.Generator().manual_seed(index + 1)
        with torch.no_grad():
            for parameter in finetuned.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        subnetwork = ken.extract(base_dir, finetuned, k=8, progress=False)
        task = f"task-{index:02d}"
        files[task] = ken.save_bytes(subnetwork)
        staged.append(subnetwork.kept_entries * 8 + sum(t.numel() * t.element_size() for t in subnetwork.head.values()))
        # the task's own answers, one text at a time, with the library (no service, no routing)
        model = ken.attach_head(backbone, subnetwork.info, subnetwork.head)
        swapper.apply(ken.DeltaPlan(subnetwork, flat))
        with torch.no_grad():
            for text, encoded in zip(texts, inputs, strict=True):
                expected[(task, text)] = model(**encoded).logits[0]
        swapper.revert()
    return Workload(base_dir, files, texts, expected, staged_bytes=max(staged))


# -- one measured phase ----------------------------------------------------------------------------


@dataclass
class Phase:
    replicas: int
    mix: str
    routing: str
    requests: int = 0
    errors: int = 0
    mismatches: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] | None = None
    loads: float = 0.0
    writes: float = 0.0

    def row(self) -> dict:
        latencies = sorted(self.latencies_ms or [])
        return {
            "replicas": self.replicas, "mix": self.mix, "routing": self.routing, "requests": self.requests,
            "errors": self.errors, "mismatches": self.mismatches,
            "throughput_rps": self.requests / self.seconds if self.seconds else math.nan,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "loads_per_request": self.loads / self.requests if self.requests else math.nan,
            "writes_per_request": self.writes / self.requests if self.requests else math.nan,
        }  # fmt: skip


async def replica_metrics(client: httpx.AsyncClient, replicas: int) -> dict[str, tuple[float, float]]:
    """Per replica: (store loads, delta writes) from its /metrics, asked until every replica answered."""
    seen: dict[str, tuple[float, float]] = {}
    for _ in range(50 * replicas):  # Ray's default routing spreads these at random
        response = await client.get("/metrics")
        response.raise_for_status()
        values = parse_metrics(response.text)
        seen[response.headers[REPLICA_HEADER]] = (metric_sum(values, "ken_store_loads_total"),
                                                  metric_sum(values, "ken_swaps_total"))  # fmt: skip
        if len(seen) == replicas:
            return seen
    raise RuntimeError(f"only {len(seen)} of {replicas} replicas answered /metrics")


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    values = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match:
            values[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return values


async def run_phase(url: str, workload: Workload, phase: Phase, *, requests: int, warmup: int, concurrency: int,
                    seed: int) -> Phase:  # fmt: skip
    tasks = sorted(workload.files)
    sequence = task_sequence(tasks, phase.mix, warmup + requests, seed)
    headers = {"x-ken-routing": "plain"} if phase.routing == "plain" else {}
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        next_index = 0
        latencies: list[float] = []
        progress = tqdm(total=warmup + requests, desc=f"{phase.replicas} replica(s) {phase.mix} {phase.routing}")

        async def worker(stop: int) -> None:
            nonlocal next_index
            while next_index < stop:
                index, next_index = next_index, next_index + 1
                task, text = sequence[index], workload.texts[index % len(workload.texts)]
                body = {"task": task, "inputs": [text], "return_logits": True}
                sent = time.perf_counter()
                response = await client.post("/v1/predict", json=body, headers=headers)
                progress.update()
                if index < warmup:
                    continue
                latencies.append((time.perf_counter() - sent) * 1000)
                phase.requests += 1
                if response.status_code != 200:
                    phase.errors += 1
                    continue
                logits = torch.tensor(response.json()["predictions"][0]["logits"])
                expected = workload.expected[(task, text)]
                if logits.argmax() != expected.argmax() or not torch.allclose(logits, expected, atol=1e-4):
                    phase.mismatches += 1

        await asyncio.gather(*(worker(warmup) for _ in range(concurrency)))  # unmeasured: fills the caches
        before = await replica_metrics(client, phase.replicas)
        started = time.perf_counter()
        await asyncio.gather(*(worker(len(sequence)) for _ in range(concurrency)))
        phase.seconds = time.perf_counter() - started
        progress.close()
        after = await replica_metrics(client, phase.replicas)
    phase.latencies_ms = latencies
    phase.loads = sum(after[r][0] - before.get(r, (0, 0))[0] for r in after)
    phase.writes = sum(after[r][1] - before.get(r, (0, 0))[1] for r in after)
    return phase


# -- the run ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--models-per-replica", type=int, default=8, help="delta cache size and Ray's model list")
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--port", type=int, default=18201)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--gpus-per-replica", type=float, default=0.0)
    parser.add_argument("--output", type=Path, default=CACHE / "scaleout-results.json")
    args = parser.parse_args()

    import ray
    import redis
    from ray import serve

    from service.deploy.cluster import deploy, start_local
    from service.deploy.ray_app import APP_NAME, ScaleOut
    from service.settings import Settings

    prefix = f"bench-scaleout-{uuid.uuid4().hex[:8]}:"
    rows = []
    workload = load_workload(args.texts)
    settings = Settings(
        backbone=workload.backbone, redis_url=args.redis_url, redis_key_prefix=prefix, port=args.port,
        device_cache_bytes=int(args.models_per_replica * workload.staged_bytes * 1.05), log_level="WARNING",
        device="cuda" if args.gpus_per_replica else "cpu",
    )  # fmt: skip
    url = f"http://127.0.0.1:{args.port}"
    start_local(num_cpus=args.cpus, log_to_driver=False)
    try:
        for replicas in args.replicas:
            log(f"deploying {replicas} replica(s)")
            cpus = args.cpus / max(args.replicas)
            deploy(settings, ScaleOut(replicas=replicas, cpus_per_replica=cpus,
                                      gpus_per_replica=args.gpus_per_replica,
                                      max_models_per_replica=args.models_per_replica))  # fmt: skip
            if replicas == args.replicas[0]:
                with httpx.Client(base_url=url, timeout=120) as client:
                    for task, blob in workload.files.items():
                        response = client.put(f"/v1/subnetworks/{task}", content=blob,
                                              headers={"Content-Type": "application/octet-stream"})  # fmt: skip
                        response.raise_for_status()
            for mix in MIXES:
                for routing in ROUTINGS if replicas > 1 else ("affinity",):
                    phase = asyncio.run(run_phase(url, workload, Phase(replicas, mix, routing),
                                                  requests=args.requests, warmup=args.warmup,
                                                  concurrency=args.concurrency, seed=MIXES.index(mix)))  # fmt: skip
                    rows.append(phase.row())
                    log(json.dumps(rows[-1]))
            serve.delete(APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    report(rows)


def report(rows: list[dict]) -> None:
    def plain_loads(row: dict) -> float:
        match = [r for r in rows if (r["replicas"], r["mix"], r["routing"]) == (row["replicas"], row["mix"], "plain")]
        return match[0]["loads_per_request"] if match else math.nan

    print("| replicas | mix | routing | req/s | p50 ms | p99 ms | loads/req | hit rate | writes/req "
          "| loads vs plain | errors | mismatches |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        baseline = plain_loads(row)
        ratio = f"{row['loads_per_request'] / baseline:.2f}x" if baseline and not math.isnan(baseline) else "–"
        print(f"| {row['replicas']} | {row['mix']} | {row['routing']} | {row['throughput_rps']:.1f} "
              f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['loads_per_request']:.3f} "
              f"| {1 - row['loads_per_request']:.1%} | {row['writes_per_request']:.3f} | {ratio} "
              f"| {row['errors']} | {row['mismatches']} |")  # fmt: skip


if __name__ == "__main__":
    main()
