"""Limits on inference inputs, shared by the v1 and v2 routes."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import InvalidInput
from service.settings import Settings


def check_inputs(texts: Sequence[str], settings: Settings) -> None:
    """Raise InvalidInput (422) for an empty request, too many inputs or an input too long."""
    if not texts:
        raise InvalidInput("send at least one input")
    if len(texts) > settings.max_inputs_per_request:
        raise InvalidInput(f"{len(texts)} inputs; at most {settings.max_inputs_per_request} per request")
    for index, text in enumerate(texts):
        if len(text) > settings.max_input_chars:
            raise InvalidInput(
                f"input {index} has {len(text)} characters; at most {settings.max_input_chars} per input"
            )
