"""``POST /v1/predict``: classify texts with a task."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.inputs import check_inputs
from service.api.schemas import InputPrediction, LabelScore, PredictRequest, PredictResponse
from service.deps import ApiAccess, EngineDep, SettingsDep
from service.engine import Prediction

router = APIRouter(prefix="/v1", tags=["inference"], dependencies=[ApiAccess])


@router.post(
    "/predict",
    responses={
        400: {"description": "The body is not valid JSON."},
        401: {"description": "No bearer token."},
        403: {"description": "Wrong bearer token."},
        404: {"description": "No such task."},
        409: {"description": "The stored subnetwork belongs to another backbone."},
        415: {"description": "The body is not sent as application/json."},
        422: {"description": "Invalid request or a limit exceeded."},
        503: {"description": "The store or the engine is unavailable."},
    },
)
async def predict(body: PredictRequest, engine: EngineDep, settings: SettingsDep) -> PredictResponse:
    """Per input: the ``top_k`` labels with softmax scores, raw logits on request, and whether it was truncated."""
    check_inputs(body.inputs, settings)
    prediction = await engine.predict(body.task, body.inputs)
    return PredictResponse(
        task=prediction.task,
        version=prediction.version,
        predictions=_per_input(prediction, body.top_k, body.return_logits),
    )


def _per_input(prediction: Prediction, top_k: int, return_logits: bool) -> list[InputPrediction]:
    probabilities = prediction.probabilities()
    k = min(top_k, len(prediction.labels))
    scores, indices = probabilities.topk(k, dim=1)
    return [
        InputPrediction(
            labels=[
                LabelScore(label=prediction.labels[i], score=s)
                for s, i in zip(scores[row].tolist(), indices[row].tolist(), strict=True)
            ],
            logits=prediction.logits[row].tolist() if return_logits else None,
            truncated=prediction.truncated[row],
        )
        for row in range(len(prediction.truncated))
    ]
