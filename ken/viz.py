"""KEN_viz: the paper's views of a subnetwork, written as PNG files.

"Kept" means *stored* throughout: a subnetwork holds only the entries whose fine-tuned value
differs from the pretrained one, so an entry that KEN selected but that the fine-tune left
unchanged counts as reset (it takes the pretrained value either way).

* :func:`plot_matrix` (view a): one matrix, kept entries coloured, reset entries blank.
* :func:`plot_neighbours` (view b): for each kept entry, how many of its 4 neighbours are kept.
* :func:`plot_across_layers` (view c): one matrix kind across every layer.
* :func:`plot_layer_retention`: kept % per layer, split by matrix kind.
* :func:`render_all`: a default set of the above.

The data behind them are plain functions too: :func:`kept_matrix`, :func:`neighbour_counts` (on a
dense mask), :func:`stored_neighbour_counts` (from the stored entries alone, for big matrices),
:func:`random_neighbour_mean`, :func:`retention_table`. Large matrices are drawn from the stored
entries in blocks, so memory grows with the stored entries and the pixels, not the matrix.

matplotlib is an optional extra (``pip install 'ken-serve[viz]'``). It is imported only inside the
plotting functions, which draw on their own Agg canvas (no pyplot, no global figure state).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ken.errors import KenError
from ken.subnetwork import SparseRows, Subnetwork

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "LAYER_RE",
    "MissingTensor",
    "kept_matrix",
    "layer_index",
    "neighbour_counts",
    "plot_across_layers",
    "plot_layer_retention",
    "plot_matrix",
    "plot_neighbours",
    "random_neighbour_mean",
    "render_all",
    "retention_table",
    "split_name",
    "stored_neighbour_counts",
]

DPI = 120
#: A layer index inside a tensor name: ``encoder.layer.3.``, ``h.3.``, ``layers.3.``, ``block.3.``.
LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
#: Attention key matrices (BERT, Llama/OPT/BART, DistilBERT, T5), preferred by :func:`render_all`.
_KEY_RE = re.compile(r"(?:^|\.)(?:key|k_proj|k_lin|k)\.weight$")
_EMBEDDING_RE = re.compile(r"emb|^wte$|^wpe$|^tok", re.IGNORECASE)
_VALUE_CMAP = "coolwarm"  # its centre is light grey, so a kept value near 0 is not mistaken for blank
_SHARE_CMAP = "viridis"
_NEIGHBOUR_COLOURS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")  # viridis, 5 steps
Block = Literal["share", "mean"]


class MissingTensor(KenError, KeyError):
    """A tensor name the subnetwork does not store; the message lists names it does store.

    A :class:`~ken.errors.KenError` (bad input: the CLI exits 2 with the message) and, as before, a ``KeyError``.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------
# Data: masks, neighbour counts, names, retention
# --------------------------------------------------------------------------------------------


def _delta(subnetwork: Subnetwork, name: str) -> tuple[str, SparseRows]:
    """The stored delta of ``name`` (a backbone name, or the task model's with ``base_prefix``)."""
    prefix = subnetwork.info.base_prefix
    candidates = [name] + ([name[len(prefix) :]] if prefix and name.startswith(prefix) else [])
    for candidate in candidates:
        if candidate in subnetwork.deltas:
            return candidate, subnetwork.deltas[candidate]
    if any(c in subnetwork.info.selected for c in candidates):
        raise MissingTensor(
            f"tensor {name!r} stores no entries: every entry keeps its pretrained value, so there is nothing to show"
        )
    names = list(subnetwork.deltas)
    hint = difflib.get_close_matches(name, names, n=3, cutoff=0.5) or names[:5]
    raise MissingTensor(
        f"tensor {name!r} is not in the subnetwork ({len(names)} tensors store entries); "
        f"did you mean one of: {', '.join(hint) or '(none)'}?"
    )


def kept_matrix(subnetwork: Subnetwork, name: str) -> torch.Tensor:
    """Bool ``[rows, cols]``: which entries of backbone tensor ``name`` take a fine-tuned value.

    "Kept" means stored (fine-tuned value differs from the pretrained one). A 1-D tensor is one
    row; a tensor of more dimensions is viewed as ``[shape[0], -1]``, as in the file.
    """
    _, delta = _delta(subnetwork, name)
    mask = torch.zeros(delta.numel, dtype=torch.bool)
    mask[delta.flat_indices()] = True
    return mask.view(delta.rows, delta.cols)


def neighbour_counts(mask: torch.Tensor) -> torch.Tensor:
    """Int8, same shape as ``mask``: kept neighbours (up/down/left/right, inside) of each kept entry.

    Entries that are not kept get ``-1``. A 1-D mask is one row (left/right neighbours only).
    """
    if mask.dim() > 2:
        raise ValueError(f"neighbour_counts needs a 1-D or 2-D mask, got shape {tuple(mask.shape)}")
    grid = mask.reshape(1, -1) if mask.dim() < 2 else mask
    grid = grid.to(torch.bool)
    rows, cols = grid.shape
    padded = torch.zeros(rows + 2, cols + 2, dtype=torch.int8)
    padded[1:-1, 1:-1] = grid.to(torch.int8)
    counts = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    counts = torch.where(grid, counts, torch.tensor(-1, dtype=torch.int8))
    return counts.reshape(mask.shape)


def layer_index(name: str) -> int | None:
    """The layer number in a tensor name (``encoder.layer.3.…`` → 3), or ``None``."""
    match = LAYER_RE.search(name)
    return int(match.group(1)) if match else None


def split_name(name: str) -> tuple[str, str]:
    """``(group, kind)`` of a tensor name, e.g. ``("layer 3", "attention.self.key")``.

    The group is ``layer N`` for names with a layer index, else the name's first component. The
    kind is the module path (after the layer index, if any) without ``.weight``/``.bias``, so a
    bias joins its weight.
    """
    match = LAYER_RE.search(name)
    if match:
        group, rest = f"layer {match.group(1)}", name[match.end() :]
    else:
        group, rest = name.partition(".")[0], name
    parts = rest.split(".")
    if len(parts) > 1 and parts[-1] in ("weight", "bias"):
        parts = parts[:-1]
    return group, ".".join(parts)


def _group_order(group: str) -> tuple[int, int]:
    """Embeddings first, then layers by number, then the rest (pooler, final norm, ...)."""
    if group.startswith("layer "):
        return 1, int(group.split()[1])
    return (0, 0) if _EMBEDDING_RE.search(group) else (2, 0)


def retention_table(
    subnetwork: Subnetwork, backbone_numels: Mapping[str, int] | None = None
) -> dict[str, dict[str, tuple[int, int]]]:
    """``{group: {kind: (kept entries, all entries)}}``, groups in backbone order, layers by number.

    Without ``backbone_numels`` only tensors that store entries are counted; with it (name → numel
    of every backbone tensor) untouched tensors count as 0 kept.
    """
    numels: dict[str, int] = dict(backbone_numels or {})
    for name, delta in subnetwork.deltas.items():
        numels.setdefault(name, delta.numel)
    table: dict[str, dict[str, list[int]]] = {}
    for name, numel in numels.items():
        group, kind = split_name(name)
        kept = subnetwork.deltas[name].nnz if name in subnetwork.deltas else 0
        cell = table.setdefault(group, {}).setdefault(kind, [0, 0])
        cell[0] += kept
        cell[1] += numel
    ordered = sorted(table, key=_group_order)  # stable: otherwise in backbone order
    return {g: {k: (v[0], v[1]) for k, v in table[g].items()} for g in ordered}


# --------------------------------------------------------------------------------------------
# Images: dense values with NaN for blank, block-downsampled when large
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Image:
    data: np.ndarray  # float, NaN where blank
    stat: str  # "value" (diverging, centred at 0), "share" (0..1) or "count" (0..4)
    factors: tuple[int, int]  # rows, cols of the original matrix per pixel
    shape: tuple[int, int]  # the original matrix


def _check_block(block: str) -> None:
    if block not in ("share", "mean"):
        raise ValueError(f"block must be 'share' or 'mean', got {block!r}")


def _factors(rows: int, cols: int, max_side: int) -> tuple[int, int]:
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    return math.ceil(rows / max_side), math.ceil(cols / max_side)


def _block_ids(delta: SparseRows, factors: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Per stored entry, its block's row-major id in the downsampled image; and that image's shape."""
    fr, fc = factors
    flat = delta.flat_indices()
    rows, cols = flat // delta.cols, flat % delta.cols
    out_shape = (math.ceil(delta.rows / fr), math.ceil(delta.cols / fc))
    return (rows // fr) * out_shape[1] + cols // fc, out_shape


def _block_sizes(delta: SparseRows, factors: tuple[int, int], out_shape: tuple[int, int]) -> torch.Tensor:
    """Entries per block (edge blocks may be partial), ``[R, C]``."""
    heights = (delta.rows - torch.arange(out_shape[0]) * factors[0]).clamp(max=factors[0])
    widths = (delta.cols - torch.arange(out_shape[1]) * factors[1]).clamp(max=factors[1])
    return torch.outer(heights, widths).to(torch.float64)


def _stored_values(delta: SparseRows, base: torch.Tensor | None) -> torch.Tensor:
    """Float64 per stored entry: the fine-tuned value, or its change from ``base``."""
    values = delta.values.to(torch.float64)
    if base is None:
        return values
    if base.numel() != delta.numel:
        raise ValueError(f"base has {base.numel()} entries, the stored tensor {delta.shape} has {delta.numel}")
    return values - base.detach().reshape(-1).to(torch.float64)[delta.flat_indices()]


def _matrix_image(delta: SparseRows, base: torch.Tensor | None, factors: tuple[int, int], stat: str) -> _Image:
    """Per block: the mean kept value (``stat="value"``) or the kept share; NaN where nothing is kept.

    Works from the stored entries alone (memory in the number of stored entries and pixels, not
    in the matrix's size). With ``factors == (1, 1)`` a block is one entry.
    """
    block, out_shape = _block_ids(delta, factors)
    size = out_shape[0] * out_shape[1]
    kept = torch.bincount(block, minlength=size).to(torch.float64).view(out_shape)
    if stat == "share":
        data = kept / _block_sizes(delta, factors, out_shape)
    else:
        sums = torch.bincount(block, weights=_stored_values(delta, base), minlength=size).view(out_shape)
        data = sums / kept.clamp(min=1)
    data = torch.where(kept > 0, data, torch.tensor(float("nan"), dtype=torch.float64))
    return _Image(data.to(torch.float32).numpy(), stat, factors, (delta.rows, delta.cols))


def stored_neighbour_counts(delta: SparseRows) -> torch.Tensor:
    """Int8 per stored entry (in ``flat_indices`` order): how many of its 4 neighbours are stored.

    The same numbers as :func:`neighbour_counts` on :func:`kept_matrix`, from the stored entries
    alone (no dense mask), by searching the sorted flat positions.
    """
    flat = delta.flat_indices()
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.int8)
    cols = delta.cols
    col = flat % cols

    def stored(query: torch.Tensor) -> torch.Tensor:
        pos = torch.searchsorted(flat, query).clamp(max=flat.numel() - 1)
        return flat[pos] == query

    counts = (stored(flat - 1) & (col > 0)).to(torch.int8)
    counts += stored(flat + 1) & (col < cols - 1)
    counts += stored(flat - cols) & (flat >= cols)
    counts += stored(flat + cols)
    return counts


def _neighbour_image(delta: SparseRows, counts: torch.Tensor, factors: tuple[int, int]) -> _Image:
    """Neighbour counts per entry, or per block the most common count among its kept entries."""
    block, out_shape = _block_ids(delta, factors)
    size = out_shape[0] * out_shape[1]
    hist = torch.bincount(block * 5 + counts.to(torch.int64), minlength=size * 5).view(size, 5)
    data = torch.where(hist.sum(dim=1) > 0, hist.argmax(dim=1).to(torch.float32), float("nan"))
    return _Image(data.view(out_shape).numpy(), "count", factors, (delta.rows, delta.cols))


def _value_limit(images: list[_Image]) -> float:
    """Symmetric colour limit: the 99th percentile of |value| (robust to a few outliers)."""
    finite = [np.abs(img.data[~np.isnan(img.data)]) for img in images]
    finite = [f for f in finite if f.size]
    if not finite:
        return 1.0
    limit = float(np.percentile(np.concatenate(finite), 99))
    return limit if limit > 0 else 1.0


def _percent(delta: SparseRows) -> float:
    return 100.0 * delta.nnz / delta.numel if delta.numel else 0.0


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _matplotlib() -> Any:
    """The ``matplotlib`` module, or an ImportError that says how to install it."""
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as exc:
        raise ImportError(
            "ken.viz needs matplotlib, an optional extra: pip install 'ken-serve[viz]' (or pip install matplotlib)"
        ) from exc
    return matplotlib


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` on an Agg canvas to a PNG at ``path`` (parents created) and release it.

    Figures with a layout engine already fit their contents; the others are cropped to them.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    tight = fig.get_layout_engine() is None  # "tight" draws the figure twice
    fig.savefig(
        target, format="png", dpi=DPI, bbox_inches="tight" if tight else None, pad_inches=0.15, facecolor="white"
    )
    fig.clear()
    return target


def _single_figure(image_shape: tuple[int, int]) -> tuple[Figure, Axes, Axes]:
    """A figure whose image axes give each pixel at least one screen pixel, plus a colorbar axes."""
    from matplotlib.figure import Figure

    rows, cols = image_shape
    scale = min(8.0, max(1.0, 640 / max(rows, cols)))
    ax_w, ax_h = max(cols * scale, 480) / DPI, max(rows * scale, 160) / DPI
    left, right, top, bottom = 0.9, 1.6, 0.9, 0.6
    width, height = left + ax_w + right, bottom + ax_h + top
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((left / width, bottom / height, ax_w / width, ax_h / height))
    cax = fig.add_axes(((left + ax_w + 0.15) / width, bottom / height, 0.18 / width, ax_h / height))
    return fig, ax, cax


def _cmap(stat: str) -> Any:
    import matplotlib
    from matplotlib.colors import ListedColormap

    if stat == "count":
        return ListedColormap(_NEIGHBOUR_COLOURS).with_extremes(bad="white")
    return matplotlib.colormaps[_VALUE_CMAP if stat == "value" else _SHARE_CMAP].with_extremes(bad="white")


def _norm(stat: str, limit: float) -> Any:
    from matplotlib.colors import BoundaryNorm, Normalize, TwoSlopeNorm

    if stat == "count":
        return BoundaryNorm(np.arange(-0.5, 5.0, 1.0), 5)
    if stat == "share":
        return Normalize(vmin=0.0, vmax=1.0)
    return TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)


def _show(ax: Axes, image: _Image, limit: float = 1.0, *, small: bool = False) -> Any:
    """Draw ``image`` with axes in the original matrix's row/column numbers."""
    rows, cols = image.shape
    handle = ax.imshow(
        np.ma.masked_invalid(image.data),
        cmap=_cmap(image.stat),
        norm=_norm(image.stat, limit),
        interpolation="nearest",
        aspect="auto",
        extent=(0, cols, rows, 0),
    )
    ax.set_facecolor("white")
    size = 7 if small else 9
    ax.tick_params(labelsize=size)
    fr, fc = image.factors
    if not small:
        ax.set_xlabel("column" + (f" (each pixel: {fc} columns)" if fc > 1 else ""), fontsize=size)
        ax.set_ylabel("row" + (f" (each pixel: {fr} rows)" if fr > 1 else ""), fontsize=size)
    if rows == 1:
        ax.set_yticks([])
        ax.set_ylabel("")
    return handle


def _describe(image: _Image, base_given: bool) -> str:
    fr, fc = image.factors
    what = "change from pretrained" if base_given else "fine-tuned value"
    if image.stat == "share":
        return f"colour: share of kept entries per {fr}×{fc} block; blank: all reset"
    if (fr, fc) != (1, 1):
        return f"colour: mean {what} of the kept entries per {fr}×{fc} block; blank: all reset"
    return f"colour: {what}; blank: reset to pretrained"


def _title(name: str, delta: SparseRows) -> str:
    pct = _percent(delta)
    return (
        f"{name}  {' × '.join(map(str, delta.shape))}\n"
        f"kept {pct:.2f}% ({delta.nnz:,} of {delta.numel:,} entries), reset {100 - pct:.2f}%"
    )


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------


def plot_matrix(
    subnetwork: Subnetwork,
    name: str,
    path: str | Path,
    *,
    base: torch.Tensor | None = None,
    max_side: int = 512,
    block: Block = "share",
) -> Path:
    """View (a): matrix ``name`` with kept entries coloured and reset entries blank, as a PNG.

    Colour is the stored fine-tuned value (diverging colormap centred at 0), or the change from
    the pretrained tensor when ``base`` is given. Matrices with a side over ``max_side`` are shown
    in blocks: the block's kept share (``block="share"``) or mean kept value (``"mean"``).
    """
    _matplotlib()
    _check_block(block)
    name, delta = _delta(subnetwork, name)
    factors = _factors(delta.rows, delta.cols, max_side)
    stat = "share" if factors != (1, 1) and block == "share" else "value"
    image = _matrix_image(delta, base, factors, stat)
    fig, ax, cax = _single_figure(image.data.shape)
    handle = _show(ax, image, _value_limit([image]))
    bar = fig.colorbar(handle, cax=cax)
    bar.ax.tick_params(labelsize=8)
    if stat == "share":
        bar.set_label("kept share", fontsize=9)
    else:
        bar.set_label("change from pretrained" if base is not None else "fine-tuned value", fontsize=9)
    ax.set_title(_title(name, delta) + "\n" + _describe(image, base is not None), fontsize=10)
    return _save(fig, path)


def plot_neighbours(subnetwork: Subnetwork, name: str, path: str | Path, *, max_side: int = 512) -> Path:
    """View (b): each kept entry of ``name`` coloured by how many of its 4 neighbours are kept.

    Reset entries are blank. Large matrices show, per block, the most common count among the
    block's kept entries. The colorbar gives each count's share of the kept entries, and the
    title compares the mean count with what kept entries placed at random would have.
    """
    _matplotlib()
    name, delta = _delta(subnetwork, name)
    kept_counts = stored_neighbour_counts(delta)
    hist = torch.bincount(kept_counts.to(torch.int64), minlength=5)
    image = _neighbour_image(delta, kept_counts, _factors(delta.rows, delta.cols, max_side))
    fig, ax, cax = _single_figure(image.data.shape)
    handle = _show(ax, image)
    bar = fig.colorbar(handle, cax=cax, ticks=range(5))
    shares = (100.0 * hist / max(1, int(hist.sum()))).tolist()
    bar.ax.set_yticklabels([f"{c}  ({shares[c]:.1f}%)" for c in range(5)], fontsize=8)
    bar.set_label("kept neighbours (of 4)", fontsize=9)
    mean = float(kept_counts.float().mean()) if kept_counts.numel() else 0.0
    fr, fc = image.factors
    how = f"\neach pixel: the most common count among a {fr}×{fc} block's kept entries" if (fr, fc) != (1, 1) else ""
    ax.set_title(
        f"{_title(name, delta)}\nkept neighbours per kept entry: mean {mean:.2f} "
        f"(same kept count per row, placed at random: {random_neighbour_mean(delta):.2f}){how}",
        fontsize=10,
    )
    return _save(fig, path)


def random_neighbour_mean(delta: SparseRows) -> float:
    """Expected mean kept-neighbour count if each row kept as many entries, at random columns.

    The yardstick for :func:`plot_neighbours`: a clearly higher mean means kept entries cluster.
    """
    if delta.nnz == 0:
        return 0.0
    per_row = (delta.indptr[1:] - delta.indptr[:-1]).to(torch.float64)
    cols = delta.cols
    within = (2 * per_row * (per_row - 1) / cols).sum()  # ordered left/right pairs
    across = (2 * per_row[:-1] * per_row[1:] / cols).sum()  # ordered up/down pairs
    return float((within + across) / delta.nnz)


def _match_pattern(subnetwork: Subnetwork, pattern: str, known: Iterable[str] = ()) -> list[str]:
    """Names equal to ``pattern`` or ending in ``.pattern``, sorted by layer number.

    Searched: the stored tensors, the ones the extraction considered (``info.selected``; a loaded
    file lists only stored ones) and ``known`` (e.g. every backbone tensor).
    """
    names = dict.fromkeys([*subnetwork.deltas, *subnetwork.info.selected, *known])
    found = [n for n in names if n == pattern or n.endswith("." + pattern)]
    if not found:
        suffixes = sorted({n[m.end() :] for n in names if (m := LAYER_RE.search(n))})
        hint = difflib.get_close_matches(pattern, suffixes, n=3, cutoff=0.4) or suffixes[:5]
        raise KenError(
            f"no tensor name ends with {pattern!r}; per-layer names end with e.g.: {', '.join(hint) or '(none)'}"
        )
    return sorted(found, key=lambda n: (layer_index(n) is None, layer_index(n) or 0, n))


def plot_across_layers(
    subnetwork: Subnetwork,
    pattern: str,
    path: str | Path,
    *,
    backbone: Mapping[str, torch.Tensor] | None = None,
    max_side: int = 384,
    block: Block = "share",
    ncols: int | None = None,
) -> Path:
    """View (c): every tensor whose name ends with ``pattern`` (one per layer) in one grid.

    E.g. ``"attention.self.key.weight"`` gives ``encoder.layer.{i}.attention.self.key.weight``
    sorted by ``i``, each panel titled with its kept %, on one shared colour scale (values, or
    kept share per block when a panel is larger than ``max_side``). Tensors that store nothing
    get an empty panel. ``backbone`` (pretrained tensors by name) colours by change instead.
    """
    _matplotlib()
    from matplotlib.figure import Figure

    _check_block(block)
    names = _match_pattern(subnetwork, pattern, backbone or ())
    deltas = {n: subnetwork.deltas[n] for n in names if n in subnetwork.deltas}
    factors = {n: _factors(d.rows, d.cols, max_side) for n, d in deltas.items()}
    stat = "share" if block == "share" and any(f != (1, 1) for f in factors.values()) else "value"
    base = backbone or {}
    images = {n: _matrix_image(d, base.get(n), factors[n], stat) for n, d in deltas.items()}
    limit = _value_limit(list(images.values()))

    count = len(names)
    ncols = ncols or min(count, math.ceil(math.sqrt(count)))
    nrows = math.ceil(count / ncols)
    panel_h = max((img.data.shape[0] for img in images.values()), default=0)
    panel_w = max((img.data.shape[1] for img in images.values()), default=0)
    panel_h, panel_w = max(panel_h, 160) / DPI, max(panel_w, 220) / DPI  # >= 1 screen pixel per image pixel
    figsize = (ncols * (panel_w + 0.6) + 1.2, nrows * (panel_h + 0.6) + 0.9)
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handle = None
    for ax, name in zip(axes.flat, names, strict=False):
        index = layer_index(name)
        label = f"layer {index}" if index is not None else name
        if name in images:
            handle = _show(ax, images[name], limit, small=True)
            ax.set_box_aspect(images[name].data.shape[0] / images[name].data.shape[1])  # square pixels
            ax.set_title(f"{label}: kept {_percent(deltas[name]):.1f}%", fontsize=9)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "nothing stored", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_title(f"{label}: kept 0%", fontsize=9)
    for ax in axes.flat[count:]:
        ax.set_axis_off()
    kept = sum(d.nnz for d in deltas.values())
    total = sum(d.numel for d in deltas.values())
    stored = f"{len(deltas)} tensors that store entries" if len(deltas) < count else f"all {count} tensors"
    what = "change from pretrained" if backbone else "fine-tuned value"
    colour = "kept share per block" if stat == "share" else what
    fig.suptitle(
        f"*.{pattern} across {count} layers — kept {100 * kept / max(1, total):.2f}% of the entries of {stored}\n"
        f"colour: {colour}; blank: reset to pretrained",
        fontsize=10,
    )
    if handle is not None:
        bar = fig.colorbar(handle, ax=axes, shrink=0.8, aspect=30)
        bar.set_label("kept share" if stat == "share" else what, fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return _save(fig, path)


def plot_layer_retention(
    subnetwork: Subnetwork,
    path: str | Path,
    backbone_numels: Mapping[str, int] | None = None,
    *,
    split: Literal["stacked", "grouped"] | None = "stacked",
) -> Path:
    """Bar chart of kept % per layer (embeddings, pooler, ... as their own groups), as a PNG.

    ``split="stacked"``: each bar is split into the matrix kinds' contributions, so its height is
    the layer's kept %; ``"grouped"``: per layer, one bar per kind with that kind's own kept %;
    ``None``: one bar per layer. Kept % = stored entries / entries; ``backbone_numels`` (name →
    numel of every floating backbone tensor) counts untouched tensors too (see
    :func:`retention_table`).
    """
    matplotlib = _matplotlib()
    from matplotlib.figure import Figure

    if split not in ("stacked", "grouped", None):
        raise ValueError(f"split must be 'stacked', 'grouped' or None, got {split!r}")
    table = retention_table(subnetwork, backbone_numels)
    if not table:
        raise ValueError("the subnetwork stores no entries: nothing to chart")
    groups = list(table)
    kinds = list(dict.fromkeys(k for g in groups for k, (kept, _) in table[g].items() if kept))
    share = {
        g: 100 * sum(c[0] for c in table[g].values()) / max(1, sum(c[1] for c in table[g].values())) for g in groups
    }
    x = np.arange(len(groups), dtype=float)
    fig = Figure(figsize=(max(6.5, 0.6 * len(groups) + 4.0), 4.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    palette = matplotlib.colormaps["tab20" if len(kinds) > 10 else "tab10"]
    colours = {k: palette(i % palette.N) for i, k in enumerate(kinds)}
    top = max(share.values())
    if split == "stacked":
        bottom = np.zeros(len(groups))
        for kind in kinds:
            heights = np.array([100 * table[g].get(kind, (0, 0))[0] / max(1, _group_total(table[g])) for g in groups])
            ax.bar(x, heights, 0.75, bottom=bottom, color=colours[kind], label=kind)
            bottom += heights
    elif split == "grouped":
        slots = max(1, max(sum(1 for k in kinds if k in table[g]) for g in groups))
        width = 0.85 / slots
        for xi, g in zip(x, groups, strict=True):
            present = [k for k in kinds if k in table[g]]
            for i, kind in enumerate(present):
                kept, total = table[g][kind]
                left = xi - width * len(present) / 2
                ax.bar(left + width * (i + 0.5), 100 * kept / max(1, total), width, color=colours[kind])
        top = max((100 * c[0] / c[1] for g in groups for c in table[g].values() if c[1]), default=0.0)
        for kind in kinds:
            ax.bar([np.nan], [np.nan], color=colours[kind], label=kind)  # legend entry only
    else:
        ax.bar(x, [share[g] for g in groups], 0.75, color="#3b528b")
    if split != "grouped":
        for xi, g in zip(x, groups, strict=True):
            ax.text(xi, share[g], f"{share[g]:.1f}", ha="center", va="bottom", fontsize=7)
    labels = [g.removeprefix("layer ") for g in groups]
    rotate = sum(map(len, labels)) > 4 * len(labels)
    ax.set_xticks(x, labels, rotation=35 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_xlabel("layer (or group)")
    ax.set_ylabel("kept entries (%)")
    ax.set_ylim(0, max(1.0, 1.15 * top))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    scope = "all backbone tensors" if backbone_numels else "the tensors that store entries"
    overall = 100 * sum(c[0] for g in groups for c in table[g].values()) / sum(_group_total(table[g]) for g in groups)
    how = {
        "stacked": "\nbar parts: each matrix kind's share of the layer's entries",
        "grouped": "\nbars: each matrix kind's own kept %",
    }
    ax.set_title(f"Kept (stored) entries per layer: {overall:.2f}% of {scope}{how.get(split or '', '')}", fontsize=10)
    if kinds and split is not None:
        handles, names = ax.get_legend_handles_labels()
        if split == "stacked":  # top of the stack first
            handles, names = handles[::-1], names[::-1]
        ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def _group_total(kinds: Mapping[str, tuple[int, int]]) -> int:
    return sum(total for _, total in kinds.values())


# --------------------------------------------------------------------------------------------
# The default set
# --------------------------------------------------------------------------------------------


def _default_matrix(subnetwork: Subnetwork) -> str:
    """The first layer's attention key matrix, else the largest stored matrix."""
    keys = [n for n in subnetwork.deltas if _KEY_RE.search(n)]
    if keys:
        return min(keys, key=lambda n: (layer_index(n) is None, layer_index(n) or 0))
    return max(subnetwork.deltas, key=lambda n: (len(subnetwork.deltas[n].shape) > 1, subnetwork.deltas[n].numel))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "tensor"


def render_all(
    subnetwork: Subnetwork,
    out_dir: str | Path,
    *,
    matrix: str | None = None,
    layer_pattern: str | None = None,
    backbone: Mapping[str, torch.Tensor] | None = None,
) -> list[Path]:
    """Write the default views to ``out_dir`` and return their paths.

    (a) and (b) for ``matrix`` (default: the first attention key matrix, else the largest stored
    matrix); (c) for ``layer_pattern`` (default: ``matrix``'s name after its layer index, skipped
    when it has none); and the per-layer retention chart. ``backbone`` (pretrained tensors by
    name) colours by change and counts untouched tensors in the retention chart.
    """
    if not subnetwork.deltas:
        raise KenError("the subnetwork stores no entries: nothing to render")
    out = Path(out_dir)
    name = _delta(subnetwork, matrix)[0] if matrix is not None else _default_matrix(subnetwork)
    base = backbone.get(name) if backbone is not None else None
    paths = [
        plot_matrix(subnetwork, name, out / f"matrix_{_slug(name)}.png", base=base),
        plot_neighbours(subnetwork, name, out / f"neighbours_{_slug(name)}.png"),
    ]
    if layer_pattern is None and (match := LAYER_RE.search(name)):
        layer_pattern = name[match.end() :]
    if layer_pattern is not None:
        paths.append(
            plot_across_layers(subnetwork, layer_pattern, out / f"layers_{_slug(layer_pattern)}.png", backbone=backbone)
        )
    numels = {n: t.numel() for n, t in backbone.items() if t.is_floating_point()} if backbone is not None else None
    paths.append(plot_layer_retention(subnetwork, out / "retention.png", numels))
    return paths
