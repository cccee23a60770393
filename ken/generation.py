"""Token-by-token generation with a causal-LM task model: one sequence's KV cache and the sampling rule.

A :class:`DecodeState` is one sequence being generated. Each :meth:`DecodeState.step` runs the
model once (the whole prompt the first time, then the last token against the cached keys and
values) and returns the next-token logits. The cache it keeps was computed under whatever weights
were in the model when each step ran, so a caller that swaps tasks between steps must step a
sequence only while its own task is applied (the service's backbone owner does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn from the logits: greedy at temperature 0, else nucleus sampling."""

    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """The next token id from one position's logits ``[vocab]``."""
    if logits.dim() != 1:
        raise ValueError(f"expected the logits of one position, shape [vocab], got {tuple(logits.shape)}")
    logits = logits.float()
    if params.temperature == 0:
        return int(logits.argmax())
    probabilities = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probabilities.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the most likely token always stays)
        before = sorted_probs.cumsum(0) - sorted_probs
        sorted_probs = torch.where(before < params.top_p, sorted_probs, torch.zeros_like(sorted_probs))
        probabilities = torch.zeros_like(probabilities).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probabilities, 1, generator=generator))


@dataclass(eq=False)
class DecodeState:
    """One sequence: the tokens so far and the model's cache over all but the newest of them."""

    tokens: list[int]
    prompt_length: int = field(init=False)
    _cache: Any = field(default=None, init=False, repr=False)
    _cached: int = field(default=0, init=False)  # tokens the cache covers

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ValueError("a sequence needs at least one prompt token")
        self.prompt_length = len(self.tokens)

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_length :]

    def append(self, token: int) -> None:
        self.tokens.append(token)

    def step(self, model: PreTrainedModel) -> torch.Tensor:
        """Run the tokens not yet in the cache through ``model``; the float32 logits for the next token."""
        pending = self.tokens[self._cached :]
        device = next(model.parameters()).device
        input_ids = torch.tensor([pending], dtype=torch.long, device=device)
        attention_mask = torch.ones(1, len(self.tokens), dtype=torch.long, device=device)
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=self._cache, use_cache=True)
        self._cache = outputs.past_key_values
        self._cached = len(self.tokens)
        return outputs.logits[0, -1].float().cpu()

    def release(self) -> None:
        """Drop the cache (device memory) once the sequence is finished."""
        self._cache = None
