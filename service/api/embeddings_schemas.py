"""Bodies of the embedding routes: `/v1/embed` (shaped like TEI's `/embed`) and the OpenAI-style `/v1/embeddings`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from service.api.schemas import StrictBody
from service.store import validate_task
from service.store.base import TASK_NAME_RE


class EmbedRequest(StrictBody):
    task: str = Field(description=f"An embedding (feature-extraction) task, matching {TASK_NAME_RE.pattern}.")
    inputs: str | list[str] = Field(description="A text or a list of texts.")
    normalize: bool | None = Field(
        default=None, description="L2-normalise the vectors; default: as the task's pooling says."
    )

    @field_validator("task")
    @classmethod
    def _valid_task(cls, task: str) -> str:
        return validate_task(task)


class OpenAIEmbeddingsRequest(StrictBody):
    model: str = Field(description="The embedding task's name.")
    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not accepted).")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: the little-endian float32 bytes of each vector."
    )
    dimensions: int | None = Field(default=None, ge=1, description="Must equal the task's dimension when given.")
    user: str | None = Field(default=None, description="Accepted and ignored.")

    @field_validator("model")
    @classmethod
    def _valid_task(cls, task: str) -> str:
        return validate_task(task)


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage
