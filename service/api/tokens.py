"""``POST /v1/token-classification``: per-token labels with character offsets, or entity spans (NER)."""

from __future__ import annotations

from fastapi import APIRouter
from transformers import PreTrainedTokenizerBase

from ken.entities import group_simple, token_labels, without_ignored
from ken.taskmodel import TOKEN_CLASSIFICATION
from service.api.inputs import check_inputs
from service.api.responses import inference_errors
from service.api.tokens_schemas import (
    Entity,
    TokenClassificationRequest,
    TokenClassificationResponse,
    TokenPrediction,
)
from service.deps import ApiAccess, EngineDep, SettingsDep
from service.engine import Prediction

ERRORS = inference_errors("a token-classification")
router = APIRouter(prefix="/v1", tags=["token-classification"], dependencies=[ApiAccess], responses=ERRORS)


@router.post("/token-classification", response_model_exclude_none=True)
async def classify_tokens(
    body: TokenClassificationRequest, engine: EngineDep, settings: SettingsDep
) -> TokenClassificationResponse:
    """Per input: its entities (special tokens and ``ignore_labels`` left out), and whether it was truncated."""
    check_inputs(body.inputs, settings)
    prediction = await engine.predict(body.task, body.inputs, accept=(TOKEN_CLASSIFICATION,))
    tokenizer = engine.backbone.tokenizer
    predictions = [
        TokenPrediction(entities=_entities(prediction, row, text, tokenizer, body), truncated=prediction.truncated[row])
        for row, text in enumerate(body.inputs)
    ]
    return TokenClassificationResponse(task=prediction.task, version=prediction.version, predictions=predictions)


def _entities(
    prediction: Prediction, row: int, text: str, tokenizer: PreTrainedTokenizerBase, body: TokenClassificationRequest
) -> list[Entity]:
    encoded = prediction.encoded
    assert encoded.offsets is not None and encoded.special is not None
    tokens = tokenizer.convert_ids_to_tokens(encoded.features[row]["input_ids"])
    labels = token_labels(
        text,
        prediction.outputs[row],
        prediction.labels,
        tokens,
        encoded.offsets[row],
        encoded.special[row],
        unknown_token=tokenizer.unk_token,
    )
    found = (
        group_simple(labels, tokenizer.convert_tokens_to_string) if body.aggregation_strategy == "simple" else labels
    )
    return [Entity(**vars(entity)) for entity in without_ignored(found, body.ignore_labels)]
