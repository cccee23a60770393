"""A task version staged for the backbone owner: delta plan on the device, head, labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

import ken
from ken.taskmodel import task_labels
from service.engine.backbone import ResidentBackbone


def subnetwork_nbytes(subnetwork: ken.Subnetwork) -> int:
    """Host memory held by a parsed subnetwork's tensors."""
    tensors = [t for d in subnetwork.deltas.values() for t in (d.indptr, d.indices, d.values)]
    tensors += list(subnetwork.head.values())
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(eq=False)  # identity semantics: the scheduler queues requests per StagedTask object
class StagedTask:
    """One version of one task, ready to be swapped in.

    Built off the owner thread (:func:`stage_task`: the delta plan reads only the backbone's layout).
    The owner completes it on first use with :meth:`complete_on_owner`, because building the task
    model instantiates a transformers class, which briefly changes torch's process-wide default
    dtype and would leak into a forward pass running in another thread.
    """

    task: str
    version: int
    labels: list[str]
    info: ken.SubnetworkInfo
    head: dict[str, torch.Tensor]
    plan: ken.DeltaPlan
    nbytes: int  # device bytes: positions, values (originals too where kept) and head
    model: PreTrainedModel | None = None

    def complete_on_owner(self, backbone: ResidentBackbone) -> None:
        """Build the task model; owner thread only."""
        if self.model is None:
            self.model = ken.attach_head(backbone.model, self.info, self.head)


def stage_task(task: str, version: int, subnetwork: ken.Subnetwork, backbone: ResidentBackbone) -> StagedTask:
    """Stage a parsed subnetwork (any thread): plan its delta on the backbone's device."""
    plan = ken.DeltaPlan(subnetwork, backbone.flat)
    # Fresh (allocator-aligned) copies: a parsed file's tensors sit wherever its bytes landed, and
    # CPU matmul kernels may round differently at the last bit depending on alignment.
    head = {name: tensor.to(dtype=backbone.dtype, copy=True) for name, tensor in subnetwork.head.items()}
    nbytes = plan.nbytes + sum(t.numel() * t.element_size() for t in head.values())
    if backbone.swapper.keep_originals:  # kept with the plan after its first apply
        nbytes += plan.nnz * plan.values.element_size()
    return StagedTask(
        task=task,
        version=version,
        labels=task_labels(subnetwork.info),
        info=subnetwork.info,
        head=head,
        plan=plan,
        nbytes=nbytes,
    )
