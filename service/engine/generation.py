"""Text generation for one request: tokenise the prompt, step the sequence through the owner, sample, detokenise.

Every decode step is its own item in the task queues (:class:`~service.engine.scheduler.DecodeItem`),
so the scheduler interleaves other tasks' work between the steps of a long generation, and steps of
several sequences of one task run back to back under one apply. The sequence's KV cache lives in
its :class:`ken.generation.DecodeState`; only the owner thread steps it, always with the sequence's
own task version applied (the request holds that :class:`StagedTask` from start to end).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from ken.generation import DecodeState, SamplingParams, next_token
from service.engine.staged import StagedTask
from service.errors import InvalidInput

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class TextDelta:
    """New text of a completion; ``finish_reason`` is set on the last one."""

    text: str
    finish_reason: FinishReason | None = None


@dataclass
class CompletionUsage:
    prompt_tokens: int
    completion_tokens: int = 0


Step = Callable[[StagedTask, DecodeState], Awaitable[torch.Tensor]]


class StopMatcher:
    """Cuts the text at the first stop string, holding back a tail that may still become one."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1

    def find(self, text: str) -> int | None:
        """Where the first stop string starts in ``text``, or None."""
        hits = [index for s in self._stop if (index := text.find(s)) >= 0]
        return min(hits) if hits else None

    def safe_length(self, text: str) -> int:
        """How much of ``text`` can be sent now: all but a tail shorter than the longest stop string."""
        return max(0, len(text) - self._hold)


def prompt_tokens(tokenizer: PreTrainedTokenizerBase, prompt: str, max_tokens: int, context: int) -> list[int]:
    """The prompt's token ids, checked against the model's context length (422 when it does not fit)."""
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if not ids:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise InvalidInput("the prompt is empty and the model has no beginning-of-text token: send some text")
        ids = [bos]
    if len(ids) + max_tokens > context:
        raise InvalidInput(
            f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}: together at most {context} "
            "(the model's context length); shorten the prompt or lower max_tokens"
        )
    return ids


async def generate(
    staged: StagedTask,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    request: CompletionRequest,
    step: Step,
    usage: CompletionUsage,
) -> AsyncIterator[TextDelta]:
    """Yield the completion's text as it grows; the last delta carries the finish reason."""
    state = DecodeState(list(prompt_ids))
    generator = torch.Generator().manual_seed(request.seed) if request.seed is not None else None
    stops = StopMatcher(request.stop)
    eos = tokenizer.eos_token_id
    sent = 0  # characters of the completion already yielded
    text = ""
    try:
        for _ in range(request.max_tokens):
            logits = await step(staged, state)
            token = next_token(logits, request.sampling, generator)
            if token == eos:
                yield TextDelta(text[sent:], "stop")
                return
            state.append(token)
            usage.completion_tokens += 1
            text = tokenizer.decode(state.generated, skip_special_tokens=True)
            cut = stops.find(text)
            if cut is not None:
                yield TextDelta(text[sent:cut], "stop")
                return
            if text.endswith("\ufffd"):
                continue  # a multi-byte character is not complete yet
            ready = stops.safe_length(text)
            if ready > sent:
                yield TextDelta(text[sent:ready])
                sent = ready
        yield TextDelta(text[sent:], "length")
    finally:
        state.release()
