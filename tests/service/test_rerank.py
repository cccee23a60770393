"""Pair scoring (cross-encoder) through real HTTP: /v1/rerank equals the materialised CrossEncoder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import ken
from service.client import KenClient, KenServiceError
from service.settings import Settings
from tests.service.conftest import MAX_LENGTH, OCTET, TaskFiles
from tests.service.servers import ServiceThread
from tests.tiny_models import TinyPair

QUERY = "who won the cup match"
TEXTS = [
    "the team won the cup match with a late goal",
    "bank shares fell as profit growth slowed",
    "a",
    "election vote party minister government " * 20,  # the pair is longer than the model: truncated
    "the film music won an award",
]


@pytest.fixture(scope="module")
def scorer_task(tiny_bert: TinyPair, tiny_bert_kinds: dict[str, Path]) -> ken.Subnetwork:
    return ken.extract(tiny_bert.base, tiny_bert_kinds["pair-scoring"], k=8, progress=False)


@pytest.fixture(scope="module")
def materialised(tiny_bert: TinyPair, scorer_task: ken.Subnetwork, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ken.materialize(tiny_bert.base, scorer_task, tmp_path_factory.mktemp("rerank") / "model")


@pytest.fixture
def service(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    scorer_task: ken.Subnetwork,
    task_files: TaskFiles,
) -> ServiceThread:
    service = serve(make_settings())
    with service.client() as client:
        for task, blob in (("rank", ken.save_bytes(scorer_task)), ("news", task_files.news)):
            response = client.put(f"/v1/subnetworks/{task}", content=blob, headers=OCTET)
            assert response.status_code == 201, response.text
    return service


def test_rerank_equals_the_materialised_cross_encoder(service: ServiceThread, materialised: Path) -> None:
    cross_encoder = CrossEncoder(str(materialised), device="cpu", max_length=MAX_LENGTH)
    expected = torch.tensor(cross_encoder.predict([(QUERY, text) for text in TEXTS]))
    with service.client() as client:
        response = client.post("/v1/rerank", json={"task": "rank", "query": QUERY, "texts": TEXTS, "return_text": True})
        assert response.status_code == 200, response.text
        assert response.headers["X-Ken-Task-Version"] == "1"
        ranks = response.json()
        raw = client.post(
            "/v1/rerank", json={"task": "rank", "query": QUERY, "texts": TEXTS, "raw_scores": True}
        ).json()
    assert [r["index"] for r in ranks] == torch.argsort(expected, descending=True, stable=True).tolist()
    assert all(r["text"] == TEXTS[r["index"]] for r in ranks)
    by_index = torch.tensor([r["score"] for r in sorted(ranks, key=lambda r: r["index"])])
    torch.testing.assert_close(by_index, expected, rtol=1e-5, atol=1e-6)
    assert "text" not in raw[0]

    model = AutoModelForSequenceClassification.from_pretrained(materialised).eval()
    tokenizer = AutoTokenizer.from_pretrained(materialised)
    for rank in raw:  # one pair at a time: the logit itself
        inputs = tokenizer(QUERY, TEXTS[rank["index"]], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.no_grad():
            logit = model(**inputs).logits[0, 0]
        assert rank["score"] == pytest.approx(float(logit), rel=1e-5, abs=1e-6)


def test_wrong_routes_limits_and_upload_validation(
    service: ServiceThread, tiny_bert: TinyPair, task_files: TaskFiles
) -> None:
    with service.client() as client:
        on_predict = client.post("/v1/predict", json={"task": "rank", "inputs": ["a"]})
        assert on_predict.status_code == 400 and "pair-scoring task: use POST /v1/rerank" in on_predict.json()["detail"]
        on_rerank = client.post("/v1/rerank", json={"task": "news", "query": "a", "texts": ["b"]})
        assert on_rerank.status_code == 400 and "use POST /v1/predict" in on_rerank.json()["detail"]
        assert client.post("/v1/rerank", json={"task": "rank", "query": "a", "texts": []}).status_code == 422
        long_query = client.post("/v1/rerank", json={"task": "rank", "query": "x" * 20_001, "texts": ["b"]})
        assert long_query.status_code == 422 and "the query has 20001 characters" in long_query.json()["detail"]

        three_labels = ken.extract(tiny_bert.base, tiny_bert.finetuned, k=8, progress=False, task_type="pair-scoring")
        upload = client.put("/v1/subnetworks/nli", content=ken.save_bytes(three_labels), headers=OCTET)
        assert upload.status_code == 400 and "one relevance score per pair" in upload.json()["detail"]
        assert client.get("/v1/subnetworks/nli").status_code == 404

        assert client.post("/v1/rerank", json={"task": "rank", "query": "a", "texts": ["b", "c"]}).status_code == 200
        metrics = client.get("/metrics").text
    assert 'ken_inference_inputs_total{task="rank"} 2.0' in metrics
    assert 'ken_inference_requests_total{outcome="ok",task="rank"} 1.0' in metrics


def test_the_python_client_reranks(service: ServiceThread) -> None:
    with service.client() as http, KenClient(service.url) as client:
        expected = http.post("/v1/rerank", json={"task": "rank", "query": QUERY, "texts": TEXTS}).json()
        assert [rank.model_dump(exclude_none=True) for rank in client.rerank("rank", QUERY, TEXTS)] == expected
        with pytest.raises(KenServiceError) as refused:
            client.rerank("news", QUERY, TEXTS)
    assert refused.value.status_code == 400 and "POST /v1/predict" in refused.value.message
