"""Bodies of ``POST /v1/rerank``, shaped like text-embeddings-inference's ``/rerank`` (plus ``task``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from service.api.schemas import StrictBody
from service.store import validate_task
from service.store.base import TASK_NAME_RE


class RerankRequest(StrictBody):
    task: str = Field(description=f"A pair-scoring (cross-encoder) task, matching {TASK_NAME_RE.pattern}.")
    query: str
    texts: list[str] = Field(min_length=1, description="Texts to rank against the query.")
    raw_scores: bool = Field(default=False, description="The logit instead of its sigmoid.")
    return_text: bool = Field(default=False, description="Echo each text in its result.")

    @field_validator("task")
    @classmethod
    def _valid_task(cls, task: str) -> str:
        return validate_task(task)


class Rank(BaseModel):
    index: int = Field(description="Position of the text in the request.")
    score: float = Field(description="sigmoid(logit): the relevance in (0, 1); the logit with raw_scores.")
    text: str | None = Field(default=None, description="The text (with return_text).")
