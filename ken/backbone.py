"""Loading a backbone (the pretrained checkpoint) and fingerprinting its weights."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoModel, PreTrainedModel

from ken.errors import KenError

FINGERPRINT_PREFIX = "sha256:"


def load_backbone_model(path: str | os.PathLike[str]) -> PreTrainedModel:
    """The backbone as the service holds it: ``AutoModel`` of a local folder, in the checkpoint's dtype.

    Never downloads: ``path`` must be a local Hugging Face model folder.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise KenError(f"{folder} is not a Hugging Face model folder (no config.json there)")
    model = AutoModel.from_pretrained(folder, dtype="auto", local_files_only=True)
    return model.eval()


def floating_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The floating-point tensors of a state dict, the first name of each shared storage only."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out[name] = tensor
    return out


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of the floating tensors' names, dtypes, shapes and content.

    Integer buffers (e.g. ``position_ids``) are not weights and are left out, so that the same
    checkpoint fingerprints the same under transformers versions that persist them differently.
    """
    digest = hashlib.sha256()
    tensors = floating_state(state)
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}\n".encode())
        flat = tensor.detach().reshape(-1).contiguous().to("cpu")
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return FINGERPRINT_PREFIX + digest.hexdigest()
