"""Reading model weights from Hugging Face folders, in-memory models or plain state dicts."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ken.backbone import load_backbone_model
from ken.errors import KenError

ModelSource = str | os.PathLike | nn.Module | Mapping[str, torch.Tensor]


def _read_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return state
    raise KenError(
        f"{folder} holds no model.safetensors (or sharded index); convert the checkpoint to "
        "safetensors first (ken never unpickles weights)"
    )


def _check_folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise KenError(f"{folder} does not exist")
    if not (folder / "config.json").is_file():
        raise KenError(f"{folder} is not a Hugging Face model folder (no config.json there)")
    return folder


def load_backbone_state(source: ModelSource) -> dict[str, torch.Tensor]:
    """The backbone's tensors, named as the backbone model (``AutoModel``) names them."""
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, Mapping):
        return dict(source)
    return dict(load_backbone_model(_check_folder(source)).state_dict())


def load_finetuned(source: ModelSource) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The fine-tuned tensors (names as the task model stores them) and its config as a dict."""
    if isinstance(source, nn.Module):
        config = source.config.to_dict() if hasattr(source, "config") else {}
        return dict(source.state_dict()), config
    if isinstance(source, Mapping):
        return dict(source), {}
    folder = _check_folder(source)
    config = json.loads((folder / "config.json").read_text())
    return _read_folder_weights(folder), config
