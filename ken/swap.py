"""In-place apply and revert of subnetworks on a live backbone.

The backbone's floating tensors are re-homed as views into one flat buffer
(:class:`FlatParameters`), so a task's whole delta is one ``scatter_`` (a single kernel)
and its revert another, whatever the number of tensors it touches. Revert copies the saved
original values back; it never subtracts, so the backbone returns bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ken.backbone import floating_state
from ken.errors import KenError
from ken.subnetwork import Subnetwork


@dataclass(frozen=True)
class Slot:
    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


#: Each tensor starts on this byte boundary inside the flat buffer, as a separately allocated tensor
#: would: CPU kernels pick different vectorisation paths for misaligned data, and the last bits of
#: a matmul would then depend on where a weight sits.
ALIGN_BYTES = 64


class FlatParameters:
    """Owns a module's floating parameters and buffers as views into one contiguous buffer."""

    def __init__(self, module: nn.Module) -> None:
        state = floating_state(module.state_dict(keep_vars=True))
        if not state:
            raise KenError("the module has no floating-point tensors to manage")
        dtypes = {t.dtype for t in state.values()}
        devices = {t.device for t in state.values()}
        if len(dtypes) != 1 or len(devices) != 1:
            raise KenError(f"all backbone tensors must share one dtype and device, got {dtypes} on {devices}")
        self.dtype = dtypes.pop()
        self.device = devices.pop()
        align = max(1, ALIGN_BYTES // torch.empty(0, dtype=self.dtype).element_size())
        offsets, total = [], 0
        for tensor in state.values():
            offsets.append(total)
            total += -(-tensor.numel() // align) * align
        self.buffer = torch.zeros(total + align, dtype=self.dtype, device=self.device)
        shift = (-(self.buffer.data_ptr() // self.buffer.element_size())) % align
        self.layout: dict[str, Slot] = {}
        for (name, tensor), offset in zip(state.items(), offsets, strict=True):
            start = shift + offset
            view = self.buffer[start : start + tensor.numel()].view(tensor.shape)
            view.copy_(tensor.detach())
            _rehome(module, name, tensor, view)
            self.layout[name] = Slot(start, tuple(tensor.shape))

    @property
    def numel(self) -> int:
        """Entries of the tensors it owns (the buffer itself also holds alignment padding)."""
        return sum(slot.numel for slot in self.layout.values())

    def check_compatible(self, subnetwork: Subnetwork) -> None:
        """Raise :class:`KenError` unless every delta names a tensor of this backbone with its shape."""
        for name, delta in subnetwork.deltas.items():
            slot = self.layout.get(name)
            if slot is None:
                raise KenError(f"delta {name!r}: the backbone has no floating tensor of that name")
            if slot.shape != delta.shape:
                raise KenError(f"delta {name!r}: shape {list(delta.shape)} but the backbone's is {list(slot.shape)}")


def _rehome(module: nn.Module, name: str, tensor: torch.Tensor, view: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if isinstance(tensor, nn.Parameter):
        tensor.data = view
    else:
        owner._buffers[attr] = view


class DeltaPlan:
    """A subnetwork's entries as flat positions and values on the backbone's device and dtype.

    Built without touching the backbone's values (only its layout), so it can be prepared while
    another task's delta is applied.
    """

    def __init__(self, subnetwork: Subnetwork, flat: FlatParameters) -> None:
        flat.check_compatible(subnetwork)
        names = sorted(subnetwork.deltas, key=lambda n: flat.layout[n].offset)
        positions = [subnetwork.deltas[n].flat_indices() + flat.layout[n].offset for n in names]
        values = [subnetwork.deltas[n].values for n in names]
        self.indices = (torch.cat(positions) if positions else torch.zeros(0, dtype=torch.int64)).to(flat.device)
        self.values = (
            torch.cat([v.to(flat.dtype) for v in values]) if values else torch.zeros(0, dtype=flat.dtype)
        ).to(flat.device)

    @property
    def nnz(self) -> int:
        return self.indices.numel()


class PreparedDelta:
    """A :class:`DeltaPlan` plus the backbone's original values at its positions.

    Capture the originals only while the backbone is pristine (no delta applied).
    """

    def __init__(self, plan: DeltaPlan, flat: FlatParameters) -> None:
        self.indices = plan.indices
        self.values = plan.values
        self.originals = flat.buffer.gather(0, plan.indices)

    @classmethod
    def prepare(cls, subnetwork: Subnetwork, flat: FlatParameters) -> PreparedDelta:
        return cls(DeltaPlan(subnetwork, flat), flat)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.indices, self.values, self.originals))

    def apply(self, flat: FlatParameters) -> None:
        flat.buffer.scatter_(0, self.indices, self.values)

    def revert(self, flat: FlatParameters) -> None:
        flat.buffer.scatter_(0, self.indices, self.originals)


class Transition:
    """Go straight from task ``source`` (applied) to task ``target``.

    Restores only the entries of ``source`` that ``target`` does not overwrite, then applies
    ``target``: two scatters like revert-then-apply, but fewer bytes written when the two
    subnetworks share entries. Build it once per pair (it costs a sorted-set difference).
    """

    def __init__(self, source: PreparedDelta, target: PreparedDelta) -> None:
        only_source = ~torch.isin(source.indices, target.indices)
        self.restore_indices = source.indices[only_source]
        self.restore_values = source.originals[only_source]
        self.target = target

    def run(self, flat: FlatParameters) -> None:
        flat.buffer.scatter_(0, self.restore_indices, self.restore_values)
        self.target.apply(flat)
