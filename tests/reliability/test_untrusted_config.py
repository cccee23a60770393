"""An uploaded subnetwork's config and head names are not trusted.

The task model is built from the backbone's config plus the head's own fields (labels, problem type,
dropout); a config that selects code or another architecture is refused naming the field, and a head
tensor must be exactly one of the head module's tensors (never a backbone name), with its shape.
Every refusal leaves nothing stored and the backbone intact; harmless differences are accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

import ken
from service.settings import Settings
from tests.ken.test_fileformat import _corrupt
from tests.reliability.test_hostile_uploads import assert_nothing_stored
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread


@pytest.fixture
def service(make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread]) -> ServiceThread:
    return serve(make_settings())


def with_config(**fields: Any) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        meta["config"].update(fields)

    return edit


def with_head(name: str, tensor: torch.Tensor, *, drop: str | None = None) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        tensors[f"head/{name}"] = tensor
        if name not in meta["head"]:
            meta["head"].append(name)
        if drop is not None:
            tensors.pop(f"head/{drop}")
            meta["head"].remove(drop)

    return edit


CONFIG_CASES = [
    ("hub attention kernel", with_config(attn_implementation="kernels-community/flash-attn"), "attn_implementation"),
    ("user attention kernel", with_config(_attn_implementation="my_module.attention"), "_attn_implementation"),
    ("remote code", with_config(auto_map={"AutoModel": "evil.Model"}), "auto_map"),
    ("trust_remote_code", with_config(trust_remote_code=True), "trust_remote_code"),
    ("quantizer", with_config(quantization_config={"quant_method": "bitsandbytes"}), "quantization_config"),
    ("more heads", with_config(num_attention_heads=4), "num_attention_heads"),
    ("other hidden size", with_config(hidden_size=64), "hidden_size"),
    ("hidden size as a string", with_config(hidden_size="32"), "hidden_size"),
    ("many layers", with_config(num_hidden_layers=100_000), "num_hidden_layers"),
    ("model_type as a list", with_config(model_type=["bert"]), "model_type"),
    ("other model type", with_config(model_type="gpt2"), "model_type"),
    ("huge pad token id", with_config(pad_token_id=10**12), "pad_token_id"),
    ("gap in id2label", with_config(id2label={"0": "a", "1": "b", "5": "c"}), "id2label"),
    ("id2label as a list", with_config(id2label=["a", "b", "c"]), "id2label"),
    ("non-string label", with_config(id2label={"0": "a", "1": 2, "2": "c"}), "id2label"),
    ("unknown problem type", with_config(problem_type="world_domination"), "problem_type"),
    ("dropout out of range", with_config(classifier_dropout=5), "classifier_dropout"),
]

HEAD_CASES = [
    (
        "head shadows a backbone tensor (task model name)",
        with_head("bert.embeddings.word_embeddings.weight", torch.zeros(62, 32)),
        "backbone tensor",
    ),
    (
        "head shadows a backbone tensor (backbone name)",
        with_head("encoder.layer.0.attention.self.query.weight", torch.zeros(32, 32)),
        "backbone tensor",
    ),
    ("head tensor of the wrong shape", with_head("classifier.weight", torch.zeros(3, 16)), "shape"),
    ("head tensor with an extra dimension", with_head("classifier.bias", torch.zeros(3, 1)), "shape"),
    ("head tensor missing", lambda t, m: (t.pop("head/classifier.bias"), m["head"].remove("classifier.bias")), "lacks"),
    ("head tensor of another head", with_head("pre_classifier.weight", torch.zeros(32, 32)), "does not belong"),
]


@pytest.mark.parametrize(
    ("case", "edit", "field"), CONFIG_CASES + HEAD_CASES, ids=lambda v: v if isinstance(v, str) else ""
)
def test_untrusted_config_and_head_are_refused_naming_the_field(
    service: ServiceThread, task_files: TaskFiles, case: str, edit: Callable[[dict, dict], None], field: str
) -> None:
    body = _corrupt(task_files.news_subnetwork, edit)
    started = time.monotonic()
    with service.client() as client:
        response = client.put("/v1/subnetworks/news", content=body, headers=OCTET)
    assert response.status_code == 400, (case, response.text)
    assert field in response.json()["detail"], (case, response.text)
    assert time.monotonic() - started < 30, "the refusal must not build the model the config describes"
    assert_nothing_stored(service)


def test_harmless_config_differences_are_ignored_and_the_task_serves_as_before(
    service: ServiceThread, task_files: TaskFiles, references: dict
) -> None:
    """Fine-tune-time settings that change nothing at inference are ignored, not refused."""
    body = _corrupt(
        task_files.news_subnetwork,
        with_config(
            hidden_dropout_prob=0.3,
            attention_probs_dropout_prob=0.2,
            classifier_dropout=0.1,
            architectures=["SomethingElse"],
            transformers_version="0.0.1",
            _name_or_path="https://example.invalid/model",
            attn_implementation="eager",
            use_cache=False,
        ),
    )
    with service.client() as client:
        assert client.put("/v1/subnetworks/news", content=body, headers=OCTET).status_code == 201
        response = client.post(
            "/v1/predict", json={"task": "news", "inputs": ["goal match team"], "return_logits": True}
        )
        assert response.status_code == 200, response.text
        logits = torch.tensor(response.json()["predictions"][0]["logits"])
        assert client.get("/v1/backbone/integrity").json()["intact"] is True
    torch.testing.assert_close(logits, references["news"].logits("goal match team"), rtol=1e-5, atol=1e-5)


def test_the_task_model_is_built_from_the_backbone_config(task_files: TaskFiles, tiny_bert) -> None:  # type: ignore[no-untyped-def]
    """Library level: whatever the stored config says about dropout layers or attention, the backbone's wins."""
    backbone = ken.load_backbone_model(tiny_bert.base)
    sub = task_files.news_subnetwork
    info = ken.SubnetworkInfo(**{**sub.info.__dict__, "config": {"id2label": {"0": "x", "1": "y", "2": "z"}}})
    model = ken.attach_head(backbone, info, sub.head)
    assert model.config.num_hidden_layers == backbone.config.num_hidden_layers
    assert model.config._attn_implementation == backbone.config._attn_implementation
    assert model.config.id2label == {0: "x", 1: "y", 2: "z"}
    assert model.base_model is backbone
