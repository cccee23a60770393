"""A readable description of a subnetwork file (``ken inspect``)."""

from __future__ import annotations

from ken.fileformat import load_bytes


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    right = [i > 0 for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def describe(data: bytes, *, tensors: bool = True) -> str:
    """Metadata, totals and (optionally) a per-tensor table of a subnetwork file's bytes."""
    sub = load_bytes(data)
    info = sub.info
    touched = sum(d.numel for d in sub.deltas.values())
    delta_bytes = sum(
        d.indptr.numel() * (4 if d.nnz < 2**31 else 8)
        + d.indices.numel() * d.indices.element_size()
        + d.values.numel() * d.values.element_size()
        for d in sub.deltas.values()
    )
    head_bytes = sum(t.numel() * t.element_size() for t in sub.head.values())
    lines = [
        f"format version     {info.format_version}",
        f"method, k          {info.method}, k={info.k}",
        f"task type          {info.task_type}",
        f"labels             {', '.join(info.labels) or '-'}",
        f"backbone           {info.backbone_fingerprint}",
        f"name prefix        {info.base_prefix or '-'}",
        f"include / exclude  {info.include or '-'} / {info.exclude or '-'}",
        f"file size          {len(data):,} bytes (deltas {delta_bytes:,}, head {head_bytes:,})",
        f"kept entries       {sub.kept_entries:,} of {touched:,} in {len(sub.deltas)} tensors "
        f"({100 * sub.kept_entries / max(touched, 1):.2f} %)",
        f"head               {len(sub.head)} tensors, {sub.head_entries:,} entries",
    ]
    if tensors and sub.deltas:
        rows = [
            [
                name,
                "x".join(map(str, d.shape)),
                f"{d.nnz:,}",
                f"{100 * d.nnz / d.numel:.2f}",
                f"{info.selected.get(name, d.nnz):,}",
                str(d.indices.dtype).removeprefix("torch."),
            ]
            for name, d in sub.deltas.items()
        ]
        lines += ["", _table(["tensor", "shape", "kept", "kept %", "selected", "index"], rows)]
    if tensors and sub.head:
        rows = [
            [name, "x".join(map(str, t.shape)), str(t.dtype).removeprefix("torch.")] for name, t in sub.head.items()
        ]
        lines += ["", _table(["head tensor", "shape", "dtype"], rows)]
    return "\n".join(lines)
