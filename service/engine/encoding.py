"""Tokenisation, done in the request path (worker threads), never by the backbone owner."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

Features = dict[str, list[int]]


@dataclass(frozen=True)
class EncodedTexts:
    """One request's texts (or text pairs) as token ids (unpadded), and whether each was cut to the length limit.

    With ``offsets`` (token classification): per input and token, its ``(start, end)`` characters
    in the text and whether it is a special token ([CLS], [SEP]), which carries no label.
    """

    features: list[Features]
    truncated: list[bool]
    offsets: list[list[tuple[int, int]]] | None = None
    special: list[list[bool]] | None = None

    def __len__(self) -> int:
        return len(self.features)


class TextEncoder:
    """Turns texts into model inputs, truncated to ``max_length`` tokens (a fast tokenizer is required)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(
        self,
        texts: Sequence[str],
        *,
        pairs: Sequence[str] | None = None,
        offsets: bool = False,
        max_length: int | None = None,
    ) -> EncodedTexts:
        """Tokenise ``texts`` (with ``pairs`` as their second segments), truncated to ``max_length``
        tokens (at most the encoder's limit; pairs lose tokens from the longer segment first)."""
        limit = min(max_length, self.max_length) if max_length else self.max_length
        batch = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            truncation=True,
            max_length=limit,
            return_offsets_mapping=offsets,
            return_special_tokens_mask=offsets,
        )
        extra = ("offset_mapping", "special_tokens_mask")
        names = [name for name in batch if name not in extra]
        features = [{name: batch[name][i] for name in names} for i in range(len(texts))]
        # With truncation on, a fast tokenizer keeps what it cut off in `overflowing`.
        truncated = [bool(encoding.overflowing) for encoding in batch.encodings]
        if not offsets:
            return EncodedTexts(features, truncated)
        spans = [[(int(start), int(end)) for start, end in row] for row in batch["offset_mapping"]]
        special = [[bool(flag) for flag in row] for row in batch["special_tokens_mask"]]
        return EncodedTexts(features, truncated, spans, special)

    def collate(self, features: Sequence[Features]) -> dict[str, torch.Tensor]:
        """Right-pad a batch to its longest input: ``input_ids`` with the pad token, everything else with 0."""
        longest = max(len(f["input_ids"]) for f in features)
        out: dict[str, torch.Tensor] = {}
        for name in features[0]:
            pad = self.pad_token_id if name == "input_ids" else 0
            rows = [f[name] + [pad] * (longest - len(f[name])) for f in features]
            out[name] = torch.tensor(rows, dtype=torch.long)
        return out
