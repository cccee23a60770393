"""Sentence embeddings from token states, pooled as sentence-transformers pools them.

An embedding task (``feature-extraction``) has no head: its output is the backbone's last hidden
state, pooled over the real (unpadded) tokens and optionally L2-normalised. The pooling is part of
the subnetwork's metadata (``pooling``), read at extraction from the fine-tuned folder's
sentence-transformers files (``modules.json``, ``1_Pooling/config.json``), else the backbone's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ken.errors import KenError

MODES = ("mean", "cls", "max")
#: ``1_Pooling/config.json`` flag of each mode (sentence-transformers' names).
MODE_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}
POOLING_TYPE = "sentence_transformers.models.Pooling"
NORMALIZE_TYPE = "sentence_transformers.models.Normalize"
TRANSFORMER_TYPE = "sentence_transformers.models.Transformer"


@dataclass(frozen=True)
class Pooling:
    """How token states become one vector: ``mode`` over the attention mask, then L2 ``normalize``.

    ``max_seq_length``: the tokens sentence-transformers feeds the model (its ``max_seq_length``),
    so that a served embedding truncates where the sentence-transformers model does; None: the
    backbone's limit.
    """

    mode: str = "mean"
    normalize: bool = False
    max_seq_length: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise KenError(f"pooling mode {self.mode!r} is not supported; supported: {', '.join(MODES)}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise KenError(f"pooling max_seq_length must be >= 1, got {self.max_seq_length}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Any) -> Pooling:
        """Parse the metadata's ``pooling`` object (raises KenError naming what is wrong)."""
        if not isinstance(value, dict):
            raise KenError("the subnetwork's pooling must be an object")
        unknown = sorted(set(value) - {"mode", "normalize", "max_seq_length"})
        if unknown:
            raise KenError(f"unknown pooling field {unknown[0]!r}")
        mode, normalize = value.get("mode", "mean"), value.get("normalize", False)
        length = value.get("max_seq_length")
        if not isinstance(mode, str) or not isinstance(normalize, bool):
            raise KenError("pooling 'mode' must be a string and 'normalize' a boolean")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
            raise KenError("pooling 'max_seq_length' must be an integer or null")
        return cls(mode=mode, normalize=normalize, max_seq_length=length)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """``[batch, tokens, dim]`` states to ``[batch, dim]``, over the tokens where the mask is 1."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    # sentence-transformers: sum over real tokens / their count (clamped so an empty mask gives 0)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def embed(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pooled and (when the task says so) normalised embeddings."""
    vectors = pool(hidden, attention_mask, pooling.mode)
    return torch.nn.functional.normalize(vectors, p=2, dim=1) if pooling.normalize else vectors


def read_pooling(folder: str | Path) -> Pooling | None:
    """The pooling of a sentence-transformers model folder, or None when it has no ``modules.json``.

    Refuses pipelines this service cannot reproduce (e.g. a ``Dense`` projection after pooling).
    """
    folder = Path(folder)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    types = [module.get("type", "") for module in modules]
    supported = {TRANSFORMER_TYPE, POOLING_TYPE, NORMALIZE_TYPE}
    unsupported = [kind for kind in types if kind not in supported]
    if unsupported:
        raise KenError(f"{folder}: sentence-transformers module {unsupported[0]} is not supported (only pooling)")
    pooling_module = next((m for m in modules if m.get("type") == POOLING_TYPE), None)
    mode = "mean"
    if pooling_module is not None:
        config = json.loads((folder / pooling_module.get("path", "") / "config.json").read_text())
        modes = [name for name in MODES if config.get(MODE_FLAGS[name])]
        others = [key for key, on in config.items() if key.startswith("pooling_mode_") and on]
        if len(modes) != 1 or len(others) != 1:
            raise KenError(f"{folder}: pooling {', '.join(others) or 'none'} is not supported; use one of {MODES}")
        mode = modes[0]
    length = None
    bert_config = folder / "sentence_bert_config.json"
    if bert_config.is_file():
        length = json.loads(bert_config.read_text()).get("max_seq_length")
    return Pooling(mode=mode, normalize=NORMALIZE_TYPE in types, max_seq_length=length)


def write_sentence_transformers_files(folder: str | Path, pooling: Pooling, dimension: int) -> None:
    """Write the files that make ``folder`` (a model folder) a sentence-transformers model with ``pooling``."""
    folder = Path(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": TRANSFORMER_TYPE},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING_TYPE},
    ]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": NORMALIZE_TYPE})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    flags = {flag: mode == pooling.mode for mode, flag in MODE_FLAGS.items()}
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": dimension, **flags}, indent=2)
    )
    if pooling.max_seq_length is not None:
        settings = {"max_seq_length": pooling.max_seq_length, "do_lower_case": False}
        (folder / "sentence_bert_config.json").write_text(json.dumps(settings, indent=2))
