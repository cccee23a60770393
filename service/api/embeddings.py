"""Embedding tasks: ``POST /v1/embed`` (TEI's shape: a list of vectors) and ``POST /v1/embeddings`` (OpenAI's).

Both pool the backbone's token states as the task's pooling says (sentence-transformers' mean
pooling for all-MiniLM-L6-v2) and normalise by the task's default unless ``/v1/embed`` is told
otherwise. The task's version answers in the ``X-Ken-Task-Version`` header.
"""

from __future__ import annotations

import base64

import torch
from fastapi import APIRouter, Response

from ken.taskmodel import FEATURE_EXTRACTION
from service.api.embeddings_schemas import (
    EmbedRequest,
    OpenAIEmbedding,
    OpenAIEmbeddingsRequest,
    OpenAIEmbeddingsResponse,
    OpenAIUsage,
)
from service.api.inputs import check_inputs
from service.api.responses import VERSION_HEADER, inference_errors
from service.deps import ApiAccess, EngineDep, SettingsDep
from service.engine import Prediction
from service.errors import InvalidInput

router = APIRouter(
    prefix="/v1", tags=["embeddings"], dependencies=[ApiAccess], responses=inference_errors("an embedding")
)


async def _embed(engine: EngineDep, settings: SettingsDep, task: str, inputs: str | list[str]) -> Prediction:
    texts = [inputs] if isinstance(inputs, str) else inputs
    check_inputs(texts, settings)
    return await engine.predict(task, texts, accept=(FEATURE_EXTRACTION,))


@router.post("/embed")
async def embed(body: EmbedRequest, engine: EngineDep, settings: SettingsDep, response: Response) -> list[list[float]]:
    """One vector per input, in input order."""
    prediction = await _embed(engine, settings, body.task, body.inputs)
    response.headers[VERSION_HEADER] = str(prediction.version)
    return prediction.embeddings(body.normalize).tolist()


@router.post("/embeddings")
async def openai_embeddings(
    body: OpenAIEmbeddingsRequest, engine: EngineDep, settings: SettingsDep, response: Response
) -> OpenAIEmbeddingsResponse:
    """OpenAI's embeddings API: ``model`` names the task; vectors normalised as the task's pooling says."""
    prediction = await _embed(engine, settings, body.model, body.input)
    vectors = prediction.embeddings()
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise InvalidInput(f"dimensions={body.dimensions}: this task's embeddings have {vectors.shape[1]}; omit it")
    response.headers[VERSION_HEADER] = str(prediction.version)
    tokens = sum(len(features["input_ids"]) for features in prediction.encoded.features)
    data = [
        OpenAIEmbedding(index=i, embedding=_encode(vector, body.encoding_format)) for i, vector in enumerate(vectors)
    ]
    return OpenAIEmbeddingsResponse(
        data=data, model=body.model, usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens)
    )


def _encode(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.contiguous().numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
