"""End to end through real HTTP, with both stores: upload, exact logits, interleaved tasks, intact backbone."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import ken
from service.engine.backbone import weights_checksum
from service.settings import Settings
from tests.service.conftest import OCTET, Reference, TaskFiles
from tests.service.servers import ServiceThread
from tests.tiny_models import TinyPair

TEXTS = [
    "the team won the cup match with a late goal",
    "bank shares fell as profit growth slowed",
    "the film music won an award",
    "a",
    "election vote party minister government " * 20,  # longer than the model: truncated
]


def served_logits(client, task: str, text: str) -> tuple[torch.Tensor, dict]:
    response = client.post("/v1/predict", json={"task": task, "inputs": [text], "return_logits": True, "top_k": 2})
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    return torch.tensor(prediction["logits"], dtype=torch.float32), prediction


@pytest.mark.parametrize("store", ["directory", "redis"])
def test_served_logits_equal_the_materialised_models_and_the_backbone_stays_intact(
    store: str,
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    references: dict[str, Reference],
    tiny_bert: TinyPair,
) -> None:
    service = serve(make_settings(store))
    with service.client() as client:
        for task, blob in (("news", task_files.news), ("five", task_files.five)):
            response = client.put(f"/v1/subnetworks/{task}", content=blob, headers=OCTET)
            assert response.status_code == 201, response.text
            assert response.json()["version"] == 1

        # One input per request, alternating tasks with different head shapes: bit-exact logits.
        for text in TEXTS:
            for task in ("news", "five"):
                logits, prediction = served_logits(client, task, text)
                expected = references[task].logits(text)
                assert torch.equal(logits, expected), (task, text, logits, expected)
                assert prediction["truncated"] == (text is TEXTS[-1])
                best = prediction["labels"]
                assert len(best) == 2 and best[0]["score"] >= best[1]["score"]
                assert best[0]["label"] == references[task].model.config.id2label[int(expected.argmax())]

        # Concurrent, interleaved requests of both tasks (batched by the engine): same answers.
        jobs = [(task, text) for text in TEXTS for task in ("news", "five")] * 3
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda job: served_logits(client, *job)[0], jobs))
        for (task, text), logits in zip(jobs, results, strict=True):
            torch.testing.assert_close(logits, references[task].logits(text), rtol=1e-5, atol=1e-5)

        integrity = client.get("/v1/backbone/integrity").json()
        assert integrity["intact"] is True
        assert integrity["checksum"] == integrity["pristine_checksum"]
        backbone = client.get("/v1/backbone").json()

    # The pristine checksum is the checkpoint's own weights, computed independently here.
    model = ken.load_backbone_model(tiny_bert.base)
    assert integrity["pristine_checksum"] == weights_checksum(ken.FlatParameters(model))
    assert backbone["fingerprint"] == ken.fingerprint(ken.load_backbone_model(tiny_bert.base).state_dict())
    assert backbone["dtype"] == "float32" and backbone["device"] == "cpu" and backbone["max_length"] == 64


def test_subnetwork_manifests_list_and_delete(
    make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread], task_files: TaskFiles
) -> None:
    service = serve(make_settings())
    with service.client() as client:
        assert client.get("/v1/subnetworks").json() == {"subnetworks": []}
        client.put("/v1/subnetworks/five", content=task_files.five, headers=OCTET)
        client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET)
        replaced = client.put("/v1/subnetworks/news", content=task_files.news_v2, headers=OCTET).json()
        assert replaced["version"] == 2 and replaced["k"] == 16

        manifest = client.get("/v1/subnetworks/five").json()
        sub = ken.load_bytes(task_files.five)
        assert manifest["task"] == "five" and manifest["version"] == 1
        assert manifest["k"] == 8 and manifest["method"] == sub.info.method
        assert manifest["kept_entries"] == sub.kept_entries
        assert manifest["bytes"] == len(task_files.five)
        assert manifest["labels"] == sub.info.labels and len(manifest["labels"]) == 5
        assert manifest["created"]
        assert [m["task"] for m in client.get("/v1/subnetworks").json()["subnetworks"]] == ["five", "news"]

        assert client.delete("/v1/subnetworks/news").json()["version"] == 2
        assert client.get("/v1/subnetworks/news").status_code == 404
        assert client.delete("/v1/subnetworks/news").status_code == 404
        response = client.post("/v1/predict", json={"task": "news", "inputs": ["goal"]})
        assert response.status_code == 404 and "news" in response.json()["detail"]


def test_a_replaced_task_answers_with_its_new_version(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    references: dict[str, Reference],
) -> None:
    service = serve(make_settings())
    text = TEXTS[0]
    with service.client() as client:
        client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET)
        assert torch.equal(served_logits(client, "news", text)[0], references["news"].logits(text))
        client.put("/v1/subnetworks/news", content=task_files.news_v2, headers=OCTET)
        logits, _ = served_logits(client, "news", text)
        assert torch.equal(logits, references["news_v2"].logits(text))
        assert client.post("/v1/predict", json={"task": "news", "inputs": [text]}).json()["version"] == 2
