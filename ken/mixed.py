"""Mixed-task forward passes: one batch whose inputs belong to several tasks, on the pristine weights.

A swap (:mod:`ken.swap`) writes one task's delta into the weights, so a forward pass serves one
task. A mixed pass leaves the weights pristine and serves several tasks in one forward pass: the
batch holds each task's inputs as one contiguous block of rows, and every module whose tensors some
task changes runs each task's block with that task's values, while everything else (attention
arithmetic, activations, tasks that leave a module alone) runs on the whole batch at once. Each
task's head runs on its own rows.

How a task's values reach a module, per module type:

* ``nn.Linear`` and ``nn.LayerNorm``: the task's tensor is built in a reused scratch tensor (a copy
  of the pristine tensor with the task's entries written in), then the module's own operation runs
  on the task's rows. So each row is computed as the swapped model computes it (``x @ W_t^T``), not
  as a pristine result plus a sparse correction (``x @ W^T + x @ dW^T`` rounds differently, and at
  KEN's ~25 % kept per row a sparse product costs more than the dense one it corrects).
* ``nn.Embedding``: nothing is copied: the task's rows of the table are assembled only for the token
  ids present in its inputs (a fine-tune that changed most rows of a 30k-row vocabulary costs a few
  dozen rows per input here, against every changed row in a swap).

The weights are only read, so an exception at any point leaves the backbone as it was. Outputs
equal the swapped path's up to float32 rounding: the matrix products see a different number of
rows and the batch may be padded longer than a one-task batch would be (masked positions change the
order of sums, not their terms); tests/ken/test_mixed.py states the bound.

Any other module type whose tensors a plan changes (GPT-2's ``Conv1D``, say) is not supported:
:meth:`MixedForward.supports` says so up front, and callers swap instead.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ken.errors import KenError
from ken.swap import DeltaPlan, FlatParameters

#: Module types a mixed pass can run per task. Exact types: a subclass may compute something else.
SUPPORTED_MODULES = (nn.Linear, nn.Embedding, nn.LayerNorm)


class MixedUnsupported(KenError):
    """This batch cannot run as a mixed pass (unsupported module, model shape or call); swap instead."""


@dataclass(frozen=True)
class MixedGroup:
    """One task's share of a mixed batch: its plan, its task model (around the shared backbone), its rows."""

    plan: DeltaPlan
    model: nn.Module
    rows: int


@dataclass(frozen=True)
class _Entries:
    """A task's entries of one tensor: views into its plan (flat positions in the buffer, values), no copies."""

    positions: torch.Tensor
    values: torch.Tensor
    offset: int  # the tensor's first position in the buffer

    def local(self) -> torch.Tensor:
        """Row-major int64 positions in the tensor (a transient of this tensor's entries only)."""
        return self.positions.to(torch.int64) - self.offset


@dataclass(frozen=True)
class _Segment:
    """Consecutive rows of the batch that one module computes with the same tensors."""

    start: int
    end: int
    values: dict[str, _Entries]  # by tensor attribute ("weight", "bias")


class MixedForward:
    """Runs mixed batches on a backbone whose weights are managed by a :class:`FlatParameters`.

    Owns reused scratch tensors (one per tensor shape and role, at most the largest weight each),
    so like the :class:`~ken.swap.Swapper` it is driven by one thread.
    """

    def __init__(self, backbone: nn.Module, flat: FlatParameters) -> None:
        self._backbone = backbone
        self._flat = flat
        self._names = sorted(flat.layout, key=lambda name: flat.layout[name].offset)
        self._owners: dict[str, tuple[nn.Module, str]] = {}
        for name in self._names:
            module_name, _, attr = name.rpartition(".")
            self._owners[name] = (backbone.get_submodule(module_name) if module_name else backbone, attr)
        edges = [flat.layout[name].offset for name in self._names]
        self._edges = torch.tensor([*edges, flat.buffer.numel()], dtype=torch.int64)
        self._ranges: weakref.WeakKeyDictionary[DeltaPlan, dict[str, tuple[int, int]]] = weakref.WeakKeyDictionary()
        self._scratch: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def tensors_changed(self, plan: DeltaPlan) -> dict[str, tuple[int, int]]:
        """Per backbone tensor the plan changes: its entries' range ``[start, end)`` in the plan (cached per plan)."""
        ranges = self._ranges.get(plan)
        if ranges is None:
            edges = self._edges.to(device=plan.positions.device, dtype=plan.positions.dtype)
            bounds = torch.searchsorted(plan.positions, edges).tolist()
            ranges = {
                name: (bounds[i], bounds[i + 1]) for i, name in enumerate(self._names) if bounds[i + 1] > bounds[i]
            }
            self._ranges[plan] = ranges
        return ranges

    def unsupported_reason(self, plan: DeltaPlan) -> str | None:
        """Why the plan cannot run in a mixed pass (a tensor of a module type it cannot split), or None."""
        for name in self.tensors_changed(plan):
            module, _ = self._owners[name]
            if type(module) not in SUPPORTED_MODULES:
                return f"{name!r} belongs to a {type(module).__name__}, which mixed passes do not support"
            if isinstance(module, nn.Embedding) and module.max_norm is not None:
                return f"{name!r}: an embedding with max_norm renormalises its weights in place"
        return None

    def supports(self, plan: DeltaPlan) -> bool:
        return self.unsupported_reason(plan) is None

    def scratch_work(self, plan: DeltaPlan) -> tuple[int, int]:
        """What a pass costs per task beyond the dense forward: (elements copied into scratch tensors, entries
        written there). Embedding tables are not copied; their rows are assembled for the ids present."""
        elements = entries = 0
        for name, (start, end) in self.tensors_changed(plan).items():
            module, _ = self._owners[name]
            if not isinstance(module, nn.Embedding):
                elements += self._flat.layout[name].numel
                entries += end - start
        return elements, entries

    def logits(self, groups: Sequence[MixedGroup], inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """One forward pass over ``inputs`` (rows ordered as ``groups``); each group's logits as its model gives them.

        All task models must be of one class around this backbone. Raises :class:`MixedUnsupported`
        (with nothing changed) when the batch cannot run mixed.
        """
        groups = [group for group in groups if group.rows > 0]
        if not groups:
            raise MixedUnsupported("a mixed batch needs at least one input")
        driver = groups[0].model
        prefix = getattr(driver, "base_model_prefix", "")
        for group in groups:
            if type(group.model) is not type(driver) or getattr(group.model, prefix, None) is not self._backbone:
                raise MixedUnsupported("the tasks' models differ in class or do not share this backbone")
            reason = self.unsupported_reason(group.plan)
            if reason is not None:
                raise MixedUnsupported(reason)
        batch = sum(group.rows for group in groups)
        bounds, start = [], 0
        for group in groups:
            bounds.append((start, start + group.rows))
            start += group.rows
        overrides = self._backbone_overrides(groups, bounds, batch)
        overrides += self._head_overrides(driver, prefix, groups, bounds, batch)
        for module, _ in overrides:
            if "forward" in module.__dict__:
                raise MixedUnsupported(f"{type(module).__name__} already has its forward replaced (hooks, wrappers)")
        try:
            for module, forward in overrides:
                module.forward = forward
            with torch.no_grad():
                logits = driver(**inputs).logits
        finally:
            for module, _ in overrides:
                module.__dict__.pop("forward", None)
        return [
            logits[start:end, ..., : _labels(group.model, logits)]
            for group, (start, end) in zip(groups, bounds, strict=True)
        ]

    # -- the backbone ---------------------------------------------------------------------------------

    def _backbone_overrides(
        self, groups: list[MixedGroup], bounds: list[tuple[int, int]], batch: int
    ) -> list[tuple[nn.Module, Callable[..., torch.Tensor]]]:
        per_module: dict[nn.Module, list[dict[str, _Entries]]] = {}
        for index, group in enumerate(groups):
            plan = group.plan
            for name, (first, last) in self.tensors_changed(plan).items():
                module, attr = self._owners[name]
                values = per_module.setdefault(module, [{} for _ in groups])
                offset = self._flat.layout[name].offset
                values[index][attr] = _Entries(plan.positions[first:last], plan.values[first:last], offset)
        overrides: list[tuple[nn.Module, Callable[..., torch.Tensor]]] = []
        for module, values in per_module.items():
            segments = _segments(bounds, values)
            if isinstance(module, nn.Embedding):
                overrides.append((module, self._embedding_forward(module, segments, batch)))
            elif isinstance(module, nn.Linear):
                overrides.append((module, self._rowwise_forward(module, segments, batch, F.linear)))
            else:
                assert isinstance(module, nn.LayerNorm)
                overrides.append((module, self._rowwise_forward(module, segments, batch, self._layer_norm(module))))
        return overrides

    def _task_tensor(self, module: nn.Module, attr: str, segment: _Segment) -> torch.Tensor:
        """The module's tensor ``attr`` with the segment's task values written in (a reused scratch tensor)."""
        pristine: torch.Tensor = getattr(module, attr)
        if attr not in segment.values:
            return pristine
        key = (attr, tuple(pristine.shape))
        scratch = self._scratch.get(key)
        if scratch is None or scratch.dtype != pristine.dtype or scratch.device != pristine.device:
            scratch = self._scratch[key] = torch.empty_like(pristine)
        scratch.copy_(pristine)
        entries = segment.values[attr]
        scratch.view(-1).put_(entries.local(), entries.values)
        return scratch

    def _rowwise_forward(
        self,
        module: nn.Module,
        segments: list[_Segment],
        batch: int,
        operation: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A forward that applies ``operation(rows, weight, bias)`` per segment with the segment's tensors."""

        def forward(x: torch.Tensor) -> torch.Tensor:
            _check_rows(module, x, batch)
            pieces = []
            for segment in segments:
                weight = self._task_tensor(module, "weight", segment)
                bias = self._task_tensor(module, "bias", segment) if module.bias is not None else None
                pieces.append(operation(x[segment.start : segment.end], weight, bias))
            return torch.cat(pieces)

        return forward

    @staticmethod
    def _layer_norm(
        module: nn.LayerNorm,
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
        def operation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            return F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)

        return operation

    def _embedding_forward(
        self, module: nn.Embedding, segments: list[_Segment], batch: int
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A lookup of the pristine table, then each task's changed entries of the rows its ids select."""

        def forward(ids: torch.Tensor) -> torch.Tensor:
            if ids.dim() >= 1 and ids.shape[0] == 1 and batch > 1:
                ids = ids.expand(batch, *ids.shape[1:])  # position ids broadcast over the batch
            _check_rows(module, ids, batch)
            out = type(module).forward(module, ids)
            for segment in segments:
                if "weight" in segment.values:
                    rows = ids[segment.start : segment.end]
                    out[segment.start : segment.end] = _task_rows(module.weight, segment.values["weight"], rows)
            return out

        return forward

    # -- the heads ------------------------------------------------------------------------------------

    def _head_overrides(
        self, driver: nn.Module, prefix: str, groups: list[MixedGroup], bounds: list[tuple[int, int]], batch: int
    ) -> list[tuple[nn.Module, Callable[..., torch.Tensor]]]:
        """The driver model's own modules outside the backbone, each running every task's module on its rows."""
        overrides: list[tuple[nn.Module, Callable[..., torch.Tensor]]] = []
        for name, child in driver.named_children():
            if name == prefix:
                continue
            modules = [group.model.get_submodule(name) for group in groups]
            overrides.append((child, _dispatch(child, modules, bounds, batch)))
        return overrides


def _dispatch(
    child: nn.Module, modules: list[nn.Module], bounds: list[tuple[int, int]], batch: int
) -> Callable[..., torch.Tensor]:
    def forward(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if args or kwargs:
            raise MixedUnsupported(f"head module {type(child).__name__} takes more than one input")
        _check_rows(child, x, batch)
        pieces = [
            type(module).forward(module, x[start:end]) for module, (start, end) in zip(modules, bounds, strict=True)
        ]
        width = max(piece.shape[-1] for piece in pieces)
        return torch.cat([F.pad(piece, (0, width - piece.shape[-1])) for piece in pieces])

    return forward


def _labels(model: nn.Module, logits: torch.Tensor) -> int:
    """A task model's width of the last logits dimension (heads of other widths are zero-padded to the widest)."""
    config = getattr(model, "config", None)
    return int(getattr(config, "num_labels", logits.shape[-1]))


def _check_rows(module: nn.Module, x: torch.Tensor, batch: int) -> None:
    if x.dim() == 0 or x.shape[0] != batch:
        raise MixedUnsupported(
            f"{type(module).__name__} got a tensor of shape {list(x.shape)}, not one row per input ({batch} inputs)"
        )


def _segments(bounds: list[tuple[int, int]], values: list[dict[str, _Entries]]) -> list[_Segment]:
    """Per group its values, adjacent groups that leave the module alone merged into one pristine segment."""
    segments: list[_Segment] = []
    for (start, end), task_values in zip(bounds, values, strict=True):
        if segments and not task_values and not segments[-1].values:
            segments[-1] = _Segment(segments[-1].start, end, {})
        else:
            segments.append(_Segment(start, end, task_values))
    return segments


def _task_rows(table: torch.Tensor, entries: _Entries, ids: torch.Tensor) -> torch.Tensor:
    """``F.embedding(ids, table with the entries written in)``, building only the rows ``ids`` select.

    The entries' positions are sorted, so each present row's entries are found by binary search on
    the plan's own positions: nothing is converted or copied for the rows that are not present."""
    cols = table.shape[1]
    present, inverse = torch.unique(ids, return_inverse=True)
    row_starts = (present * cols + entries.offset).to(entries.positions.dtype)
    first = torch.searchsorted(entries.positions, row_starts)
    counts = torch.searchsorted(entries.positions, row_starts + cols) - first
    block = F.embedding(present, table)  # a fresh copy of the rows present
    total = int(counts.sum())
    if total:
        block_rows = torch.repeat_interleave(torch.arange(present.numel(), device=ids.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        chosen = torch.arange(total, device=ids.device) - torch.repeat_interleave(starts - first, counts)
        columns = entries.positions[chosen].to(torch.int64) - entries.offset - present[block_rows] * cols
        block[block_rows, columns] = entries.values[chosen]
    return F.embedding(inverse, block)
