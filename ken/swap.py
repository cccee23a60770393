"""In-place apply and revert of subnetworks on a live backbone.

The backbone's floating tensors are re-homed as views into one flat buffer
(:class:`FlatParameters`), so a task's delta is a list of flat positions and values
(:class:`DeltaPlan`) whatever the number of tensors it touches. A :class:`Swapper` writes one plan
at a time into the buffer. Before writing an entry it saves the value it overwrites in its own
scratch buffer, and a revert copies those saved values back: it never subtracts, so the backbone
returns bit for bit, and a task costs only its positions and values (8 bytes per entry for float32
weights) rather than a saved copy of its originals too.

A pass costs about one dense copy of the weights: a KEN subnetwork touches most cache lines (and
GPU sectors) of the weights, and on the CPU torch's index kernels spend ~1.3 ns per entry. The
swapper walks the buffer in chunks; going straight from task A to task B
(:meth:`Swapper.switch`) restores A's entries and writes B's chunk by chunk, so B's pass finds the
chunk's lines cached. On a GPU the passes run as fused Triton kernels (:mod:`ken.gpu_kernels`)
when Triton is there. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ken import gpu_kernels
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
        self.chunk_elements = chunk_elements_for(self.device)

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


#: Chunk of the flat buffer that one step of a pass covers. On the CPU 4 MB of float32: it stays in
#: the cache between the steps of a fused switch, and leaves few enough chunks that the per-step
#: overhead is small (measured in bench/bench_swap.py). On a GPU, launches cost more than bytes:
#: chunks there are large, just bounding the int64 position scratch (8 bytes per entry of a chunk).
CPU_CHUNK_ELEMENTS = 1 << 20
GPU_CHUNK_ELEMENTS = 1 << 26
_INT32_MAX = 2**31 - 1


def chunk_elements_for(device: torch.device) -> int:
    return CPU_CHUNK_ELEMENTS if device.type == "cpu" else GPU_CHUNK_ELEMENTS


class DeltaPlan:
    """A subnetwork's entries as sorted flat positions and values on the backbone's device and dtype.

    Positions are int32 whenever the buffer allows (half the bytes of int64; kernels get int64 one
    chunk at a time). Built from the backbone's layout alone, without reading or writing its
    values, so it can be prepared on any thread while another task is applied.
    """

    def __init__(self, subnetwork: Subnetwork, flat: FlatParameters) -> None:
        flat.check_compatible(subnetwork)
        names = sorted(subnetwork.deltas, key=lambda n: flat.layout[n].offset)
        index_dtype = torch.int32 if flat.buffer.numel() <= _INT32_MAX else torch.int64
        positions = [(subnetwork.deltas[n].flat_indices() + flat.layout[n].offset).to(index_dtype) for n in names]
        values = [subnetwork.deltas[n].values.to(flat.dtype) for n in names]
        host_positions = torch.cat(positions) if positions else torch.zeros(0, dtype=index_dtype)
        edges = torch.arange(0, flat.buffer.numel() + flat.chunk_elements, flat.chunk_elements, dtype=torch.int64)
        edges = edges.clamp_(max=flat.buffer.numel()).to(index_dtype)
        #: entry offsets where each chunk of the buffer starts (one more than the chunks: the end)
        self.chunk_edges: list[int] = torch.searchsorted(host_positions, edges).tolist()
        self.positions = host_positions.to(flat.device)
        self.values = (torch.cat(values) if values else torch.zeros(0, dtype=flat.dtype)).to(flat.device)
        #: the backbone's values at the positions, kept by a ``Swapper(keep_originals=True)`` after the
        #: plan's first apply (saved then from the pristine backbone); None otherwise
        self.originals: torch.Tensor | None = None

    @property
    def nnz(self) -> int:
        return self.positions.numel()

    @property
    def nbytes(self) -> int:
        """Device bytes of the plan: its positions and values (and originals, once kept)."""
        tensors = [self.positions, self.values] + ([self.originals] if self.originals is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class Swapper:
    """Writes one :class:`DeltaPlan` at a time into a :class:`FlatParameters` and takes it out again.

    It keeps the values each plan overwrote in two scratch buffers of its own (one for the applied
    plan, one for the next while a switch runs), grown to the largest plan seen. It tracks how far
    every pass got, so after an exception at any point :meth:`revert` restores exactly the entries
    that were written, and writes only saved original values (reverting twice is harmless).
    Not thread-safe: one thread (the backbone's owner) drives it.

    ``keep_originals=True`` trades memory for speed: after a plan's first apply its originals stay
    with the plan (4 more bytes per entry for float32), so later applies write without saving
    first, one kernel less per pass.
    """

    def __init__(
        self, flat: FlatParameters, *, fused_kernels: bool | None = None, keep_originals: bool = False
    ) -> None:
        """``fused_kernels``: use :mod:`ken.gpu_kernels` (default: when Triton and a CUDA device are there)."""
        self.flat = flat
        self.keep_originals = keep_originals
        self._fused = gpu_kernels.available(flat.device) if fused_kernels is None else fused_kernels
        self._scratch = [torch.zeros(0, dtype=flat.dtype, device=flat.device) for _ in range(2)]
        self._saved_values = self._scratch[0]  # where the applied plan's originals are (a scratch, or its own)
        self._index = torch.zeros(0, dtype=torch.int64, device=flat.device)
        self._applied: DeltaPlan | None = None
        self._saved = 0  # entries of the applied plan whose originals are saved (a prefix)
        self._leftover: tuple[DeltaPlan, torch.Tensor, int] | None = None  # a switch's source, restored up to an entry
        self._interrupted = False  # a pass raised before it completed: the next switch reverts first

    @property
    def applied(self) -> DeltaPlan | None:
        """The plan whose entries are (or may partly be) written into the buffer; None when pristine."""
        return self._applied

    @property
    def fused_kernels(self) -> bool:
        """Whether the passes run as fused GPU kernels (:mod:`ken.gpu_kernels`) rather than torch ops."""
        return self._fused

    @property
    def pristine(self) -> bool:
        return self._applied is None and self._leftover is None

    @property
    def originals(self) -> torch.Tensor:
        """The saved original values of the applied plan's entries, in the plan's order."""
        return self._saved_values[: self._saved]

    @property
    def scratch_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self._scratch, self._index))

    def apply(self, plan: DeltaPlan) -> None:
        """Write ``plan`` into the pristine buffer."""
        if not self.pristine:
            raise KenError("another delta is applied: revert it first, or use switch()")
        self.switch(plan)

    def revert(self) -> None:
        """Restore every entry written so far; the buffer is pristine afterwards."""
        leftover, applied, saved = self._leftover, self._applied, self._saved
        if leftover is not None:
            plan, originals, restored = leftover
            self._restore(plan, originals, restored, plan.nnz)
            self._leftover = None
        if applied is not None:
            self._restore(applied, self._saved_values, 0, saved)
            self._applied, self._saved = None, 0
        self._interrupted = False

    def switch(self, plan: DeltaPlan | None) -> None:
        """Go from the applied plan (if any) to ``plan`` (None: pristine) in one pass over the buffer."""
        if plan is self._applied and not self._interrupted:
            return
        if plan is None or self._interrupted:
            self.revert()  # an earlier pass failed half way: finish restoring first
            if plan is None:
                return
        source, source_originals = self._applied, self._saved_values
        stored = plan.originals is not None
        target_originals = plan.originals if plan.originals is not None else self._scratch_for(plan, source_originals)
        if source is not None:
            self._leftover = (source, source_originals, 0)
        self._applied, self._saved, self._saved_values = plan, 0, target_originals
        self._interrupted = True  # until the pass completes
        for chunk in range(len(plan.chunk_edges) - 1):
            if source is not None:
                end = source.chunk_edges[chunk + 1]
                self._restore(source, source_originals, source.chunk_edges[chunk], end)
                self._leftover = (source, source_originals, end)
            start, end = plan.chunk_edges[chunk], plan.chunk_edges[chunk + 1]
            if end > start:
                self._exchange(plan, target_originals, start, end, save=not stored)
        self._leftover, self._interrupted = None, False
        if self.keep_originals and not stored:
            plan.originals = target_originals[: plan.nnz].clone()

    def _scratch_for(self, plan: DeltaPlan, busy: torch.Tensor) -> torch.Tensor:
        """A scratch buffer for the plan's originals, not the one ``busy`` (the source's) is in."""
        slot = 1 if self._scratch[0] is busy else 0
        if self._scratch[slot].numel() < plan.nnz:
            self._scratch[slot] = torch.empty(plan.nnz, dtype=self.flat.dtype, device=self.flat.device)
        return self._scratch[slot]

    def _restore(self, plan: DeltaPlan, originals: torch.Tensor, start: int, end: int) -> None:
        """Write the saved originals of the plan's entries ``start:end`` back."""
        if end <= start:
            return
        if self._fused:
            gpu_kernels.scatter(self.flat.buffer, plan.positions[start:end], originals[start:end])
        else:
            self._put(self._positions(plan, start, end), originals[start:end])

    def _exchange(self, plan: DeltaPlan, saved: torch.Tensor, start: int, end: int, *, save: bool) -> None:
        """Save the values at the plan's entries ``start:end`` (unless ``save`` is False: the plan keeps
        its originals), then write the plan's values there.

        ``_saved`` advances only once the originals are saved, so a revert never writes unsaved ones."""
        if self._fused:
            positions, values = plan.positions[start:end], plan.values[start:end]
            if save:
                gpu_kernels.exchange(self.flat.buffer, positions, values, saved[start:end])
            else:
                gpu_kernels.scatter(self.flat.buffer, positions, values)
            self._saved = end
            return
        index = self._positions(plan, start, end)
        if save:
            torch.take(self.flat.buffer, index, out=saved[start:end])
        self._saved = end
        self._put(index, plan.values[start:end])

    def _positions(self, plan: DeltaPlan, start: int, end: int) -> torch.Tensor:
        """The plan's positions ``start:end`` as int64, without a new allocation.

        ``take``/``put_`` on int64 beat ``index_select``/``index_put_`` on the int32 positions by
        ~30 % on the CPU and were no slower on an H100, conversion included."""
        positions = plan.positions[start:end]
        if positions.dtype == torch.int64:
            return positions
        if self._index.numel() < end - start:
            self._index = torch.empty(end - start, dtype=torch.int64, device=self.flat.device)
        index = self._index[: end - start]
        index.copy_(positions)
        return index

    def _put(self, index: torch.Tensor, values: torch.Tensor) -> None:
        """Every write to the buffer goes through here."""
        self.flat.buffer.put_(index, values)
