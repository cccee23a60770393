"""Embedding tasks through real HTTP: /v1/embed, /v1/embeddings, KServe V2, against the materialised model."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

import ken
from service.client import KenClient
from service.settings import Settings
from tests.service.conftest import MAX_LENGTH, OCTET, TaskFiles
from tests.service.servers import ServiceThread
from tests.tiny_models import TinyPair

TEXTS = [
    "the team won the cup match with a late goal",
    "bank shares fell as profit growth slowed",
    "a",
    "election vote party minister government " * 20,  # longer than the model: truncated
]


@pytest.fixture(scope="module")
def embedding_task(tiny_bert: TinyPair, tiny_bert_kinds: dict[str, Path]) -> ken.Subnetwork:
    return ken.extract(tiny_bert.base, tiny_bert_kinds["feature-extraction"], k=8, progress=False)


@pytest.fixture(scope="module")
def reference(tiny_bert: TinyPair, embedding_task: ken.Subnetwork, tmp_path_factory: pytest.TempPathFactory):
    """The materialised task as a sentence-transformers model (mean pooling, normalised)."""
    folder = ken.materialize(tiny_bert.base, embedding_task, tmp_path_factory.mktemp("emb") / "model")
    model = SentenceTransformer(str(folder), device="cpu")
    model.max_seq_length = MAX_LENGTH
    return model


@pytest.fixture
def service(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    embedding_task: ken.Subnetwork,
    task_files: TaskFiles,
) -> ServiceThread:
    service = serve(make_settings())
    with service.client() as client:
        for task, blob in (("emb", ken.save_bytes(embedding_task)), ("news", task_files.news)):
            response = client.put(f"/v1/subnetworks/{task}", content=blob, headers=OCTET)
            assert response.status_code == 201, response.text
    return service


def expected(reference: SentenceTransformer, text: str) -> torch.Tensor:
    return reference.encode([text], convert_to_tensor=True)[0]


def test_embed_equals_the_materialised_sentence_transformer(service: ServiceThread, reference) -> None:
    with service.client() as client:
        manifest = client.get("/v1/subnetworks/emb").json()
        assert manifest["task_type"] == "feature-extraction" and manifest["labels"] == []
        assert manifest["pooling"] == {"mode": "mean", "normalize": True, "max_seq_length": None}
        for text in TEXTS:  # one input per request: no padding, as sentence-transformers encodes one text
            response = client.post("/v1/embed", json={"task": "emb", "inputs": text})
            assert response.status_code == 200, response.text
            assert response.headers["X-Ken-Task-Version"] == "1"
            (vector,) = response.json()
            torch.testing.assert_close(torch.tensor(vector), expected(reference, text), rtol=1e-5, atol=1e-6)

        batch = client.post("/v1/embed", json={"task": "emb", "inputs": TEXTS}).json()
        torch.testing.assert_close(
            torch.tensor(batch), reference.encode(TEXTS, convert_to_tensor=True), rtol=1e-5, atol=1e-5
        )
        raw = torch.tensor(client.post("/v1/embed", json={"task": "emb", "inputs": TEXTS, "normalize": False}).json())
        assert not torch.allclose(raw.norm(dim=1), torch.ones(len(TEXTS)))
        torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=1), torch.tensor(batch), rtol=1e-5, atol=1e-6)


def test_openai_embeddings(service: ServiceThread, reference, tiny_bert: TinyPair) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert.base)
    tokens = sum(len(ids) for ids in tokenizer(TEXTS, truncation=True, max_length=MAX_LENGTH)["input_ids"])
    with service.client() as client:
        floats = client.post("/v1/embeddings", json={"model": "emb", "input": TEXTS})
        assert floats.status_code == 200, floats.text
        body = floats.json()
        assert body["object"] == "list" and body["model"] == "emb"
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        assert [item["index"] for item in body["data"]] == [0, 1, 2, 3]
        vectors = torch.tensor([item["embedding"] for item in body["data"]])
        torch.testing.assert_close(vectors, reference.encode(TEXTS, convert_to_tensor=True), rtol=1e-5, atol=1e-5)

        encoded = client.post("/v1/embeddings", json={"model": "emb", "input": TEXTS, "encoding_format": "base64"})
        decoded = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in encoded.json()["data"]]
        assert torch.equal(torch.tensor(np.stack(decoded)), vectors)

        single = client.post("/v1/embeddings", json={"model": "emb", "input": "a", "dimensions": 32}).json()
        assert len(single["data"]) == 1 and len(single["data"][0]["embedding"]) == 32
        wrong_size = client.post("/v1/embeddings", json={"model": "emb", "input": "a", "dimensions": 8})
        assert wrong_size.status_code == 422 and "have 32" in wrong_size.json()["detail"]
        token_ids = client.post("/v1/embeddings", json={"model": "emb", "input": [[1, 2, 3]]})
        assert token_ids.status_code == 422


def test_kserve_v2_embedding_output(service: ServiceThread, reference) -> None:
    with service.client() as client:
        metadata = client.get("/v2/models/emb").json()
        assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [("embedding", [-1, 32]), ("truncated", [-1])]
        body = {"inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}]}
        response = client.post("/v2/models/emb/infer", json=body)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["name"] == "embedding" and output["shape"] == [len(TEXTS), 32]
        vectors = torch.tensor(output["data"]).reshape(len(TEXTS), 32)
        torch.testing.assert_close(vectors, reference.encode(TEXTS, convert_to_tensor=True), rtol=1e-5, atol=1e-5)
        asked = client.post("/v2/models/emb/infer", json={**body, "outputs": [{"name": "truncated"}]}).json()
        assert asked["outputs"][0]["data"] == [False, False, False, True]
        wrong = client.post("/v2/models/emb/infer", json={**body, "outputs": [{"name": "logits"}]})
        assert wrong.status_code == 422 and "embedding, truncated" in wrong.json()["error"]


def test_a_task_on_the_wrong_route_is_told_the_right_one(service: ServiceThread) -> None:
    with service.client() as client:
        on_predict = client.post("/v1/predict", json={"task": "emb", "inputs": ["a"]})
        assert on_predict.status_code == 400
        assert "feature-extraction task: use POST /v1/embed, POST /v1/embeddings" in on_predict.json()["detail"]
        on_embed = client.post("/v1/embed", json={"task": "news", "inputs": ["a"]})
        assert on_embed.status_code == 400 and "use POST /v1/predict" in on_embed.json()["detail"]
        on_openai = client.post("/v1/embeddings", json={"model": "news", "input": "a"})
        assert on_openai.status_code == 400 and "sequence-classification" in on_openai.json()["detail"]
        assert client.post("/v1/embed", json={"task": "nope", "inputs": "a"}).status_code == 404
        text = client.get("/metrics").text
    # refused requests count as errors of their task; no inputs were answered for them
    assert 'ken_inference_requests_total{outcome="error",task="emb"} 1.0' in text
    assert 'ken_inference_inputs_total{task="emb"}' not in text


def test_metrics_count_embedding_requests_per_task(service: ServiceThread) -> None:
    with service.client() as client:
        assert client.post("/v1/embed", json={"task": "emb", "inputs": ["goal", "bank"]}).status_code == 200
        assert client.post("/v1/embeddings", json={"model": "emb", "input": "goal"}).status_code == 200
        text = client.get("/metrics").text
    assert 'ken_inference_requests_total{outcome="ok",task="emb"} 2.0' in text
    assert 'ken_inference_inputs_total{task="emb"} 3.0' in text
    assert 'ken_inference_tokens_total{task="emb"} 9.0' in text  # [CLS] word [SEP] per text


def test_an_embedding_upload_with_a_head_is_refused(service: ServiceThread, embedding_task: ken.Subnetwork) -> None:
    head = {"classifier.weight": torch.zeros(3, 32)}
    blob = ken.save_bytes(ken.Subnetwork(embedding_task.deltas, head, embedding_task.info))
    with service.client() as client:
        response = client.put("/v1/subnetworks/emb-head", content=blob, headers=OCTET)
        assert response.status_code == 400 and "has no head" in response.json()["detail"]
        assert client.get("/v1/subnetworks/emb-head").status_code == 404


def test_the_python_client_embeds(service: ServiceThread) -> None:
    with service.client() as http, KenClient(service.url) as client:
        expected = http.post("/v1/embed", json={"task": "emb", "inputs": TEXTS, "normalize": False}).json()
        assert client.embed("emb", TEXTS, normalize=False) == expected
