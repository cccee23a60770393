"""``POST /v1/rerank``: score (query, text) pairs with a cross-encoder task; best first, as TEI answers.

The task's version answers in the ``X-Ken-Task-Version`` header.
"""

from __future__ import annotations

import torch
from fastapi import APIRouter, Response

from ken.taskmodel import PAIR_SCORING
from service.api.inputs import check_inputs, check_unicode
from service.api.rerank_schemas import Rank, RerankRequest
from service.api.responses import VERSION_HEADER, inference_errors
from service.deps import ApiAccess, EngineDep, SettingsDep
from service.errors import InvalidInput

router = APIRouter(
    prefix="/v1", tags=["rerank"], dependencies=[ApiAccess], responses=inference_errors("a pair-scoring")
)


@router.post("/rerank", response_model_exclude_none=True)
async def rerank(body: RerankRequest, engine: EngineDep, settings: SettingsDep, response: Response) -> list[Rank]:
    """One result per text, highest score first (ties keep request order)."""
    check_inputs(body.texts, settings)
    check_unicode("the query", body.query)
    if len(body.query) > settings.max_input_chars:
        raise InvalidInput(f"the query has {len(body.query)} characters; at most {settings.max_input_chars}")
    queries = [body.query] * len(body.texts)
    prediction = await engine.predict(body.task, queries, pairs=body.texts, accept=(PAIR_SCORING,))
    logits = prediction.logits[:, 0]
    scores = logits if body.raw_scores else torch.sigmoid(logits)
    order = sorted(range(len(body.texts)), key=lambda i: -float(scores[i]))
    response.headers[VERSION_HEADER] = str(prediction.version)
    return [Rank(index=i, score=float(scores[i]), text=body.texts[i] if body.return_text else None) for i in order]
