"""The bandwidth step of the KEN rule, shared by the compiled and the torch implementations."""

from __future__ import annotations

import numpy as np


def bandwidth(rows_f32: np.ndarray) -> np.ndarray:
    """Silverman/Scott bandwidth per row of a float32 ``[rows, n]`` array, float64.

    ``|1.06 * std * n ** (-1/5)|`` with NumPy's float32 population ``std`` (the published
    implementation's arithmetic, pairwise summation included), computed on the host whatever
    device the rows live on, so every device gets the same bandwidth bit for bit.
    """
    n = rows_f32.shape[1]
    with np.errstate(over="ignore"):  # squares past float32's range: h = inf, the row is kept whole
        return np.abs(1.06 * np.std(rows_f32, axis=1).astype(np.float64) * n ** (-1 / 5))
