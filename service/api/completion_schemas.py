"""Bodies of ``POST /v1/completions``: the subset of OpenAI's completions API that ken-serve implements."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.store import validate_task
from service.store.base import TASK_NAME_RE


class CompletionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description=f"The task (a text-generation subnetwork), matching {TASK_NAME_RE.pattern}.")
    prompt: str = Field(description="The text to continue.")
    max_tokens: int = Field(default=16, ge=1, description="Tokens to generate at most (capped by the server).")
    temperature: float = Field(default=1.0, ge=0, le=2, description="0 picks the most likely token (greedy).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling: the smallest set of this mass.")
    stop: str | list[str] | None = Field(default=None, description="Up to 4 strings that end the completion.")
    stream: bool = Field(default=False, description="Send the text as server-sent events as it is generated.")
    seed: int | None = Field(default=None, description="Seed for sampling: the same seed gives the same text.")

    @field_validator("model")
    @classmethod
    def _valid_task(cls, task: str) -> str:
        return validate_task(task)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(stop)}")
        return stop

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = Field(
        description="stop: a stop string or the end-of-text token; length: max_tokens reached; null while streaming."
    )
    logprobs: None = None


class CompletionUsageBody(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    version: int = Field(description="The task's subnetwork version that generated the text.")
    choices: list[CompletionChoice]
    usage: CompletionUsageBody | None = Field(default=None, description="Absent in streamed chunks.")
