"""``POST /v1/completions``: continue a prompt with a text-generation task (OpenAI-compatible subset)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ken.generation import SamplingParams
from service.api.completion_schemas import (
    CompletionBody,
    CompletionChoice,
    CompletionResponse,
    CompletionUsageBody,
)
from service.api.inputs import check_inputs
from service.deps import ApiAccess, EngineDep, SettingsDep
from service.engine import Completion, CompletionRequest
from service.errors import InvalidInput

router = APIRouter(prefix="/v1", tags=["inference"], dependencies=[ApiAccess])
logger = logging.getLogger(__name__)


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses={
        200: {"description": "The completion; with stream=true, server-sent events of CompletionResponse chunks."},
        400: {"description": "The body is not valid JSON, or the task is not a text-generation task."},
        401: {"description": "No bearer token."},
        403: {"description": "Wrong bearer token."},
        404: {"description": "No such task."},
        409: {"description": "The stored subnetwork belongs to another backbone."},
        415: {"description": "The body is not sent as application/json."},
        422: {"description": "Invalid body or a limit exceeded (max_tokens, prompt length, context length)."},
        503: {"description": "The store or the engine is unavailable."},
    },
)
async def complete(
    body: CompletionBody, engine: EngineDep, settings: SettingsDep
) -> CompletionResponse | StreamingResponse:
    """Generate up to ``max_tokens`` tokens after ``prompt``, greedy at temperature 0, else nucleus sampling."""
    check_inputs([body.prompt], settings)
    if body.max_tokens > settings.max_completion_tokens:
        raise InvalidInput(f"max_tokens is {body.max_tokens}; at most {settings.max_completion_tokens} per request")
    request = CompletionRequest(
        prompt=body.prompt,
        max_tokens=body.max_tokens,
        sampling=SamplingParams(temperature=body.temperature, top_p=body.top_p),
        stop=body.stop_strings(),
        seed=body.seed,
    )
    completion = await engine.start_completion(body.model, request)
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        events = _events(completion, completion_id, created)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    text, finish_reason = [], None
    async for delta in completion.deltas:
        text.append(delta.text)
        finish_reason = delta.finish_reason
    return CompletionResponse(
        id=completion_id,
        created=created,
        model=completion.task,
        version=completion.version,
        choices=[CompletionChoice(text="".join(text), finish_reason=finish_reason)],
        usage=_usage(completion),
    )


def _usage(completion: Completion) -> CompletionUsageBody:
    usage = completion.usage
    return CompletionUsageBody(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )


async def _events(completion: Completion, completion_id: str, created: int) -> AsyncIterator[str]:
    """Server-sent events: one chunk per text delta, usage on the last, then ``[DONE]``; an error as an event."""
    try:
        async for delta in completion.deltas:
            chunk = CompletionResponse(
                id=completion_id,
                created=created,
                model=completion.task,
                version=completion.version,
                choices=[CompletionChoice(text=delta.text, finish_reason=delta.finish_reason)],
                usage=_usage(completion) if delta.finish_reason else None,
            )
            yield f"data: {chunk.model_dump_json()}\n\n"
    except Exception as exc:  # the status line is sent already: report the failure in the stream
        logger.exception("completion failed mid-stream", extra={"task": completion.task})
        yield f"data: {json.dumps({'error': {'message': f'generation failed: {exc}'}})}\n\n"
        return
    yield "data: [DONE]\n\n"
