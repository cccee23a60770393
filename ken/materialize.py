"""Writing a subnetwork out as an ordinary Hugging Face checkpoint of the task model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ken.backbone import fingerprint
from ken.checkpoint import ModelSource, load_backbone_state
from ken.errors import FingerprintMismatch, KenError
from ken.pooling import write_sentence_transformers_files
from ken.subnetwork import Subnetwork
from ken.taskmodel import FEATURE_EXTRACTION, task_pooling

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def materialized_state(base: ModelSource, subnetwork: Subnetwork) -> dict[str, torch.Tensor]:
    """The task model's full state dict: backbone with the kept entries written in, plus the head."""
    state = load_backbone_state(base)
    actual = fingerprint(state)
    if actual != subnetwork.info.backbone_fingerprint:
        raise FingerprintMismatch(
            f"subnetwork was extracted against backbone {subnetwork.info.backbone_fingerprint}, not {actual}"
        )
    out: dict[str, torch.Tensor] = {}
    prefix = subnetwork.info.base_prefix
    for name, tensor in state.items():
        delta = subnetwork.deltas.get(name)
        out[prefix + name] = delta.to_dense_update(tensor) if delta is not None else tensor.detach().clone()
    for name, tensor in subnetwork.head.items():
        out[name] = tensor.detach().clone()
    return out


def materialize(base: str | os.PathLike[str], subnetwork: Subnetwork, output: str | os.PathLike[str]) -> Path:
    """Write the subnetwork model to ``output`` (config, safetensors weights, tokenizer files).

    An embedding task's folder is also a sentence-transformers model with the task's pooling, so
    ``SentenceTransformer(output)`` embeds as the service does.
    """
    base_dir, out_dir = Path(base), Path(output)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise KenError(f"{out_dir} exists and is not empty; choose a new output folder")
    if not subnetwork.info.config:
        raise KenError("the subnetwork carries no model config, so it cannot be materialised")
    state = materialized_state(base_dir, subnetwork)
    out_dir.mkdir(parents=True, exist_ok=True)
    contiguous = {name: t.contiguous() for name, t in state.items()}
    save_file(contiguous, out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(subnetwork.info.config, indent=2, sort_keys=True))
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
    if subnetwork.info.task_type == FEATURE_EXTRACTION:
        dimension = int(subnetwork.info.config.get("hidden_size", 0))
        write_sentence_transformers_files(out_dir, task_pooling(subnetwork.info), dimension)
    return out_dir
