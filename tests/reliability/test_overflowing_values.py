"""Values that overflow: refused at upload, and never answered as NaN/Inf scores.

* A delta or head value beyond float16's range (float64 1e300 becomes Inf in a float32 backbone;
  float32 3e38 is representable but overflows the first matrix product) is a 400 naming the tensor.
* A task whose weights are within that range but still overflow in the forward pass (a float16
  backbone, a head of 60,000s aligned with the input's pooled features) answers 500 with a message and
  counts ``ken_nonfinite_outputs_total``; the backbone is restored and other tasks answer normally.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from service.settings import Settings
from tests.ken.test_fileformat import _corrupt, _set
from tests.reliability.helpers import metric
from tests.reliability.test_hostile_uploads import assert_nothing_stored
from tests.service.conftest import MAX_LENGTH, OCTET, Reference, TaskFiles
from tests.service.servers import ServiceThread

QUERY = "encoder.layer.0.attention.self.query.weight"
TEXT = "the team won the cup match"


@pytest.fixture
def service(make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread]) -> ServiceThread:
    return serve(make_settings())


def first_value(value: float, dtype: torch.dtype = torch.float32) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t.to(dtype).index_fill_(0, torch.tensor([0]), value)


OVERFLOWING = [
    ("float64 1e300 in a delta", f"delta/{QUERY}/values", first_value(1e300, torch.float64)),
    ("float64 -1e300 in a delta", f"delta/{QUERY}/values", first_value(-1e300, torch.float64)),
    ("float32 3e38 in a delta", f"delta/{QUERY}/values", first_value(3e38)),
    ("float32 1e5 in a delta", f"delta/{QUERY}/values", first_value(1e5)),
    ("float32 3e38 in the head", "head/classifier.weight", lambda t: t.fill_(3e38)),
    ("float64 1e300 in the head", "head/classifier.bias", lambda t: t.to(torch.float64).fill_(1e300)),
]


@pytest.mark.parametrize(("case", "key", "edit"), OVERFLOWING, ids=[case for case, _, _ in OVERFLOWING])
def test_overflowing_values_are_refused_at_upload(
    service: ServiceThread, task_files: TaskFiles, case: str, key: str, edit: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    body = _corrupt(task_files.news_subnetwork, _set(key, edit))
    with service.client() as client:
        response = client.put("/v1/subnetworks/news", content=body, headers=OCTET)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "magnitude" in detail and key.split("/")[1] in detail, detail
    assert_nothing_stored(service)


def aligned_head(reference: Reference, text: str) -> Callable[[dict, dict], None]:
    """A head of +-60,000 whose signs follow ``text``'s pooled features: its logits exceed float16's range."""
    inputs = reference.tokenizer([text], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        pooled = reference.model.base_model(**inputs).pooler_output[0]
    weight = (torch.sign(pooled) * 60_000.0).expand(3, -1).contiguous()

    def edit(tensors: dict, meta: dict) -> None:
        tensors["head/classifier.weight"] = weight
        tensors["head/classifier.bias"] = torch.zeros(3)

    return edit


def test_scores_that_overflow_in_the_forward_pass_are_an_error_not_nan(
    make_settings: Callable[..., Settings],
    serve: Callable[[Settings], ServiceThread],
    task_files: TaskFiles,
    references: dict[str, Reference],
) -> None:
    service = serve(make_settings(dtype="float16"))
    body = _corrupt(task_files.news_subnetwork, aligned_head(references["news"], TEXT))
    with service.client() as client:
        assert client.put("/v1/subnetworks/hot", content=body, headers=OCTET).status_code == 201
        assert client.put("/v1/subnetworks/news", content=task_files.news, headers=OCTET).status_code == 201
        for _ in range(2):  # also once the task's delta is cached
            response = client.post("/v1/predict", json={"task": "hot", "inputs": [TEXT]})
            assert response.status_code == 500, response.text
            assert "NaN or Inf" in response.json()["detail"] and "'hot'" in response.json()["detail"]
        v2 = client.post(
            "/v2/models/hot/infer",
            json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]},
        )
        assert v2.status_code == 500 and "NaN or Inf" in v2.json()["error"], v2.text
        assert client.post("/v1/predict", json={"task": "news", "inputs": [TEXT]}).status_code == 200
        assert client.get("/v1/backbone/integrity").json()["intact"] is True
    assert metric(service, "ken_nonfinite_outputs_total", task="hot") == 3
