"""Fused GPU kernels for the swapper's passes, in Triton (which ships with PyTorch's CUDA builds).

With plain torch ops a pass on a GPU is several kernels, each streaming the positions again:
int32 -> int64, a gather of the originals, a scatter of the values. A KEN subnetwork's entries
touch most 32-byte sectors of the weights, so every extra kernel re-reads them. These kernels read
each position once, as int32, and save the original and write the value in the same thread:

* :func:`scatter` writes values at positions (a revert writing saved originals back, or an apply of
  a plan that keeps its originals);
* :func:`exchange` saves the value at each position, then writes the new one (an apply).

Used by :class:`ken.Swapper` only when Triton imports and the weights live on a CUDA device;
everything else takes the torch path, so the CPU build needs no Triton.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of PyTorch come without Triton
    triton = None

BLOCK = 1024


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


if triton is not None:

    @triton.jit
    def _scatter_kernel(buffer, positions, values, count, block: tl.constexpr):
        offsets = tl.program_id(0) * block + tl.arange(0, block)
        inside = offsets < count
        where = tl.load(positions + offsets, mask=inside)
        tl.store(buffer + where, tl.load(values + offsets, mask=inside), mask=inside)

    @triton.jit
    def _exchange_kernel(buffer, positions, values, saved, count, block: tl.constexpr):
        offsets = tl.program_id(0) * block + tl.arange(0, block)
        inside = offsets < count
        where = tl.load(positions + offsets, mask=inside)
        tl.store(saved + offsets, tl.load(buffer + where, mask=inside), mask=inside)
        tl.store(buffer + where, tl.load(values + offsets, mask=inside), mask=inside)


def _grid(count: int) -> tuple[int]:
    return ((count + BLOCK - 1) // BLOCK,)


def scatter(buffer: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> None:
    """``buffer[positions] = values`` (positions distinct)."""
    count = positions.numel()
    if count:
        _scatter_kernel[_grid(count)](buffer, positions, values, count, block=BLOCK)


def exchange(buffer: torch.Tensor, positions: torch.Tensor, values: torch.Tensor, saved: torch.Tensor) -> None:
    """``saved = buffer[positions]; buffer[positions] = values`` (positions distinct)."""
    count = positions.numel()
    if count:
        _exchange_kernel[_grid(count)](buffer, positions, values, saved, count, block=BLOCK)
