"""Request and response bodies of the v1 API."""

from __future__ import annotations

import difflib
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from service.store import CorruptSubnetwork, StoredManifest, validate_task
from service.store.base import TASK_NAME_RE


class StrictBody(BaseModel):
    """A request body that refuses fields it does not know, naming them.

    Otherwise a misspelt optional field (``topk``) would be dropped silently and its default used.
    """

    model_config = ConfigDict(extra="forbid")  # also tells the OpenAPI schema: additionalProperties false

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(key) for key in data if key not in cls.model_fields]
            if unknown:
                raise PydanticCustomError("unknown_field", unknown_fields_message(unknown, list(cls.model_fields)))
        return data


def unknown_fields_message(unknown: list[str], known: list[str]) -> str:
    """``unknown field 'topk' (did you mean 'top_k'?); the fields are: task, inputs, top_k, return_logits``."""
    named = []
    for field in unknown:
        close = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
        named.append(f"{field!r} (did you mean {close[0]!r}?)" if close else repr(field))
    noun = "field" if len(unknown) == 1 else "fields"
    return f"unknown {noun} {', '.join(named)}; the fields are: {', '.join(known)}"


class SubnetworkManifest(BaseModel):
    """A stored subnetwork, as its manifest describes it."""

    task: str
    version: int
    k: int
    method: str
    task_type: str
    kept_entries: int
    labels: list[str]
    pooling: dict[str, Any] | None = Field(default=None, description="Embedding tasks: how token states are pooled.")
    bytes: int
    sha256: str
    created: datetime

    @classmethod
    def from_stored(cls, manifest: StoredManifest) -> SubnetworkManifest:
        """CorruptSubnetwork if the stored info lacks a field or has a wrong type (written by something else)."""
        info = manifest.info
        try:
            return cls(
                task=manifest.task,
                version=manifest.version,
                k=info["k"],
                method=info["method"],
                task_type=info["task_type"],
                kept_entries=info["kept_entries"],
                labels=info["labels"],
                pooling=info.get("pooling"),
                bytes=manifest.size,
                sha256=manifest.sha256,
                created=manifest.created,
            )
        except KeyError as exc:
            problem = f"lacks {exc.args[0]!r}"
        except ValidationError as exc:
            problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        where = f"task {manifest.task!r} v{manifest.version}"
        raise CorruptSubnetwork(f"{where}: the manifest's info {problem}; upload the task again to repair it")


class SubnetworkList(BaseModel):
    subnetworks: list[SubnetworkManifest]


class PredictRequest(StrictBody):
    task: str = Field(description=f"Task name, matching {TASK_NAME_RE.pattern}.")
    inputs: list[str] = Field(min_length=1, description="Texts to classify.")
    top_k: int = Field(default=1, ge=1, description="Labels per input, best first (capped at the task's labels).")
    return_logits: bool = False

    @field_validator("task")
    @classmethod
    def _valid_task(cls, task: str) -> str:
        return validate_task(task)


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="Softmax probability.")


class InputPrediction(BaseModel):
    labels: list[LabelScore] = Field(description="The top_k labels, best first.")
    logits: list[float] | None = Field(default=None, description="Raw logits per label (when return_logits).")
    truncated: bool = Field(description="Whether the input was cut to the model's maximum length.")


class PredictResponse(BaseModel):
    task: str
    version: int
    predictions: list[InputPrediction]


class IntegrityResponse(BaseModel):
    checksum: str = Field(description="SHA-256 of the backbone weights now (after reverting any delta).")
    pristine_checksum: str = Field(description="SHA-256 of the backbone weights right after loading.")
    intact: bool


class BackboneResponse(BaseModel):
    name: str
    fingerprint: str = Field(description="Fingerprint of the checkpoint as stored; subnetworks must carry it.")
    parameters: int
    device: str
    dtype: str
    max_length: int = Field(description="Tokens per input after truncation.")


class HealthResponse(BaseModel):
    status: str


class ReadinessResponse(BaseModel):
    ready: bool
    backbone: bool
    engine: bool
    store: bool
    detail: str | None = None
