"""A slow, obviously-correct, per-row implementation of the KEN rule, step by step (docs/selection.md, "The rule")."""

from __future__ import annotations

import math

import numpy as np


def reference_bandwidth(row: np.ndarray) -> float:
    std = float(np.std(row.astype(np.float32)))  # population std, in float32
    return abs(1.06 * std * len(row) ** (-1 / 5))


def reference_density(x: np.ndarray, grid: np.ndarray, h: float) -> np.ndarray:
    """The Gaussian KDE of the float64 row ``x`` at each grid point (before rounding to levels)."""
    n = len(x)
    return (1 / (n * h * math.sqrt(2 * math.pi))) * np.exp(-0.5 * ((grid[:, None] - x[None, :]) / h) ** 2).sum(1)


def reference_kept_row(row: np.ndarray, k: int) -> np.ndarray:
    n = len(row)
    x = row.astype(np.float64)
    h = reference_bandwidth(row)
    if k >= n or h == 0 or not math.isfinite(h):
        return np.ones(n, dtype=bool)
    grid = np.linspace(x.min(), x.max(), k)
    levels = [round(float(d)) for d in reference_density(x, grid, h)]
    order = sorted(range(k), key=lambda i: (-levels[i], i))
    free = list(range(n))
    claimed: list[int] = []
    for i in order:
        if not free:
            break
        j = min(free, key=lambda j: (abs(x[j] - grid[i]), j))
        free.remove(j)
        claimed.append(j)
    values = {x[j] for j in claimed}
    return np.array([v in values for v in x])


def reference_kept(matrix: np.ndarray, k: int) -> np.ndarray:
    rows = matrix.reshape(1, -1) if matrix.ndim <= 1 else matrix.reshape(matrix.shape[0], -1)
    return np.stack([reference_kept_row(r, k) for r in rows]).reshape(matrix.shape)
