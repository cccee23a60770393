"""When to run a batch of several tasks as one mixed pass (:mod:`ken.mixed`) instead of swapping task by task.

The owner serves queued requests of several tasks either the usual way, one batch per task with a
swap before each (``ken.Swapper``), or as one mixed pass over the pristine weights in which every
task's rows run with the task's own tensors. Which is cheaper depends on the machine: a swap costs
about a nanosecond per entry written, restored or saved; a mixed pass pays, per task in it, a copy
of every tensor the task changes into a scratch tensor plus its entries (embedding tables excluded:
only the rows of the ids present are assembled), and saves the per-task forward passes' fixed cost.
:class:`CostModel` holds those rates, measured once at start-up on this backbone (:func:`calibrate`)
with calibration plans that write the weights' own values (so even an interrupted calibration
leaves them unchanged), and estimates both ways for the batch at hand.

``KEN_MIXED_BATCHES`` (:class:`~service.settings.MixedMode`): ``off`` (never mix), ``always`` (mix
whenever two or more tasks are queued and their plans allow it), ``auto`` (mix when the cost model
says it is cheaper).
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

import ken
from ken.mixed import MixedForward, MixedGroup

if TYPE_CHECKING:
    from service.engine.scheduler import Batch
    from service.engine.staged import StagedTask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupShape:
    """What the cost model needs to know about one task's share of a candidate batch."""

    plan: ken.DeltaPlan
    inputs: int
    longest: int  # tokens of its longest input (its own batch is padded to this)


@dataclass(frozen=True)
class CostModel:
    """Seconds per unit of work on this machine, measured by :func:`calibrate`."""

    forward_fixed_s: float  # per forward pass
    forward_token_s: float  # per padded token of a forward pass
    swap_entry_s: float  # per entry restored or written by a swap (saving included)
    mixed_element_s: float  # per element of a changed tensor copied into a scratch tensor, per task
    mixed_entry_s: float  # per entry written into a scratch tensor, per task

    def forward_s(self, inputs: int, longest: int) -> float:
        return self.forward_fixed_s + self.forward_token_s * inputs * longest

    def swap_path_s(self, groups: Sequence[GroupShape], applied: ken.DeltaPlan | None) -> float:
        """One batch per task, the applied task's first (no swap), each other one switched to."""
        ordered = sorted(groups, key=lambda group: group.plan is not applied)
        seconds, previous = 0.0, applied
        for group in ordered:
            if group.plan is not previous:
                seconds += self.swap_entry_s * (group.plan.nnz + (previous.nnz if previous is not None else 0))
                previous = group.plan
            seconds += self.forward_s(group.inputs, group.longest)
        return seconds

    def mixed_s(self, groups: Sequence[GroupShape], applied: ken.DeltaPlan | None, mixed: MixedForward) -> float:
        """Revert whatever is applied, then one forward pass of every input with each task's scratch tensors."""
        seconds = self.swap_entry_s * applied.nnz if applied is not None else 0.0
        seconds += self.forward_s(sum(g.inputs for g in groups), max(g.longest for g in groups))
        for group in groups:
            elements, entries = mixed.scratch_work(group.plan)
            seconds += self.mixed_element_s * elements + self.mixed_entry_s * entries
        return seconds


def calibration_subnetwork(flat: ken.FlatParameters, every: int) -> ken.Subnetwork:
    """A subnetwork that changes every ``every``-th entry of each row of every tensor, to its own value.

    Its passes cost what a real delta of that density costs, and write nothing new into the weights."""
    deltas = {}
    for name, slot in flat.layout.items():
        rows = slot.shape[0] if len(slot.shape) > 1 else 1
        cols = slot.numel // rows
        columns = torch.arange(0, cols, every, dtype=torch.int64)
        indptr = torch.arange(rows + 1, dtype=torch.int64) * columns.numel()
        positions = (torch.arange(rows, dtype=torch.int64)[:, None] * cols + columns).reshape(-1)
        values = flat.buffer[slot.offset : slot.offset + slot.numel].cpu()[positions]
        index_dtype = torch.uint16 if cols <= 1 << 16 else torch.int32
        deltas[name] = ken.SparseRows(slot.shape, indptr, columns.repeat(rows).to(index_dtype), values)
    info = ken.SubnetworkInfo(backbone_fingerprint="calibration", method="calibration", k=every)
    return ken.Subnetwork(deltas, {}, info)


def _median_s(run: Callable[[], object], repeats: int, synchronize: Callable[[], None]) -> float:
    run()
    synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def calibrate(
    swapper: ken.Swapper,
    mixed: MixedForward,
    models: Sequence[torch.nn.Module],
    inputs: Callable[[int, int], dict[str, torch.Tensor]],
    *,
    repeats: int = 3,
) -> CostModel:
    """Measure the rates of :class:`CostModel` on this backbone (owner thread; the weights end pristine).

    ``models``: two task models around the backbone (their heads are not timed apart);
    ``inputs(n, length)``: a batch of ``n`` inputs of ``length`` tokens on the backbone's device.
    """
    device = swapper.flat.device
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dense, sparse = (ken.DeltaPlan(calibration_subnetwork(swapper.flat, every), swapper.flat) for every in (4, 32))
    length = 32
    with torch.no_grad():
        swapper.revert()
        one = _median_s(lambda: models[0](**inputs(1, length)), repeats, synchronize)
        eight = _median_s(lambda: models[0](**inputs(8, length)), repeats, synchronize)
        token_s = max(0.0, (eight - one) / (7 * length))
        fixed_s = max(0.0, one - token_s * length)
        try:
            switch = _median_s(lambda: (swapper.switch(dense), swapper.switch(sparse)), repeats, synchronize)
        finally:
            swapper.revert()
        swap_entry_s = switch / (2 * (dense.nnz + sparse.nnz))
        batch = inputs(2, length)
        passes = {}
        for plan in (dense, sparse):
            groups = [MixedGroup(plan, models[0], 1), MixedGroup(plan, models[1], 1)]
            passes[plan] = _median_s(lambda groups=groups: mixed.logits(groups, batch), repeats, synchronize)
    base = fixed_s + token_s * 2 * length
    (dense_elements, dense_entries), (_, sparse_entries) = mixed.scratch_work(dense), mixed.scratch_work(sparse)
    per_task = {plan: max(0.0, (seconds - base) / 2) for plan, seconds in passes.items()}
    entry_s = max(0.0, (per_task[dense] - per_task[sparse]) / max(1, dense_entries - sparse_entries))
    element_s = max(0.0, (per_task[sparse] - entry_s * sparse_entries) / max(1, dense_elements))
    model = CostModel(fixed_s, token_s, swap_entry_s, element_s, entry_s)
    logger.info("mixed-batch cost model measured", extra={"cost_model": model.__dict__})
    return model


def calibration_models(backbone: nn.Module, count: int = 2) -> list[nn.Module]:
    """Two-label sequence classifiers around ``backbone`` with zero heads: stand-ins for tasks while calibrating."""
    config = copy.deepcopy(backbone.config)
    config.id2label, config.label2id = {0: "a", 1: "b"}, {"a": 0, "b": 1}
    with torch.device("meta"):
        probe = AutoModelForSequenceClassification.from_config(config)
    prefix = probe.base_model_prefix + "."
    head = {name: torch.zeros(t.shape) for name, t in probe.state_dict().items() if not name.startswith(prefix)}
    info = ken.SubnetworkInfo(
        backbone_fingerprint="calibration", method="calibration", k=0, id2label=config.id2label, config=config.to_dict()
    )
    return [ken.attach_head(backbone, info, head) for _ in range(count)]


MIXABLE_TASK_TYPE = "sequence-classification"


class MixedBatchPolicy:
    """The scheduler's :data:`~service.engine.scheduler.MixedPolicy` for ``KEN_MIXED_BATCHES`` auto or always.

    A candidate mixes only when all tasks are sequence classifiers (the one task type whose answer is
    the head's logits as they come; other types post-process the model's outputs) of one architecture
    and every plan is supported by :class:`MixedForward`; then ``always``, or (auto) once the cost model
    is measured and says mixing is cheaper.
    """

    def __init__(self, mixed: MixedForward, *, always: bool) -> None:
        self.always = always
        self.mixed = mixed
        self.cost_model: CostModel | None = None  # set by the owner thread once measured (auto)

    def __call__(self, groups: list[Batch], applied: StagedTask | None) -> bool:
        kinds = {(g.staged.info.task_type, g.staged.info.config.get("model_type")) for g in groups}
        if len(kinds) != 1 or next(iter(kinds))[0] != MIXABLE_TASK_TYPE:
            return False
        if not all(self.mixed.supports(g.staged.plan) for g in groups):
            return False
        if self.always:
            return True
        cost = self.cost_model
        if cost is None:
            return False
        shapes = [
            GroupShape(g.staged.plan, g.inputs, max(len(f["input_ids"]) for i in g.items for f in i.encoded.features))
            for g in groups
        ]
        current = applied.plan if applied is not None else None
        return cost.mixed_s(shapes, current, self.mixed) < cost.swap_path_s(shapes, current)
