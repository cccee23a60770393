"""The Open Inference Protocol (KServe V2) REST routes: every stored task is a model named after it.

Errors answer ``{"error": "..."}`` (see :mod:`service.api.error_handlers`). Readiness that is false
answers 503 (the protocol asks for a non-200 status).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status

import service
from ken.taskmodel import FEATURE_EXTRACTION, SEQUENCE_CLASSIFICATION
from service.api.inputs import check_inputs, check_unicode, flatten_nested
from service.api.schemas import SubnetworkManifest
from service.api.system import check_readiness
from service.api.v2_schemas import (
    TEXT_INPUT,
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    Liveness,
    ModelMetadata,
    ModelReadiness,
    Readiness,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)
from service.deps import ApiAccess, EngineDep, SettingsDep, StoreDep, TaskName
from service.engine import Prediction
from service.errors import InvalidInput
from service.task_types import check_task_type

PLATFORM = "ken-subnetwork"
#: The task types served here, and the outputs of each (the first ones are the default answer).
OUTPUTS = {
    SEQUENCE_CLASSIFICATION: ("label", "score", "logits", "truncated"),
    FEATURE_EXTRACTION: ("embedding", "truncated"),
}
DEFAULT_OUTPUTS = {SEQUENCE_CLASSIFICATION: ["label", "score", "logits"], FEATURE_EXTRACTION: ["embedding"]}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "The body is not valid JSON, or the task's type is not served here (the message names its route).",
        401: "No bearer token.",
        403: "Wrong bearer token.",
        404: "No such model (task).",
        409: "The stored subnetwork belongs to another backbone.",
        415: "The body is not sent as application/json.",
        422: "Invalid request or a limit exceeded.",
        503: "The store or the engine is unavailable.",
    }.items()
}

health_router = APIRouter(prefix="/v2", tags=["kserve-v2"])
router = APIRouter(prefix="/v2", tags=["kserve-v2"], dependencies=[ApiAccess], responses=_ERRORS)


@health_router.get("/health/live")
async def live() -> Liveness:
    return Liveness(live=True)


@health_router.get("/health/ready", responses={503: {"model": Readiness}})
async def ready(request: Request, response: Response) -> Readiness:
    readiness = await check_readiness(request)
    if not readiness.ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(ready=readiness.ready)


@router.get("")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="ken-serve", version=service.__version__, extensions=[])


@router.get("/models/{task}")
async def model_metadata(task: TaskName, store: StoreDep, engine: EngineDep) -> ModelMetadata:
    manifest = await store.manifest(task)
    stored = SubnetworkManifest.from_stored(manifest)  # CorruptSubnetwork if the info is unusable
    task_type = stored.task_type
    check_task_type(task, task_type, OUTPUTS)
    if task_type == FEATURE_EXTRACTION:
        dimension = int(engine.backbone.model.config.hidden_size)
        outputs = [TensorMetadata(name="embedding", datatype="FP32", shape=[-1, dimension])]
    else:
        labels = len(stored.labels)
        outputs = [
            TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            TensorMetadata(name="score", datatype="FP32", shape=[-1]),
            TensorMetadata(name="logits", datatype="FP32", shape=[-1, labels]),
        ]
    return ModelMetadata(
        name=task,
        versions=[str(manifest.version)],
        platform=PLATFORM,
        inputs=[TensorMetadata(name=TEXT_INPUT, datatype="BYTES", shape=[-1])],
        outputs=[*outputs, TensorMetadata(name="truncated", datatype="BOOL", shape=[-1])],
    )


@router.get("/models/{task}/ready")
async def model_ready(task: TaskName, store: StoreDep) -> ModelReadiness:
    """A stored task is ready: its delta is loaded on first use."""
    await store.manifest(task)
    return ModelReadiness(name=task, ready=True)


@router.post("/models/{task}/infer", response_model_exclude_none=True)
async def infer(task: TaskName, body: InferenceRequest, engine: EngineDep, settings: SettingsDep) -> InferenceResponse:
    """A BYTES tensor of texts named ``text`` in; out: label, score, logits [N, labels] (classification)
    or embedding [N, hidden] (embedding tasks, normalised as the task's pooling says), and truncated."""
    texts = _texts(body)
    check_inputs(texts, settings)
    if body.id is not None:
        check_unicode("the request id", body.id)  # echoed in the answer, which must be valid UTF-8
    prediction = await engine.predict(task, texts, accept=OUTPUTS)
    available = OUTPUTS[prediction.task_type]
    wanted = [output.name for output in body.outputs] if body.outputs else DEFAULT_OUTPUTS[prediction.task_type]
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise InvalidInput(f"unknown output {unknown[0]!r}; this model has {', '.join(available)}")
    tensors = _output_tensors(prediction)
    return InferenceResponse(
        model_name=task, model_version=str(prediction.version), id=body.id, outputs=[tensors[name] for name in wanted]
    )


def _texts(body: InferenceRequest) -> list[str]:
    if len(body.inputs) != 1 or body.inputs[0].name != TEXT_INPUT:
        names = ", ".join(repr(tensor.name) for tensor in body.inputs)
        raise InvalidInput(f"send exactly one input tensor named {TEXT_INPUT!r}; got {names}")
    tensor = body.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {TEXT_INPUT!r} must have datatype BYTES, not {tensor.datatype}")
    if len(tensor.shape) not in (1, 2):
        raise InvalidInput(
            f"input {TEXT_INPUT!r}: shape {tensor.shape[:4]} has {len(tensor.shape)} dimensions; use [N]"
        )
    texts = flatten_nested(tensor.data, len(tensor.shape))
    if not all(isinstance(text, str) for text in texts):
        raise InvalidInput(f"input {TEXT_INPUT!r} must hold strings")
    expected = 1
    for size in tensor.shape:
        expected *= size
    if (len(tensor.shape) == 2 and tensor.shape[1] != 1) or expected != len(texts):
        raise InvalidInput(f"input {TEXT_INPUT!r}: shape {tensor.shape} does not fit {len(texts)} texts; use [N]")
    return texts


def _output_tensors(prediction: Prediction) -> dict[str, ResponseOutput]:
    count = len(prediction.truncated)
    truncated = ResponseOutput(name="truncated", shape=[count], datatype="BOOL", data=prediction.truncated)
    if prediction.task_type == FEATURE_EXTRACTION:
        vectors = prediction.embeddings()
        embedding = ResponseOutput(
            name="embedding", shape=list(vectors.shape), datatype="FP32", data=vectors.reshape(-1).tolist()
        )
        return {"embedding": embedding, "truncated": truncated}
    scores, indices = prediction.probabilities().max(dim=1)
    labels = prediction.logits.shape[1]
    return {
        "label": ResponseOutput(
            name="label", shape=[count], datatype="BYTES", data=[prediction.labels[i] for i in indices.tolist()]
        ),
        "score": ResponseOutput(name="score", shape=[count], datatype="FP32", data=scores.tolist()),
        "logits": ResponseOutput(
            name="logits", shape=[count, labels], datatype="FP32", data=prediction.logits.reshape(-1).tolist()
        ),
        "truncated": truncated,
    }
