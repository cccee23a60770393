"""The KEN rule vectorised across rows in torch: the path for tensors on an accelerator.

Per row: a Gaussian KDE (Silverman bandwidth) is evaluated on ``k`` evenly spaced grid points;
the grid points, visited by rounded density (highest first), each claim the nearest unclaimed
entry; every entry whose value equals a claimed value is kept (the rule: docs/selection.md).

The density is a brute-force ``[rows, k, n]`` reduction. The greedy claim runs ``k`` steps over
all rows at once on the sorted row values. "Nearest unclaimed entry to the right/left of a
position" is a union-find over sorted positions with path halving, so one step costs a few
gathers and scatters over ``[rows]`` tensors. On a CPU the compiled per-row kernels
(:mod:`ken.selection_compiled`) are several times faster; this is also the baseline that
``bench/bench_extraction.py`` measures them against.
"""

from __future__ import annotations

import math

import torch

from ken.selection_bandwidth import bandwidth

_SQRT_2PI = math.sqrt(2.0 * math.pi)
#: Elements of the ``[rows, k, n]`` density buffer evaluated at once.
DENSITY_CHUNK_ELEMENTS = 1 << 20
#: Elements of the ``[rows, n]`` working arrays of the greedy claim held at once.
CLAIM_CHUNK_ELEMENTS = 1 << 21


def kept_mask_rows(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The kept mask of a finite 2-D ``[rows, n]`` tensor with ``0 < k < n``, on its own device."""
    count, n = rows.shape
    mask = torch.empty(count, n, dtype=torch.bool, device=rows.device)
    per_chunk = max(1, CLAIM_CHUNK_ELEMENTS // n)
    for start in range(0, count, per_chunk):
        stop = min(count, start + per_chunk)
        mask[start:stop] = _kept_chunk(rows[start:stop], k)
    return mask


def grid_points(low: torch.Tensor, high: torch.Tensor, k: int) -> torch.Tensor:
    """``numpy.linspace(low, high, k)`` per row in float64, with NumPy's exact arithmetic."""
    if k == 1:
        return low[:, None].clone()
    steps = torch.arange(k, dtype=torch.float64, device=low.device)
    step = (high - low) / (k - 1)
    grid = steps[None, :] * step[:, None] + low[:, None]
    grid[:, -1] = high
    return grid


def density_levels(x: torch.Tensor, grid: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``round(f(g))`` (half to even) of the Gaussian KDE of each row at its grid points, float64."""
    count, n = x.shape
    k = grid.shape[1]
    levels = torch.empty(count, k, dtype=torch.float64, device=x.device)
    scale = 1.0 / (n * h * _SQRT_2PI)
    exponent_scale = -0.5 / (h * h)
    per_chunk = max(1, DENSITY_CHUNK_ELEMENTS // (k * n))
    buffer = torch.empty(min(per_chunk, count), k, n, dtype=torch.float64, device=x.device)
    for start in range(0, count, per_chunk):
        stop = min(count, start + per_chunk)
        work = buffer[: stop - start]
        torch.sub(grid[start:stop, :, None], x[start:stop, None, :], out=work)
        work.square_().mul_(exponent_scale[start:stop, None, None]).exp_()
        torch.sum(work, dim=2, out=levels[start:stop])
    levels.mul_(scale[:, None]).round_()
    return levels


def _kept_chunk(rows: torch.Tensor, k: int) -> torch.Tensor:
    count, n = rows.shape
    device = rows.device
    h = torch.from_numpy(bandwidth(rows.to(device="cpu", dtype=torch.float32).numpy())).to(device)
    x = rows.detach().to(torch.float64)
    keep_all = ~torch.isfinite(h) | (h == 0)
    h = torch.where(keep_all, torch.ones_like(h), h)

    grid = grid_points(x.min(dim=1).values, x.max(dim=1).values, k)
    levels = density_levels(x, grid, h)
    order = torch.sort(-levels, dim=1, stable=True).indices

    sorted_x, original_index = torch.sort(x, dim=1, stable=True)
    positions = torch.searchsorted(sorted_x, grid)
    visit_value = grid.gather(1, order)
    visit_position = positions.gather(1, order)
    group_start = torch.searchsorted(sorted_x, sorted_x)

    claimed = _greedy_claim(sorted_x, original_index, group_start, visit_value, visit_position)
    kept_sorted = claimed.gather(1, group_start)
    mask = torch.empty(count, n, dtype=torch.bool, device=device)
    mask.scatter_(1, original_index, kept_sorted)
    mask[keep_all] = True
    return mask


def _find(pointer: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Follow the flat ``pointer`` array from ``start`` to a fixed point, halving paths on the way."""
    current = start
    while True:
        parent = pointer.index_select(0, current)
        if bool(torch.equal(parent, current)):
            return current
        grandparent = pointer.index_select(0, parent)
        pointer.index_put_((current,), grandparent)
        current = grandparent


class _SortedRows:
    """Flat views of the sorted rows and their equal-value groups, indexed by row position."""

    def __init__(
        self, sorted_x: torch.Tensor, original_index: torch.Tensor, group_start: torch.Tensor, value_base: torch.Tensor
    ) -> None:
        n = sorted_x.shape[1]
        group_end = torch.searchsorted(sorted_x, sorted_x, right=True) - 1
        inf = torch.full_like(sorted_x[:, :1], math.inf)
        after = torch.cat([sorted_x, inf], dim=1).gather(1, group_end + 1)
        before = torch.cat([-inf, sorted_x], dim=1).gather(1, group_start)
        self.n = n
        self.value_base = value_base
        self.x = sorted_x.reshape(-1)
        self.index = original_index.reshape(-1)
        self.group_start = group_start.reshape(-1)
        self.group_end = group_end.reshape(-1)
        self.next_distinct = after.reshape(-1)
        self.prev_distinct = before.reshape(-1)

    def take(self, array: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return array.index_select(0, self.value_base + position)


def _lowest_index_at_distance(
    rows: _SortedRows,
    next_free: torch.Tensor,
    prev_free: torch.Tensor,
    base: torch.Tensor,
    g: torch.Tensor,
    candidate: torch.Tensor,
    distance: torch.Tensor,
    valid: torch.Tensor,
    *,
    toward_right: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The free entry with the lowest original index among those at ``distance`` on one side.

    Distances are monotone along the sorted row, but two distinct values can round to the same
    float64 distance from a grid point; the rule then takes the lowest index, which may sit in a
    farther group. Such ties need values within an ulp of the distance of each other, so the
    check against the next distinct value almost always ends the search at once.
    """
    index = rows.take(rows.index, candidate)
    if toward_right:
        tied = valid & (rows.take(rows.next_distinct, candidate) - g == distance)
    else:
        tied = valid & (g - rows.take(rows.prev_distinct, candidate) == distance)
    current = candidate
    while bool(tied.any()):
        if toward_right:
            following = _find(next_free, base + rows.take(rows.group_end, current) + 1) - base
            exists = following < rows.n
            following = following.clamp_max(rows.n - 1)
            gap = rows.take(rows.x, following) - g
        else:
            preceding = _find(prev_free, base + rows.take(rows.group_start, current)) - base - 1
            exists = preceding >= 0
            preceding = _find(next_free, base + rows.take(rows.group_start, preceding.clamp_min(0))) - base
            following = preceding
            gap = g - rows.take(rows.x, following)
        tied = tied & exists & (gap == distance)
        following_index = rows.take(rows.index, following)
        better = tied & (following_index < index)
        candidate = torch.where(better, following, candidate)
        index = torch.where(better, following_index, index)
        current = torch.where(tied, following, current)
    return candidate, index


def _greedy_claim(
    sorted_x: torch.Tensor,
    original_index: torch.Tensor,
    group_start: torch.Tensor,
    visit_value: torch.Tensor,
    visit_position: torch.Tensor,
) -> torch.Tensor:
    """Run the greedy claim; returns which sorted positions were claimed (``[rows, n]`` bool).

    Within a group of equal values (sorted by original index) the rule always claims the lowest
    unclaimed original index, so claimed members form a prefix of the group. Hence the right
    candidate (first free at or after the grid point's insertion position, a group start) and the
    left candidate (first free member of the group holding the last free position before it) are
    both their group's lowest free index, which is what the tie-break compares.

    Every row owns ``n + 2`` slots of flat arrays: slot ``s`` of ``next_free`` is position ``s``
    (slot ``n`` a free sentinel), slot ``s`` of ``prev_free`` is position ``s - 1`` (slot 0 a free
    sentinel), and slot ``n + 1`` absorbs the writes of rows with nothing left to claim. Pointers
    hold flat slot numbers, so a find is a chain of 1-D ``index_select`` calls.
    """
    count, n = sorted_x.shape
    device = sorted_x.device
    width = n + 2
    base = torch.arange(count, device=device) * width
    value_base = torch.arange(count, device=device) * n
    next_free = torch.arange(count * width, device=device)
    prev_free = torch.arange(count * width, device=device)
    claimed = torch.zeros(count * width, dtype=torch.bool, device=device)
    rows = _SortedRows(sorted_x, original_index, group_start, value_base)
    idle_slot = base + n + 1

    for step in range(visit_value.shape[1]):
        g = visit_value[:, step]
        p = visit_position[:, step]
        right = _find(next_free, base + p) - base
        left = _find(prev_free, base + p) - base - 1
        has_right = right < n
        has_left = left >= 0
        left = _find(next_free, base + rows.take(rows.group_start, left.clamp_min(0))) - base
        right = right.clamp_max(n - 1)

        right_distance = torch.where(has_right, rows.take(rows.x, right) - g, math.inf)
        left_distance = torch.where(has_left, g - rows.take(rows.x, left), math.inf)
        right, right_index = _lowest_index_at_distance(
            rows, next_free, prev_free, base, g, right, right_distance, has_right, toward_right=True
        )
        left, left_index = _lowest_index_at_distance(
            rows, next_free, prev_free, base, g, left, left_distance, has_left, toward_right=False
        )
        take_left = (left_distance < right_distance) | ((left_distance == right_distance) & (left_index < right_index))
        target = base + torch.where(take_left, left, right)
        target = torch.where(has_left | has_right, target, idle_slot)

        idle = target == idle_slot
        claimed[target] = True
        next_free.index_put_((target,), torch.where(idle, idle_slot, target + 1))
        prev_free.index_put_((torch.where(idle, idle_slot, target + 1),), torch.where(idle, idle_slot, target))
    return claimed.reshape(count, width)[:, :n]
