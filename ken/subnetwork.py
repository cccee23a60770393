"""In-memory form of a KEN subnetwork: sparse per-row deltas over a backbone plus a task head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ken.pooling import Pooling

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SparseRows:
    """Fine-tuned values kept in one backbone tensor, in compressed-sparse-row form.

    The tensor is viewed as ``[shape[0], -1]`` (a 1-D tensor is one row). Row ``r`` holds the
    columns ``indices[indptr[r]:indptr[r + 1]]`` (sorted, unique) with ``values`` at the same
    positions. Only entries whose fine-tuned value differs from the backbone's are stored.
    """

    shape: tuple[int, ...]
    indptr: torch.Tensor  # int64, [rows + 1]
    indices: torch.Tensor  # uint16 when cols <= 65,536, else int32
    values: torch.Tensor  # the checkpoint's floating dtype

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        numel = 1
        for size in self.shape:
            numel *= size
        return numel // self.rows if self.rows else 0

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def flat_indices(self) -> torch.Tensor:
        """Row-major positions of the stored entries in the flattened tensor (int64)."""
        counts = self.indptr[1:] - self.indptr[:-1]
        rows = torch.repeat_interleave(torch.arange(self.rows, dtype=torch.int64), counts)
        return rows * self.cols + self.indices.to(torch.int64)

    def to_dense_update(self, base: torch.Tensor) -> torch.Tensor:
        """A copy of ``base`` with the stored entries written in."""
        if tuple(base.shape) != self.shape:
            raise ValueError(f"shape mismatch: delta is {self.shape}, tensor is {tuple(base.shape)}")
        out = base.detach().clone().reshape(-1)
        out[self.flat_indices()] = self.values.to(out.dtype)
        return out.reshape(self.shape)


@dataclass
class SubnetworkInfo:
    """Everything about a subnetwork that is not a tensor; serialised as JSON metadata."""

    backbone_fingerprint: str
    method: str
    k: int
    base_prefix: str = ""
    task_type: str = "sequence-classification"
    id2label: dict[int, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    include: str | None = None
    exclude: str | None = None
    selected: dict[str, int] = field(default_factory=dict)
    pooling: Pooling | None = None  # embedding tasks: how token states become one vector
    format_version: int = FORMAT_VERSION

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in sorted(self.id2label)]


@dataclass
class Subnetwork:
    """A task as a sparse delta over a backbone plus the task's own (whole) head tensors.

    ``deltas`` are keyed by backbone tensor names (as the backbone model's ``state_dict`` names
    them); ``head`` by the task model's names (as in the fine-tuned checkpoint, with
    ``info.base_prefix`` in front of backbone names).
    """

    deltas: dict[str, SparseRows]
    head: dict[str, torch.Tensor]
    info: SubnetworkInfo

    @property
    def kept_entries(self) -> int:
        return sum(d.nnz for d in self.deltas.values())

    @property
    def head_entries(self) -> int:
        return sum(t.numel() for t in self.head.values())

    def kept_fraction(self, backbone_numel: int) -> float:
        """Share of the backbone's entries that take a fine-tuned value."""
        return self.kept_entries / backbone_numel if backbone_numel else 0.0
