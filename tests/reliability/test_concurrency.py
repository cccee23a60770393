"""No cross-task contamination: concurrent clients over several tasks through real HTTP get, for every
request, exactly what a serial client gets for that task.

Batched mode mixes requests of one task into one forward pass (padding and batch shape change the last
bits of float32 matmuls), so labels are compared exactly and logits with ``allclose(atol=1e-5)``;
swap-per-request mode runs every request alone, so there the answers must be bit-identical.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

import ken
from service.settings import Settings
from tests.reliability.helpers import metric
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread
from tests.tiny_models import TinyPair

CLIENTS = 8
REQUESTS_PER_CLIENT = 40
TEXTS = [
    "the team won the cup match",
    "shares and profit at the bank",
    "the band played a song",
    "election vote for the party",
    "software and data on the internet",
    "goal " * 80,  # truncated
    "a",
    "the film actor won an award for the music",
]


@pytest.fixture(scope="module")
def four_tasks(task_files: TaskFiles, tiny_bert: TinyPair, tiny_bert_other_task: Path) -> dict[str, bytes]:
    five_k32 = ken.save_bytes(ken.extract(tiny_bert.base, tiny_bert_other_task, k=32, progress=False))
    return {"news": task_files.news, "news-k16": task_files.news_v2, "five": task_files.five, "five-k32": five_k32}


def predict(client: httpx.Client, task: str, texts: list[str]) -> dict:
    response = client.post("/v1/predict", json={"task": task, "inputs": texts, "return_logits": True, "top_k": 1})
    assert response.status_code == 200, response.text
    return response.json()


def run_load(service: ServiceThread, tasks: dict[str, bytes], *, exact: bool, max_texts: int) -> dict[str, int]:
    with service.client() as client:
        for task, blob in tasks.items():
            assert client.put(f"/v1/subnetworks/{task}", content=blob, headers=OCTET).status_code == 201
        # The serial reference: one request at a time, one text per request.
        reference = {(task, text): predict(client, task, [text])["predictions"][0] for task in tasks for text in TEXTS}
    # Tasks must really differ, or a mix-up could go unnoticed.
    for text in TEXTS:
        assert len({tuple(reference[task, text]["logits"]) for task in tasks}) == len(tasks)

    counts = {"requests": 0, "inputs": 0, "mismatches": 0, "errors": 0}
    lock = threading.Lock()

    def client_thread(seed: int) -> None:
        rng = random.Random(seed)
        with service.client() as client:
            for _ in range(REQUESTS_PER_CLIENT):
                task = rng.choice(list(tasks))
                texts = [rng.choice(TEXTS) for _ in range(rng.randint(1, max_texts))]
                try:
                    answer = predict(client, task, texts)
                except AssertionError:
                    with lock:
                        counts["errors"] += 1
                    continue
                bad = 0
                for text, got in zip(texts, answer["predictions"], strict=True):
                    want = reference[task, text]
                    same_label = got["labels"][0]["label"] == want["labels"][0]["label"]
                    if exact:
                        same_logits = got["logits"] == want["logits"]
                    else:
                        same_logits = torch.allclose(
                            torch.tensor(got["logits"]), torch.tensor(want["logits"]), atol=1e-5
                        )
                    bad += not (same_label and same_logits and got["truncated"] == want["truncated"])
                with lock:
                    counts["requests"] += 1
                    counts["inputs"] += len(texts)
                    counts["mismatches"] += bad

    threads = [threading.Thread(target=client_thread, args=(seed,)) for seed in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    counts["swaps"] = int(sum(metric(service, "ken_swaps_total", task=task) for task in tasks))
    counts["batches"] = int(metric(service, "ken_batch_size_inputs_count"))
    print(f"\n{CLIENTS} clients, {len(tasks)} tasks, exact={exact}: {counts}")
    return counts


def test_batched_concurrent_clients_get_the_serial_answers(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], four_tasks: dict[str, bytes]
) -> None:
    service = serve(make_settings(max_wait_ms=3.0, max_batch_size=16))
    counts = run_load(service, four_tasks, exact=False, max_texts=3)
    assert counts["requests"] == CLIENTS * REQUESTS_PER_CLIENT and counts["errors"] == 0
    assert counts["mismatches"] == 0
    # The load really interleaved tasks and batched requests together.
    assert counts["swaps"] > 2 * len(four_tasks)
    assert counts["batches"] < counts["requests"] + len(four_tasks) * len(TEXTS)


def test_swap_per_request_concurrent_clients_get_bit_identical_answers(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], four_tasks: dict[str, bytes]
) -> None:
    service = serve(make_settings(scheduling="swap-per-request"))
    counts = run_load(service, four_tasks, exact=True, max_texts=1)
    assert counts["requests"] == CLIENTS * REQUESTS_PER_CLIENT and counts["errors"] == 0
    assert counts["mismatches"] == 0
    assert counts["swaps"] >= counts["requests"]
