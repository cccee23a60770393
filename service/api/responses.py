"""What the inference routes share in their OpenAPI description and their answers."""

from __future__ import annotations

from typing import Any

#: Header carrying the task version on routes whose body has no room for it (TEI / OpenAI shapes).
VERSION_HEADER = "X-Ken-Task-Version"


def inference_errors(kind: str) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of an inference route serving ``kind`` tasks."""
    return {
        400: {"description": f"Not valid JSON, or the task is not {kind} task (the message names its route)."},
        401: {"description": "No bearer token."},
        403: {"description": "Wrong bearer token."},
        404: {"description": "No such task."},
        409: {"description": "The stored subnetwork belongs to another backbone."},
        422: {"description": "Invalid request or a limit exceeded."},
        503: {"description": "The store or the engine is unavailable."},
    }
