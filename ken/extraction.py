"""Extracting a subnetwork from a pretrained and a fine-tuned checkpoint.

Rows are grouped by length across all selected tensors so that the vectorised rule runs on a few
large batches rather than tensor by tensor. Rows whose fine-tuned values equal the pretrained
ones are skipped: whatever the rule keeps there changes nothing and would not be stored.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
from tqdm.auto import tqdm

from ken.alignment import align
from ken.backbone import fingerprint
from ken.checkpoint import ModelSource, load_backbone_state, load_finetuned
from ken.errors import KenError
from ken.pooling import Pooling, read_pooling
from ken.selection import kept_mask_rows
from ken.subnetwork import SparseRows, Subnetwork, SubnetworkInfo
from ken.taskmodel import (
    FEATURE_EXTRACTION,
    PAIR_SCORING,
    SEQUENCE_CLASSIFICATION,
    TASK_TYPES,
    TEXT_GENERATION,
    TOKEN_CLASSIFICATION,
)

METHODS = ("ken", "random", "magnitude")
#: Name patterns offered by name; ``attention`` is the paper's attention-only variant.
PRESETS = {
    "attention": (
        r"(?:attention\.self\.(?:query|key|value)|attention\.output\.dense|attn\.(?:c_attn|c_proj)"
        r"|self_attn\.(?:q_proj|k_proj|v_proj|o_proj|out_proj))\.weight$"
    ),
}
#: Rows handed to the selection rule at once (it chunks further inside).
ROWS_PER_BATCH = 8192


@dataclass(frozen=True)
class _Work:
    name: str  # backbone name
    finetuned: torch.Tensor  # [rows, cols]
    base: torch.Tensor  # [rows, cols]
    changed_rows: torch.Tensor  # int64 row ids


def _pattern(value: str | None) -> re.Pattern[str] | None:
    if value is None:
        return None
    try:
        return re.compile(PRESETS.get(value, value))
    except re.error as exc:
        raise KenError(f"invalid name pattern {value!r}: {exc}") from exc


def _as_rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(1, -1) if tensor.dim() <= 1 else tensor.reshape(tensor.shape[0], -1)


def budget_mask(scores: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Per row, the ``budget[r]`` entries with the highest score (ties: lowest column first)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order).contiguous())
    return rank < budget[:, None]


def _select(method: str, rows: torch.Tensor, base: torch.Tensor | None, k: int, gen: torch.Generator) -> torch.Tensor:
    mask = kept_mask_rows(rows, k)
    if method == "ken":
        return mask
    budget = mask.sum(dim=1)
    if base is not None:
        scores = (rows.to(torch.float64) - base.to(torch.float64)).abs()
    else:
        scores = torch.rand(rows.shape, generator=gen, dtype=torch.float64)
    return budget_mask(scores, budget)


def extract(
    base: ModelSource,
    finetuned: ModelSource,
    k: int,
    *,
    method: str = "ken",
    include: str | None = None,
    exclude: str | None = None,
    seed: int = 0,
    progress: bool = True,
    task_type: str | None = None,
) -> Subnetwork:
    """Extract the subnetwork of ``finetuned`` over the backbone ``base``.

    ``base`` and ``finetuned`` are local Hugging Face model folders, in-memory models or state
    dicts. ``include``/``exclude`` are regular expressions (or a preset name from
    :data:`PRESETS`) over backbone tensor names; backbone tensors left out keep their pretrained
    values. ``random`` and ``magnitude`` keep, per row, as many entries as KEN keeps there.
    ``task_type`` (one of :data:`ken.taskmodel.TASK_TYPES`) defaults to what the fine-tuned
    checkpoint says (:func:`infer_task_type`); an embedding task records its pooling
    (:func:`task_pooling_of`).
    """
    if task_type is not None and task_type not in TASK_TYPES:
        raise KenError(f"unknown task type {task_type!r}; choose one of {', '.join(TASK_TYPES)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise KenError(f"k must be an integer >= 1, got {k!r}")
    if method not in METHODS:
        raise KenError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    include_re, exclude_re = _pattern(include), _pattern(exclude)
    base_state = load_backbone_state(base)
    ft_state, config = load_finetuned(finetuned)
    alignment = align(base_state, ft_state)

    work: list[_Work] = []
    for ft_name, base_name in alignment.shared.items():
        if include_re is not None and not include_re.search(base_name):
            continue
        if exclude_re is not None and exclude_re.search(base_name):
            continue
        ft_rows = _as_rows(ft_state[ft_name].detach())
        base_rows = _as_rows(base_state[base_name].detach().to(ft_rows.dtype))
        work.append(_Work(base_name, ft_rows, base_rows, changed_rows(ft_rows, base_rows)))

    masks = _run_selection(work, k, method, seed, progress)
    deltas: dict[str, SparseRows] = {}
    selected: dict[str, int] = {}
    for item in work:
        shape = tuple(base_state[item.name].shape)
        deltas[item.name], selected[item.name] = _to_sparse(item, masks.get(item.name), shape)

    head = {name: ft_state[name].detach().cpu().clone() for name in alignment.head}
    task_type = task_type or infer_task_type(config, _folder(finetuned))
    pooling = task_pooling_of(finetuned, base) if task_type == FEATURE_EXTRACTION else None
    info = SubnetworkInfo(
        backbone_fingerprint=fingerprint(base_state),
        method=method,
        k=k,
        base_prefix=alignment.prefix,
        task_type=task_type,
        id2label={int(i): str(label) for i, label in (config.get("id2label") or {}).items()},
        config=config,
        include=include,
        exclude=exclude,
        selected=selected,
        pooling=pooling,
    )
    return Subnetwork(deltas={n: d for n, d in deltas.items() if d.nnz}, head=head, info=info)


def _folder(source: ModelSource) -> Path | None:
    return Path(source) if isinstance(source, (str, os.PathLike)) else None


def is_cross_encoder(config: dict[str, Any], folder: Path | None) -> bool:
    """Whether sentence-transformers saved this sequence classifier as a ``CrossEncoder`` (pair inputs).

    Its v4/v5 releases put a ``sentence_transformers`` block in ``config.json``; later ones name the
    model type in ``config_sentence_transformers.json``.
    """
    if isinstance(config.get("sentence_transformers"), dict):
        return True
    settings = folder / "config_sentence_transformers.json" if folder is not None else None
    if settings is None or not settings.is_file():
        return False
    try:
        return json.loads(settings.read_text()).get("model_type") == "CrossEncoder"
    except (json.JSONDecodeError, AttributeError):
        return False


def infer_task_type(config: dict[str, Any], folder: Path | None = None) -> str:
    """The task type a fine-tuned checkpoint was trained for, from its architecture.

    ``*ForTokenClassification``: token classification; ``*ForCausalLM`` / ``*LMHeadModel``: text
    generation; ``*ForSequenceClassification``: pair scoring when sentence-transformers saved it as a
    cross-encoder, else sequence classification; a bare
    ``*Model`` (what ``AutoModel`` and sentence-transformers save): feature extraction.
    """
    for arch in config.get("architectures") or []:
        if arch.endswith("ForTokenClassification"):
            return TOKEN_CLASSIFICATION
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return TEXT_GENERATION
        if arch.endswith("ForSequenceClassification"):
            return PAIR_SCORING if is_cross_encoder(config, folder) else SEQUENCE_CLASSIFICATION
        if arch.endswith("Model"):
            return FEATURE_EXTRACTION
    return SEQUENCE_CLASSIFICATION if config.get("id2label") else FEATURE_EXTRACTION


def task_pooling_of(finetuned: ModelSource, base: ModelSource) -> Pooling:
    """An embedding task's pooling: the fine-tuned folder's sentence-transformers settings, else the
    backbone folder's (fine-tuning keeps the pooling), else mean pooling without normalisation."""
    for source in (finetuned, base):
        folder = _folder(source)
        pooling = read_pooling(folder) if folder is not None else None
        if pooling is not None:
            return pooling
    return Pooling()


def _run_selection(work: list[_Work], k: int, method: str, seed: int, progress: bool) -> dict[str, torch.Tensor]:
    """Masks over each tensor's changed rows (``[len(changed_rows), cols]``), batched by row length."""
    groups: dict[int, list[_Work]] = defaultdict(list)
    for item in work:
        if item.changed_rows.numel():
            groups[item.finetuned.shape[1]].append(item)
    total = sum(int(item.changed_rows.numel()) for item in work)
    gen = torch.Generator().manual_seed(seed)
    masks: dict[str, torch.Tensor] = {}
    with tqdm(total=total, unit="row", desc=f"{method} k={k}", disable=not progress) as bar:
        for _, items in sorted(groups.items()):
            rows = torch.cat([item.finetuned.index_select(0, item.changed_rows) for item in items])
            base = None
            if method == "magnitude":
                base = torch.cat([item.base.index_select(0, item.changed_rows) for item in items])
            parts = []
            for start in range(0, rows.shape[0], ROWS_PER_BATCH):
                stop = start + ROWS_PER_BATCH
                parts.append(_select(method, rows[start:stop], None if base is None else base[start:stop], k, gen))
                bar.update(parts[-1].shape[0])
            mask = torch.cat(parts)
            offset = 0
            for item in items:
                count = int(item.changed_rows.numel())
                masks[item.name] = mask[offset : offset + count]
                offset += count
    return masks


def _host_values(tensor: torch.Tensor) -> np.ndarray:
    """A host NumPy view (or exact float32 copy, for 16-bit floats) of a floating tensor."""
    tensor = tensor.detach().cpu()
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)  # exact for float16/bfloat16: equality is preserved
    return tensor.numpy()


@numba.njit(cache=True, parallel=True)
def _changed(finetuned: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per row, whether any fine-tuned value differs from the pretrained one."""
    out = np.zeros(finetuned.shape[0], dtype=np.bool_)
    for r in numba.prange(finetuned.shape[0]):
        for c in range(finetuned.shape[1]):
            if finetuned[r, c] != base[r, c]:
                out[r] = True
                break
    return out


def changed_rows(finetuned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Ids (int64) of the rows of ``[rows, cols]`` ``finetuned`` that differ from ``base``."""
    ids = np.flatnonzero(_changed(_host_values(finetuned), _host_values(base)))
    return torch.from_numpy(ids).to(finetuned.device)


@numba.njit(cache=True, parallel=True)
def _count_stored(
    finetuned: np.ndarray, base: np.ndarray, rows: np.ndarray, mask: np.ndarray, counts: np.ndarray
) -> int:
    """``counts[rows[i]]``: entries of row ``rows[i]`` kept by ``mask[i]`` that differ from the
    base (the ones stored); returns how many entries ``mask`` keeps in all."""
    kept = 0
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        stored = 0
        selected = 0
        for c in range(finetuned.shape[1]):
            if mask[i, c]:
                selected += 1
                if finetuned[r, c] != base[r, c]:
                    stored += 1
        counts[r] = stored
        kept += selected
    return kept


@numba.njit(cache=True, parallel=True)
def _fill_stored(
    finetuned: np.ndarray,
    base: np.ndarray,
    rows: np.ndarray,
    mask: np.ndarray,
    indptr: np.ndarray,
    columns: np.ndarray,
    positions: np.ndarray,
) -> None:
    """Column and flat position of every stored entry, row by row (``indptr`` from the counts)."""
    cols = finetuned.shape[1]
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        out = indptr[r]
        for c in range(cols):
            if mask[i, c] and finetuned[r, c] != base[r, c]:
                columns[out] = c
                positions[out] = r * cols + c
                out += 1


def _to_sparse(item: _Work, mask: torch.Tensor | None, shape: tuple[int, ...]) -> tuple[SparseRows, int]:
    """The stored entries of ``item`` (kept by ``mask`` and changed), and how many ``mask`` keeps."""
    rows, cols = item.finetuned.shape
    index_dtype = torch.uint16 if cols <= 65_536 else torch.int32
    counts = np.zeros(rows, dtype=np.int64)
    selected = 0
    if mask is not None:
        finetuned, base = _host_values(item.finetuned), _host_values(item.base)
        changed, kept = item.changed_rows.cpu().numpy(), mask.cpu().numpy()
        selected = int(_count_stored(finetuned, base, changed, kept, counts))
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    columns = np.empty(int(indptr[-1]), dtype=np.int32)
    positions = np.empty(int(indptr[-1]), dtype=np.int64)
    if columns.size:
        _fill_stored(finetuned, base, changed, kept, indptr, columns, positions)
    # a subnetwork lives in host memory whatever device the selection ran on
    values = item.finetuned.detach().reshape(-1).cpu().take(torch.from_numpy(positions))
    return SparseRows(shape, torch.from_numpy(indptr), torch.from_numpy(columns).to(index_dtype), values), selected
