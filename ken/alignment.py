"""Matching a fine-tuned task model's tensor names to the backbone's.

A task model wraps the backbone under a prefix (``bert.encoder.layer.0...`` against the base
checkpoint's ``encoder.layer.0...``; GPT-2: ``transformer.h.0...``). The prefix is found from the
names themselves: the one under which most fine-tuned tensors land on a backbone tensor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ken.errors import IncompatibleModels


@dataclass(frozen=True)
class Alignment:
    prefix: str
    shared: dict[str, str]  # fine-tuned name -> backbone name (same shape, both floating)
    head: list[str]  # fine-tuned floating tensors the backbone lacks or shapes differently


def find_prefix(backbone_names: set[str], finetuned_names: list[str]) -> str:
    votes: Counter[str] = Counter()
    for name in finetuned_names:
        parts = name.split(".")
        for cut in range(len(parts)):
            if ".".join(parts[cut:]) in backbone_names:
                votes[".".join(parts[:cut]) + ("." if cut else "")] += 1
                break
    if not votes:
        return ""
    return max(votes.items(), key=lambda item: (item[1], -len(item[0])))[0]


def align(backbone: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor]) -> Alignment:
    """Pair each floating fine-tuned tensor with its backbone tensor, or call it head."""
    finetuned_floating = [name for name, t in finetuned.items() if t.is_floating_point()]
    prefix = find_prefix(set(backbone), finetuned_floating)
    shared: dict[str, str] = {}
    head: list[str] = []
    for name in finetuned_floating:
        base_name = name[len(prefix) :] if name.startswith(prefix) else None
        base = backbone.get(base_name) if base_name is not None else None
        if base is not None and base.is_floating_point() and base.shape == finetuned[name].shape:
            shared[name] = base_name  # type: ignore[assignment]
        else:
            head.append(name)
    backbone_floating = sum(1 for t in backbone.values() if t.is_floating_point())
    if len(shared) * 2 < backbone_floating:
        raise IncompatibleModels(
            f"the fine-tuned model shares only {len(shared)} of the backbone's {backbone_floating} "
            "tensors (same name, same shape): is it a fine-tune of this pretrained model?"
        )
    return Alignment(prefix=prefix, shared=shared, head=head)
