"""Bodies of ``POST /v1/token-classification`` (entities as transformers' token-classification pipeline names them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from service.api.schemas import StrictBody
from service.store import validate_task
from service.store.base import TASK_NAME_RE


class TokenClassificationRequest(StrictBody):
    task: str = Field(description=f"A token-classification task, matching {TASK_NAME_RE.pattern}.")
    inputs: list[str] = Field(min_length=1, description="Texts to tag.")
    aggregation_strategy: Literal["simple", "none"] = Field(
        default="simple",
        description="simple: adjacent word pieces of one entity grouped into a span (transformers' "
        "aggregation_strategy='simple'); none: every token with its best label.",
    )
    ignore_labels: list[str] = Field(default=["O"], description="Labels left out of the answer.")

    @field_validator("task")
    @classmethod
    def _valid_task(cls, task: str) -> str:
        return validate_task(task)


class Entity(BaseModel):
    """A token (``entity``, ``index``) or a group of tokens (``entity_group``), with its characters in the input."""

    entity: str | None = Field(default=None, description="The token's label (aggregation_strategy=none).")
    entity_group: str | None = Field(default=None, description="The group's tag (aggregation_strategy=simple).")
    score: float = Field(description="Softmax probability of the label; a group's mean over its tokens.")
    index: int | None = Field(default=None, description="Token position in the model input (none only).")
    word: str = Field(description="The token, or the group's tokens joined back into text.")
    start: int = Field(description="First character in the input.")
    end: int = Field(description="One past the last character in the input.")


class TokenPrediction(BaseModel):
    entities: list[Entity]
    truncated: bool = Field(description="Whether the input was cut to the model's maximum length.")


class TokenClassificationResponse(BaseModel):
    task: str
    version: int
    predictions: list[TokenPrediction]
