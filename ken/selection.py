"""The KEN selection rule: which entries of each row a subnetwork keeps (the rule: docs/selection.md).

Per row: a Gaussian KDE (Silverman bandwidth) is evaluated on ``k`` evenly spaced grid points;
the grid points, visited by rounded density (highest first), each claim the nearest unclaimed
entry; every entry whose value equals a claimed value is kept.

Tensors on the CPU go through compiled per-row kernels (:mod:`ken.selection_compiled`, rows in
parallel); tensors on an accelerator through the torch implementation vectorised across rows
(:mod:`ken.selection_torch`). Both select exactly what the rule selects.
"""

from __future__ import annotations

import numpy as np
import torch

from ken import selection_compiled, selection_torch
from ken.selection_bandwidth import bandwidth


def kept_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the entries KEN keeps in ``values``, row by row.

    A 1-D tensor is one row; a 2-D tensor is processed per row; more dimensions are viewed as
    ``[shape[0], -1]``. Returns a bool tensor of the same shape on the same device.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not values.is_floating_point():
        raise TypeError(f"KEN selects among floating-point values, got dtype {values.dtype}")
    shape = values.shape
    rows = values.reshape(1, -1) if values.dim() <= 1 else values.reshape(shape[0], -1)
    return kept_mask_rows(rows, k).reshape(shape)


def kept_mask_rows(rows: torch.Tensor, k: int, *, implementation: str | None = None) -> torch.Tensor:
    """:func:`kept_mask` for a 2-D ``[rows, n]`` tensor (every row the same length).

    ``implementation``: ``"compiled"`` (CPU tensors only) or ``"torch"``; by default the compiled
    kernels for CPU tensors and torch elsewhere. The benchmark times one against the other.
    """
    if implementation not in (None, "compiled", "torch"):
        raise ValueError(f"unknown implementation {implementation!r}; choose compiled or torch")
    if rows.dim() != 2:
        raise ValueError(f"expected a 2-D [rows, n] tensor, got shape {tuple(rows.shape)}")
    count, n = rows.shape
    if count == 0 or n == 0 or k >= n:
        return torch.ones(count, n, dtype=torch.bool, device=rows.device)
    rows = rows.detach()
    if implementation == "compiled" and rows.device.type != "cpu":
        raise ValueError(f"the compiled kernels run on the CPU; the rows are on {rows.device}")
    if implementation == "torch" or rows.device.type != "cpu":
        if not bool(torch.isfinite(rows).all()):
            raise _not_finite()
        return selection_torch.kept_mask_rows(rows, k)
    values = np.ascontiguousarray(rows.to(torch.float64).numpy())
    if not np.isfinite(values).all():
        raise _not_finite()
    h = bandwidth(rows.to(torch.float32).numpy())
    mask = np.empty((count, n), dtype=np.bool_)
    selection_compiled.kept_rows(values, h, k, mask)
    return torch.from_numpy(mask)


def _not_finite() -> ValueError:
    return ValueError("KEN needs finite values: the tensor holds NaN or Inf")
