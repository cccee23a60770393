"""Token-classification outputs as entities: per-token labels, or word pieces grouped into spans.

The grouping follows transformers' ``TokenClassificationPipeline`` with
``aggregation_strategy="simple"``: every token takes its best label; adjacent tokens whose labels
share a tag (``B-PER``, ``I-PER``: tag ``PER``; labels without a ``B-``/``I-`` prefix are their own
tag) join one group unless the later one starts a new entity (``B-``). A group's score is the mean
of its tokens' scores, its characters run from the first token's start to the last token's end,
and its word is its tokens joined back into text. Labels in ``ignore_labels`` (``O``) are dropped
after grouping. Special tokens never carry a label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLabel:
    """One token's best label (``aggregation_strategy="none"``)."""

    entity: str
    score: float
    index: int  # position of the token in the model input (special tokens included)
    word: str  # the token as the tokenizer spells it (the text itself for an unknown token)
    start: int
    end: int


@dataclass(frozen=True)
class EntityGroup:
    """Adjacent tokens of one entity (``aggregation_strategy="simple"``)."""

    entity_group: str
    score: float
    word: str
    start: int
    end: int


def token_labels(
    text: str,
    logits: torch.Tensor,
    labels: Sequence[str],
    tokens: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    special: Sequence[bool],
    *,
    unknown_token: str | None = None,
) -> list[TokenLabel]:
    """The best label of every non-special token of one input (``logits``: ``[tokens, labels]``)."""
    scores = torch.softmax(logits.float(), dim=-1)
    best_scores, best = scores.max(dim=-1)
    out = []
    for index, token in enumerate(tokens):
        if special[index]:
            continue
        start, end = offsets[index]
        word = text[start:end] if unknown_token is not None and token == unknown_token else token
        label = labels[int(best[index])]
        out.append(TokenLabel(label, float(best_scores[index]), index, word, start, end))
    return out


def _tag(label: str) -> tuple[str, str]:
    """``("B" | "I", tag)``; a label without a ``B-``/``I-`` prefix continues (``I``) its own tag."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def group_simple(tokens: Sequence[TokenLabel], tokens_to_text: Callable[[list[str]], str]) -> list[EntityGroup]:
    """Group adjacent tokens of the same entity, as ``aggregation_strategy="simple"`` does."""
    groups: list[list[TokenLabel]] = []
    for token in tokens:
        if groups:
            bi, tag = _tag(token.entity)
            _, last_tag = _tag(groups[-1][-1].entity)
            if tag == last_tag and bi != "B":
                groups[-1].append(token)
                continue
        groups.append([token])
    return [
        EntityGroup(
            entity_group=members[0].entity.split("-", 1)[-1],
            score=sum(member.score for member in members) / len(members),
            word=tokens_to_text([member.word for member in members]),
            start=members[0].start,
            end=members[-1].end,
        )
        for members in groups
    ]


def without_ignored(entities: Sequence[TokenLabel | EntityGroup], ignore: Sequence[str]) -> list:
    """Drop entities whose label (or group label) is in ``ignore``."""
    return [e for e in entities if (e.entity if isinstance(e, TokenLabel) else e.entity_group) not in ignore]
