"""Limits on inference inputs, shared by the v1 and v2 routes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from service.errors import InvalidInput
from service.settings import Settings

#: After JSON decoding a valid surrogate pair is one character, so any surrogate code point left is lone.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(field: str, text: str) -> None:
    """Raise InvalidInput (422) for a lone UTF-16 surrogate, which no tokenizer (nor UTF-8) can encode."""
    found = _SURROGATE.search(text)
    if found is not None:
        raise InvalidInput(
            f"{field} holds a lone UTF-16 surrogate (\\u{ord(found.group()):04x}) at character {found.start()}: "
            "send valid Unicode (a \\u escape of half a surrogate pair is not a character)"
        )


def flatten_nested(data: list[Any], depth: int) -> list[Any]:
    """The elements of ``data`` in row-major order; InvalidInput if lists nest deeper than ``depth`` levels.

    Callers pass a small ``depth`` (a tensor's rank), which also bounds the recursion.
    """
    flat: list[Any] = []
    for element in data:
        if not isinstance(element, list):
            flat.append(element)
        elif depth <= 1:
            raise InvalidInput("the data nests lists deeper than its shape has dimensions")
        else:
            flat.extend(flatten_nested(element, depth - 1))
    return flat


def check_inputs(texts: Sequence[str], settings: Settings) -> None:
    """Raise InvalidInput (422) for an empty request, too many inputs or an input too long."""
    if not texts:
        raise InvalidInput("send at least one input")
    if len(texts) > settings.max_inputs_per_request:
        raise InvalidInput(f"{len(texts)} inputs; at most {settings.max_inputs_per_request} per request")
    for index, text in enumerate(texts):
        check_unicode(f"input {index}", text)
        if len(text) > settings.max_input_chars:
            raise InvalidInput(
                f"input {index} has {len(text)} characters; at most {settings.max_input_chars} per input"
            )
