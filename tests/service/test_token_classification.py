"""Token classification through real HTTP: entities equal transformers' pipeline on the materialised model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import AutoModelForTokenClassification, AutoTokenizer, Pipeline, pipeline

import ken
from service.client import KenClient
from service.settings import Settings
from tests.service.conftest import MAX_LENGTH, OCTET, TaskFiles
from tests.service.servers import ServiceThread
from tests.tiny_models import TinyPair

TEXTS = [
    "the team won the cup match with a late goal",
    "Bank  shares fell, as profit growth slowed!",
    "zzz unknownword the film",
    "a",
    "election vote party minister government " * 20,  # longer than the model: truncated
]


@pytest.fixture(scope="module")
def tagger_task(tiny_bert: TinyPair, tiny_bert_kinds: dict[str, Path]) -> ken.Subnetwork:
    return ken.extract(tiny_bert.base, tiny_bert_kinds["token-classification"], k=8, progress=False)


@pytest.fixture(scope="module")
def reference(tiny_bert: TinyPair, tagger_task: ken.Subnetwork, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """transformers' token-classification pipeline over the materialised task."""
    folder = ken.materialize(tiny_bert.base, tagger_task, tmp_path_factory.mktemp("ner") / "model")
    tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=MAX_LENGTH)
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    return pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")


@pytest.fixture
def service(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    tagger_task: ken.Subnetwork,
    task_files: TaskFiles,
) -> ServiceThread:
    service = serve(make_settings())
    with service.client() as client:
        for task, blob in (("ner", ken.save_bytes(tagger_task)), ("news", task_files.news)):
            response = client.put(f"/v1/subnetworks/{task}", content=blob, headers=OCTET)
            assert response.status_code == 201, response.text
    return service


def comparable(entities: list[dict]) -> tuple[list[dict], list[float]]:
    """Entities without their scores (compared apart, with a tolerance), numbers as plain ints."""
    rest = [
        {k: (int(v) if k in ("index", "start", "end") else v) for k, v in e.items() if k != "score"} for e in entities
    ]
    return rest, [float(e["score"]) for e in entities]


@pytest.mark.parametrize("strategy", ["simple", "none"])
def test_entities_equal_the_transformers_pipeline(service: ServiceThread, reference: Pipeline, strategy: str) -> None:
    groups = 0
    with service.client() as client:
        response = client.post(
            "/v1/token-classification", json={"task": "ner", "inputs": TEXTS, "aggregation_strategy": strategy}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["task"] == "ner" and body["version"] == 1
        for text, prediction in zip(TEXTS, body["predictions"], strict=True):
            assert prediction["truncated"] == (text is TEXTS[-1])
            got, got_scores = comparable(prediction["entities"])
            want, want_scores = comparable(reference(text, aggregation_strategy=strategy))
            assert got == want, (strategy, text)
            assert got_scores == pytest.approx(want_scores, rel=1e-5)
            groups += len(got)
            for entity in prediction["entities"]:  # offsets point into the text
                assert 0 <= entity["start"] <= entity["end"] <= len(text)
    assert groups > 0


def test_ignore_labels_and_the_wrong_route(service: ServiceThread, reference: Pipeline) -> None:
    text = TEXTS[0]
    with service.client() as client:
        body = {"task": "ner", "inputs": [text], "aggregation_strategy": "none", "ignore_labels": []}
        everything = client.post("/v1/token-classification", json=body).json()["predictions"][0]["entities"]
        tokens = AutoTokenizer.from_pretrained(reference.tokenizer.name_or_path)(text)["input_ids"]
        assert [e["index"] for e in everything] == list(range(1, len(tokens) - 1))  # every non-special token
        assert (
            comparable(everything)[0] == comparable(reference(text, aggregation_strategy="none", ignore_labels=[]))[0]
        )

        on_predict = client.post("/v1/predict", json={"task": "ner", "inputs": ["a"]})
        assert on_predict.status_code == 400
        assert "token-classification task: use POST /v1/token-classification" in on_predict.json()["detail"]
        on_tokens = client.post("/v1/token-classification", json={"task": "news", "inputs": ["a"]})
        assert on_tokens.status_code == 400 and "use POST /v1/predict" in on_tokens.json()["detail"]
        v2 = client.post(
            "/v2/models/ner/infer",
            json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
        )
        assert v2.status_code == 400 and "POST /v1/token-classification" in v2.json()["error"]
        assert client.get("/v2/models/ner").status_code == 400
        bad = client.post(
            "/v1/token-classification", json={"task": "ner", "inputs": ["a"], "aggregation_strategy": "max"}
        )
        assert bad.status_code == 422
        misspelt = client.post("/v1/token-classification", json={"task": "ner", "inputs": ["a"], "ignore_label": []})
        assert misspelt.status_code == 422 and "did you mean 'ignore_labels'" in misspelt.text
        client.post("/v1/token-classification", json={"task": "ner", "inputs": ["goal", "bank"]})
        metrics = client.get("/metrics").text
    assert 'ken_inference_inputs_total{task="ner"} 3.0' in metrics
    assert 'ken_inference_requests_total{outcome="error",task="ner"} 2.0' in metrics


def test_the_python_client_tags_tokens(service: ServiceThread) -> None:
    with service.client() as http, KenClient(service.url) as client:
        body = {"task": "ner", "inputs": TEXTS[:2], "aggregation_strategy": "none"}
        expected = http.post("/v1/token-classification", json=body).json()
        answer = client.classify_tokens("ner", TEXTS[:2], aggregation_strategy="none")
        assert answer.model_dump(exclude_none=True) == expected
