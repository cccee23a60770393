"""Baseline server: one dedicated full fine-tuned model per task, all resident (no swapping).

    python -m bench.dedicated_server --port 8100 --models DIR [DIR ...] [--max-batch-size 32] [--max-wait-ms 2]
    python -m bench.dedicated_server --models DIR [DIR ...] --report-rss   # load, print RSS (JSON), exit

Each ``DIR`` is an ordinary Hugging Face sequence-classification folder (a fine-tune, or a KEN
subnetwork written out with ``ken materialize``); its task name is the folder name. Weights are
copied into fresh (aligned) tensors after loading (see :func:`load_models`). It answers
``POST /v1/predict`` with the same request and response shape as ken-serve, and batches exactly
as ken-serve does: the same :class:`service.engine.scheduler.TaskQueues` (per-task queues,
``max_batch_size`` inputs, ``max_wait_ms``, ``max_consecutive_batches``), the same tokenisation
(:class:`service.engine.encoding.TextEncoder`, in worker threads) and one thread that runs every
forward pass. The only difference is that a batch runs on its task's own resident model instead
of a swapped backbone. This is what a user would deploy without KEN: N models side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from fastapi import FastAPI, HTTPException

from service.api.schemas import InputPrediction, LabelScore, PredictRequest, PredictResponse


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass(eq=False)  # identity semantics, like service.engine.staged.StagedTask (the queues key on it)
class DedicatedTask:
    task: str
    model: object
    labels: list[str]


def load_models(folders: list[Path]) -> dict[str, DedicatedTask]:
    from transformers import AutoModelForSequenceClassification

    tasks: dict[str, DedicatedTask] = {}
    for folder in folders:
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
        # from_pretrained leaves the weights as views into the (mmap'd) safetensors file, 8 bytes past a
        # 64-byte boundary; CPU matmuls take a slower path on such data (about 2x here). Fresh
        # allocations are aligned, as ken-serve's flat buffer is: the baseline gets the fast path too.
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.data = tensor.data.clone()
        labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        tasks[folder.name] = DedicatedTask(folder.name, model, labels)
    return tasks


def create_app(tasks: dict[str, DedicatedTask], tokenizer_dir: Path, args: argparse.Namespace) -> FastAPI:
    from transformers import AutoTokenizer

    from service.engine.encoding import TextEncoder
    from service.engine.scheduler import Batch, TaskQueues, WorkItem

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    first = next(iter(tasks.values())).model
    encoder = TextEncoder(tokenizer, min(first.config.max_position_embeddings, tokenizer.model_max_length))
    queues = TaskQueues(
        max_batch_inputs=args.max_batch_size,
        max_wait_s=args.max_wait_ms / 1000,
        max_consecutive=args.max_consecutive_batches,
        one_request_per_batch=False,
    )

    def owner() -> None:
        with torch.no_grad():
            while (job := queues.next_job()) is not None:
                assert isinstance(job, Batch)
                task: DedicatedTask = job.staged  # type: ignore[assignment]
                try:
                    features = [f for item in job.items for f in item.encoded.features]
                    chunks = []
                    for start in range(0, len(features), args.max_batch_size):
                        inputs = encoder.collate(features[start : start + args.max_batch_size])
                        chunks.append(task.model(**inputs).logits.float())
                    logits = torch.cat(chunks)
                except Exception as exc:  # fail this batch only
                    for item in job.items:
                        item.future.set_exception(exc)
                    continue
                offset = 0
                for item in job.items:
                    item.future.set_result(logits[offset : offset + item.size])
                    offset += item.size

    thread = threading.Thread(target=owner, name="dedicated-owner", daemon=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        thread.start()
        yield
        queues.close()
        await asyncio.to_thread(thread.join)

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"ready": True, "tasks": len(tasks)}

    @app.post("/v1/predict")
    async def predict(body: PredictRequest) -> PredictResponse:
        task = tasks.get(body.task)
        if task is None:
            raise HTTPException(404, f"no task {body.task!r}")
        encoded = await asyncio.to_thread(encoder.encode, body.inputs)
        item = WorkItem(task, encoded)  # type: ignore[arg-type]
        queues.submit(item)
        logits = await asyncio.wrap_future(item.future)
        probabilities = torch.softmax(logits, dim=-1)
        k = min(body.top_k, len(task.labels))
        scores, indices = probabilities.topk(k, dim=1)
        predictions = [
            InputPrediction(
                labels=[
                    LabelScore(label=task.labels[i], score=s)
                    for s, i in zip(scores[row].tolist(), indices[row].tolist(), strict=True)
                ],
                logits=logits[row].tolist() if body.return_logits else None,
                truncated=encoded.truncated[row],
            )
            for row in range(len(encoded))
        ]
        return PredictResponse(task=task.task, version=1, predictions=predictions)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="model folders (task = folder name)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the first model folder)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--max-consecutive-batches", type=int, default=4)
    parser.add_argument("--report-rss", action="store_true", help="load the models, print RSS as JSON, exit")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost"):
        parser.error("the benchmark baseline binds to loopback only")

    import gc

    before = rss_bytes()
    tasks = load_models(args.models)
    gc.collect()
    if args.report_rss:
        parameters = sum(p.numel() for t in tasks.values() for p in t.model.parameters())  # type: ignore[attr-defined]
        print(
            json.dumps(
                {"models": len(tasks), "rss_bytes": rss_bytes(), "rss_before_models": before, "parameters": parameters}
            )
        )
        return 0

    import uvicorn

    app = create_app(tasks, args.tokenizer or args.models[0], args)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
