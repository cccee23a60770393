"""The schema of a subnetwork file's ``ken`` metadata, checked before any of it is used.

A file comes from whoever made it: every field is validated strictly (JSON types, no coercion of
``"32"`` into ``32``, no ``Infinity`` for a count), and a failure names the field, e.g.
``deltas.<tensor>.selected``. ``config`` is checked only for being an object here; which of its
fields are used, and how, is :mod:`ken.taskmodel`'s business.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from ken.errors import SubnetworkFormatError

#: Deepest nesting of JSON arrays/objects accepted in the metadata (a real file's is 4).
MAX_DEPTH = 32
#: Longest name, pattern or label accepted (a real one is well under 200 characters).
MAX_TEXT = 4096

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Count = Annotated[int, Field(ge=0, lt=2**63)]
Dimension = Annotated[int, Field(gt=0, lt=2**63)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class DeltaEntry(_Strict):
    shape: Annotated[list[Dimension], Field(min_length=1, max_length=8)]
    # Optional, but never null: a default that is not validated, so an explicit null fails.
    kept: Count = Field(default=None, validate_default=False)
    selected: Count = Field(default=None, validate_default=False)


class KenMetadata(_Strict):
    format_version: int
    backbone_fingerprint: Text
    method: Text
    k: Annotated[int, Field(lt=2**31)]
    base_prefix: Text
    task_type: Text
    id2label: dict[Text, Text]
    config: dict[str, Any]
    include: Text | None = None
    exclude: Text | None = None
    pooling: dict[str, Any] | None = None  # embedding tasks; its fields are checked by ken.pooling.Pooling
    deltas: dict[Text, DeltaEntry]
    head: list[Text]

    @field_validator("id2label")
    @classmethod
    def _class_indices(cls, id2label: dict[str, str]) -> dict[str, str]:
        if sorted(id2label, key=lambda key: (len(key), key)) != [str(i) for i in range(len(id2label))]:
            raise ValueError("keys must be the class indices 0..n-1 as strings, without gaps")
        return id2label

    @field_validator("head")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("names a head tensor twice")
        return names


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_metadata(meta: Any) -> KenMetadata:
    """Validate parsed ``ken`` metadata; SubnetworkFormatError naming the first bad field."""
    if not isinstance(meta, dict):
        raise SubnetworkFormatError(f"subnetwork metadata must be a JSON object, got {type(meta).__name__}")
    if json_depth(meta) > MAX_DEPTH:
        raise SubnetworkFormatError(f"subnetwork metadata is nested deeper than {MAX_DEPTH} levels")
    try:
        return KenMetadata.model_validate(meta)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise SubnetworkFormatError(f"subnetwork metadata field {field!r}: {first['msg']}{more}") from None
