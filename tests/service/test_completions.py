"""``POST /v1/completions`` through a real HTTP server on a tiny GPT-2 backbone with two generation tasks."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2ForSequenceClassification

import ken
from service.settings import Settings
from tests.service.servers import ServiceThread
from tests.tiny_models import make_gpt2_lm_pair, perturb

PROMPT = "the team won the"


@dataclass(frozen=True)
class LmSetup:
    base: Path
    tasks: dict[str, bytes]  # name -> subnetwork file
    references: dict[str, torch.nn.Module]  # generation tasks' materialised models


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> LmSetup:
    root = tmp_path_factory.mktemp("lm-service")
    base, finetunes = make_gpt2_lm_pair(root)
    tasks, references = {}, {}
    for index, folder in enumerate(finetunes):
        sub = ken.extract(base, folder, k=8, progress=False)
        tasks[f"writer-{index}"] = ken.save_bytes(sub)
        out = ken.materialize(base, sub, root / f"materialized-{index}")
        references[f"writer-{index}"] = AutoModelForCausalLM.from_pretrained(out).eval()
    labels = {0: "sport", 1: "business"}
    classifier = GPT2ForSequenceClassification.from_pretrained(
        finetunes[0], id2label=labels, label2id={v: k for k, v in labels.items()}, pad_token_id=0
    )
    perturb(classifier, 9)
    classifier.save_pretrained(root / "classifier")
    tasks["topic"] = ken.save_bytes(ken.extract(base, root / "classifier", k=8, progress=False))
    return LmSetup(base, tasks, references)


@pytest.fixture
def server(lm: LmSetup, tmp_path: Path, serve: Callable[[Settings], ServiceThread]) -> ServiceThread:
    settings = Settings(backbone=lm.base, store_dir=tmp_path / "store", max_wait_ms=1.0, max_completion_tokens=60)
    service = serve(settings)
    with service.client() as client:
        for name, blob in lm.tasks.items():
            response = client.put(
                f"/v1/subnetworks/{name}", content=blob, headers={"Content-Type": "application/octet-stream"}
            )
            assert response.status_code == 201, response.text
    return service


def expected_text(lm: LmSetup, task: str, prompt: str, max_tokens: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(lm.base)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.references[task].generate(
            ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def complete(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/v1/completions", json=body)


def test_greedy_completions_equal_the_materialised_models(lm: LmSetup, server: ServiceThread) -> None:
    with server.client() as client:
        for task in ("writer-0", "writer-1", "writer-0"):
            response = complete(client, model=task, prompt=PROMPT, max_tokens=12, temperature=0)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["object"] == "text_completion" and body["model"] == task and body["version"] == 1
            assert body["choices"][0]["text"] == expected_text(lm, task, PROMPT, 12)
            usage = body["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    texts = {expected_text(lm, task, PROMPT, 12) for task in ("writer-0", "writer-1")}
    assert len(texts) == 2  # the two tasks really differ, so a mix-up would show


def test_concurrent_completions_of_two_tasks_do_not_see_each_others_weights(lm: LmSetup, server: ServiceThread) -> None:
    prompts = ["the team won the", "market shares", "a song by the band", "the minister"]
    jobs = [(task, prompt) for prompt in prompts for task in ("writer-0", "writer-1")]
    results: dict[tuple[str, str], str] = {}

    def run(task: str, prompt: str) -> None:
        with server.client() as client:
            response = complete(client, model=task, prompt=prompt, max_tokens=10, temperature=0)
            results[(task, prompt)] = response.json()["choices"][0]["text"]

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {job: expected_text(lm, *job, 10) for job in jobs}
    with server.client() as client:
        assert client.get("/v1/backbone/integrity").json()["intact"]


def stream_chunks(client: httpx.Client, **body: object) -> list[dict]:
    chunks = []
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        chunks.append(json.loads(line.removeprefix("data: ")))
    return chunks


def test_a_streamed_completion_sends_the_same_text_in_pieces(lm: LmSetup, server: ServiceThread) -> None:
    with server.client() as client:
        chunks = stream_chunks(client, model="writer-1", prompt=PROMPT, max_tokens=15, temperature=0)
    assert len(chunks) > 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected_text(lm, "writer-1", PROMPT, 15)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 15


def test_a_stop_string_ends_the_completion_before_it(lm: LmSetup, server: ServiceThread) -> None:
    full = expected_text(lm, "writer-0", PROMPT, 20)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip()
    with server.client() as client:
        body = complete(client, model="writer-0", prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop]).json()
        streamed = stream_chunks(client, model="writer-0", prompt=PROMPT, max_tokens=20, temperature=0, stop=stop)
    assert body["choices"][0] == {
        "index": 0,
        "text": full[: full.index(stop)],
        "finish_reason": "stop",
        "logprobs": None,
    }
    assert "".join(c["choices"][0]["text"] for c in streamed) == full[: full.index(stop)]


def test_seeded_sampling_repeats_and_differs_from_greedy(lm: LmSetup, server: ServiceThread) -> None:
    with server.client() as client:
        texts = [
            complete(client, model="writer-0", prompt=PROMPT, max_tokens=20, temperature=1.5, seed=seed).json()
            for seed in (11, 11, 12)
        ]
    first, again, other = (t["choices"][0]["text"] for t in texts)
    assert first == again
    assert {first, other, expected_text(lm, "writer-0", PROMPT, 20)} != {first}


def test_a_long_generation_does_not_hold_up_another_task(server: ServiceThread) -> None:
    """Task B's request, sent while task A generates 50 tokens, is answered between A's decode steps."""
    with server.client() as client:  # warm both tasks (first use builds their models)
        complete(client, model="writer-0", prompt=PROMPT, max_tokens=1)
        complete(client, model="writer-1", prompt=PROMPT, max_tokens=1)
    swaps_before = swaps(server, "writer-0")
    first_chunk, a_done = threading.Event(), []

    def long_generation() -> None:
        with server.client() as client:
            body = {"model": "writer-0", "prompt": PROMPT, "max_tokens": 50, "temperature": 0, "stream": True}
            with client.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    first_chunk.set()
                    if line == "data: [DONE]":
                        a_done.append(time.monotonic())

    thread = threading.Thread(target=long_generation)
    thread.start()
    assert first_chunk.wait(30)
    with server.client() as client:
        assert complete(client, model="writer-1", prompt=PROMPT, max_tokens=2, temperature=0).status_code == 200
    b_done = time.monotonic()
    thread.join(60)
    assert a_done and b_done < a_done[0]
    assert swaps(server, "writer-0") >= swaps_before + 1  # A was swapped back in after B's steps


def swaps(server: ServiceThread, task: str) -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    match = re.search(rf'^ken_swaps_total{{task="{task}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "topic", "prompt": PROMPT}, 400, "use POST /v1/predict"),
        ({"model": "writer-0", "prompt": PROMPT, "max_tokens": 61}, 422, "at most 60"),
        ({"model": "writer-0", "prompt": PROMPT, "max_tokens": 60, "stop": list("abcde")}, 422, "at most 4 stop"),
        ({"model": "writer-0", "prompt": "the " * 30, "max_tokens": 40}, 422, "context length"),
        ({"model": "writer-0", "prompt": PROMPT, "temperature": -1}, 422, "temperature"),
        ({"model": "writer-0", "prompt": PROMPT, "max_token": 5}, 422, "max_token"),
        ({"model": "nosuch", "prompt": PROMPT}, 404, "nosuch"),
    ],
)
def test_bad_completion_requests_say_what_to_fix(server: ServiceThread, body: dict, status: int, message: str) -> None:
    with server.client() as client:
        response = complete(client, **body)
    assert response.status_code == status
    assert message in response.text


def test_predict_on_a_generation_task_names_the_completions_route(server: ServiceThread) -> None:
    with server.client() as client:
        v1 = client.post("/v1/predict", json={"task": "writer-0", "inputs": ["hello"]})
        v2 = client.post(
            "/v2/models/writer-0/infer",
            json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]},
        )
        topic = client.post("/v1/predict", json={"task": "topic", "inputs": ["the team won"]})
        listed = {m["task"]: m for m in client.get("/v1/subnetworks").json()["subnetworks"]}
    assert v1.status_code == 400 and "use POST /v1/completions" in v1.json()["detail"]
    assert v2.status_code == 400 and "use POST /v1/completions" in v2.json()["error"]
    assert topic.status_code == 200  # classification on the same GPT-2 backbone still works
    assert listed["writer-0"]["task_type"] == "text-generation" and listed["writer-0"]["labels"] == []
