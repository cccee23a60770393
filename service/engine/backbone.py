"""Loading the resident backbone: the model, its tokenizer, its weights in one flat buffer."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

import ken

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResidentBackbone:
    """The one backbone of the process. Its weights belong to the engine's owner thread once serving starts."""

    name: str
    model: PreTrainedModel
    flat: ken.FlatParameters
    swapper: ken.Swapper  # the only writer of the weights; driven by the owner thread alone
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str  # of the checkpoint as stored (what subnetworks carry), not of the cast weights
    max_length: int  # tokens per input after truncation
    parameter_count: int
    pristine_checksum: str  # checksum() right after loading: the reference for integrity checks

    @property
    def device(self) -> torch.device:
        return self.flat.device

    @property
    def dtype(self) -> torch.dtype:
        return self.flat.dtype

    def checksum(self) -> str:
        """SHA-256 of the weights as they are now. Equals ``pristine_checksum`` whenever no delta is applied."""
        return weights_checksum(self.flat)


def weights_checksum(flat: ken.FlatParameters) -> str:
    """SHA-256 of the flat weight buffer's bytes."""
    raw = flat.buffer.detach().view(torch.uint8).cpu().numpy()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def load_backbone(
    path: Path,
    *,
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    max_sequence_length: int | None = None,
    keep_originals: bool = False,
) -> ResidentBackbone:
    """Load the model folder at ``path`` and make it resident on ``device`` in ``dtype``.

    The fingerprint is taken before casting: subnetworks carry the fingerprint of the checkpoint as
    stored, whatever dtype the service computes in.
    """
    model = ken.load_backbone_model(path)
    fingerprint = ken.fingerprint(model.state_dict())
    model = model.to(device=device, dtype=dtype).eval()
    flat = ken.FlatParameters(model)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tokenizer.is_fast:
        raise ken.KenError(f"{path}: the service needs a fast (Rust) tokenizer, found {type(tokenizer).__name__}")
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    model_limit = min(limit for limit in limits if isinstance(limit, int) and limit > 0)
    max_length = min(model_limit, max_sequence_length) if max_sequence_length else model_limit
    parameter_count = sum(p.numel() for p in model.parameters())
    backbone = ResidentBackbone(
        name=name,
        model=model,
        flat=flat,
        swapper=ken.Swapper(flat, keep_originals=keep_originals),
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        max_length=max_length,
        parameter_count=parameter_count,
        pristine_checksum=weights_checksum(flat),
    )
    logger.info(
        "backbone loaded",
        extra={"backbone": backbone.name, "device": str(device), "dtype": str(dtype), "fingerprint": fingerprint},
    )
    return backbone
