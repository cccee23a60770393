"""The subnetwork file: safetensors only (never pickle), layout in docs/format.md.

Tensors: ``delta/<name>/indptr`` (int32 or int64, ``rows + 1``), ``delta/<name>/indices``
(uint16 when a row has at most 65,536 columns, else int32), ``delta/<name>/values`` (the
checkpoint's dtype) per touched backbone tensor, and ``head/<name>`` per task-head tensor.
Everything else is JSON under the metadata key ``ken``.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ken.errors import FingerprintMismatch, KenError, SubnetworkFormatError
from ken.metadata import DeltaEntry, KenMetadata, parse_metadata
from ken.pooling import Pooling
from ken.subnetwork import FORMAT_VERSION, SparseRows, Subnetwork, SubnetworkInfo

METADATA_KEY = "ken"
#: Largest safetensors header accepted; a real subnetwork's header is a few hundred KiB at most.
MAX_HEADER_BYTES = 16 << 20
_INDEX_DTYPES = (torch.uint16, torch.int32)
_INDPTR_DTYPES = (torch.int32, torch.int64)
#: The largest finite float16 value, the default bound of :func:`check_magnitudes`.
FLOAT16_MAX = 65504.0
_VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def save_bytes(subnetwork: Subnetwork) -> bytes:
    """Serialise a subnetwork to the bytes of a subnetwork file."""
    tensors: dict[str, torch.Tensor] = {}
    deltas_meta: dict[str, Any] = {}
    for name, delta in subnetwork.deltas.items():
        indptr_dtype = torch.int32 if delta.nnz < 2**31 else torch.int64
        index_dtype = torch.uint16 if delta.cols <= 65_536 else torch.int32
        tensors[f"delta/{name}/indptr"] = delta.indptr.to(indptr_dtype).contiguous()
        tensors[f"delta/{name}/indices"] = delta.indices.to(torch.int32).to(index_dtype).contiguous()
        tensors[f"delta/{name}/values"] = delta.values.contiguous()
        deltas_meta[name] = {
            "shape": list(delta.shape),
            "kept": delta.nnz,
            "selected": subnetwork.info.selected.get(name, delta.nnz),
        }
    for name, tensor in subnetwork.head.items():
        tensors[f"head/{name}"] = tensor.detach().contiguous()
    info = subnetwork.info
    meta = {
        "format_version": FORMAT_VERSION,
        "backbone_fingerprint": info.backbone_fingerprint,
        "method": info.method,
        "k": info.k,
        "base_prefix": info.base_prefix,
        "task_type": info.task_type,
        "id2label": {str(i): label for i, label in sorted(info.id2label.items())},
        "config": info.config,
        "include": info.include,
        "exclude": info.exclude,
        "pooling": info.pooling.to_dict() if info.pooling is not None else None,
        "deltas": deltas_meta,
        "head": sorted(subnetwork.head),
    }
    return st_save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


def save_file(subnetwork: Subnetwork, path: str | os.PathLike[str]) -> None:
    """Write a subnetwork file atomically (temporary file, then rename)."""
    target = Path(path)
    data = save_bytes(subnetwork)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, target)


def load_file(path: str | os.PathLike[str], *, backbone_fingerprint: str | None = None) -> Subnetwork:
    """Read and validate a subnetwork file."""
    return load_bytes(Path(path).read_bytes(), backbone_fingerprint=backbone_fingerprint)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a repeated key (readers would disagree on which one counts)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SubnetworkFormatError(f"the header names {key!r} twice")
        out[key] = value
    return out


def _parse_json(text: bytes | str, what: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise SubnetworkFormatError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer of more than 4,300 digits
        raise SubnetworkFormatError(f"{what} is not JSON ({exc})") from None


def read_header(data: bytes) -> tuple[dict[str, Any], KenMetadata]:
    """The safetensors header (tensor entries) and the validated ``ken`` metadata, without loading tensors."""
    if len(data) < 8:
        raise SubnetworkFormatError(f"not a subnetwork file: {len(data)} bytes is too short for a header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES:
        raise SubnetworkFormatError(
            f"not a subnetwork file: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
        )
    if 8 + header_len > len(data):
        raise SubnetworkFormatError(
            f"truncated subnetwork file: header needs {8 + header_len} bytes, file has {len(data)}"
        )
    header = _parse_json(data[8 : 8 + header_len], "not a subnetwork file: the header")
    if not isinstance(header, dict):
        raise SubnetworkFormatError("not a subnetwork file: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SubnetworkFormatError("not a subnetwork file: safetensors '__metadata__' must map names to strings")
    raw_meta = metadata.get(METADATA_KEY)
    if raw_meta is None:
        raise SubnetworkFormatError(
            "not a subnetwork file: safetensors metadata has no 'ken' entry (make it with `ken extract`)"
        )
    return header, parse_metadata(_parse_json(raw_meta, "subnetwork metadata"))


def read_info(data: bytes) -> SubnetworkInfo:
    """The subnetwork's metadata from the header alone (cheap: tensors are not read)."""
    _, meta = read_header(data)
    return _info_from_meta(meta)


def load_bytes(data: bytes, *, backbone_fingerprint: str | None = None) -> Subnetwork:
    """Parse and validate the bytes of a subnetwork file.

    Checks the metadata against its schema (:mod:`ken.metadata`), the format version, the backbone
    fingerprint (when given), every tensor's dtype and shape, index bounds, sorted unique indices
    per row and finite values; raises :class:`SubnetworkFormatError` naming the field or tensor.
    """
    _, meta = read_header(data)
    info = _info_from_meta(meta)
    if backbone_fingerprint is not None and info.backbone_fingerprint != backbone_fingerprint:
        raise FingerprintMismatch(
            f"subnetwork was extracted against backbone {info.backbone_fingerprint}, "
            f"but this backbone is {backbone_fingerprint}: extract it again against this backbone"
        )
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types for malformed bodies
        raise SubnetworkFormatError(f"corrupt or truncated subnetwork file: {exc}") from None

    expected = {f"delta/{n}/{part}" for n in meta.deltas for part in ("indptr", "indices", "values")}
    expected |= {f"head/{n}" for n in meta.head}
    unknown = sorted(set(tensors) - expected)
    if unknown:
        raise SubnetworkFormatError(f"unknown tensor {unknown[0]!r} (not declared in the metadata)")
    missing = sorted(expected - set(tensors))
    if missing:
        raise SubnetworkFormatError(f"tensor {missing[0]!r} is declared in the metadata but missing")

    deltas = {name: _validated_delta(name, entry, tensors) for name, entry in meta.deltas.items()}
    head: dict[str, torch.Tensor] = {}
    for name in meta.head:
        tensor = tensors[f"head/{name}"]
        if tensor.dtype not in _VALUE_DTYPES:
            raise SubnetworkFormatError(
                f"head tensor {name!r} has dtype {tensor.dtype}; use float16, bfloat16, float32 or float64"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise SubnetworkFormatError(f"head tensor {name!r} holds NaN or Inf")
        head[name] = tensor
    info.selected = {
        name: deltas[name].nnz if entry.selected is None else entry.selected for name, entry in meta.deltas.items()
    }
    return Subnetwork(deltas=deltas, head=head, info=info)


def _info_from_meta(meta: KenMetadata) -> SubnetworkInfo:
    if meta.format_version != FORMAT_VERSION:
        raise SubnetworkFormatError(
            f"subnetwork format version {meta.format_version} is not supported "
            f"(this build reads version {FORMAT_VERSION})"
        )
    if meta.k < 1:
        raise SubnetworkFormatError(f"subnetwork metadata has k={meta.k}; k must be >= 1")
    return SubnetworkInfo(
        backbone_fingerprint=meta.backbone_fingerprint,
        method=meta.method,
        k=meta.k,
        base_prefix=meta.base_prefix,
        task_type=meta.task_type,
        id2label={int(i): label for i, label in meta.id2label.items()},
        config=meta.config,
        include=meta.include,
        exclude=meta.exclude,
        pooling=_pooling(meta.pooling),
    )


def check_magnitudes(subnetwork: Subnetwork, limit: float = FLOAT16_MAX) -> None:
    """Refuse any stored value beyond ``±limit``.

    Finite is not enough: float64 1e300 becomes Inf in a float32 backbone, and float32 3e38 is
    representable but overflows the first matrix product. The default is float16's largest
    value: a backbone may compute in float16, and no fine-tuned weight of a real model comes near it.
    """
    tensors = [(f"delta {name!r}", delta.values) for name, delta in subnetwork.deltas.items()]
    tensors += [(f"head tensor {name!r}", tensor) for name, tensor in subnetwork.head.items()]
    for what, tensor in tensors:
        if tensor.numel() == 0:
            continue
        largest = float(tensor.detach().abs().max().to(torch.float64))
        if largest > limit:
            raise SubnetworkFormatError(
                f"{what} holds a value of magnitude {largest:.3g}, beyond the +-{limit:g} a weight may have "
                "(such values overflow in the forward pass)"
            )


def _pooling(value: dict[str, Any] | None) -> Pooling | None:
    if value is None:
        return None
    try:
        return Pooling.from_dict(value)
    except KenError as exc:
        raise SubnetworkFormatError(f"subnetwork metadata field 'pooling': {exc}") from None


def _validated_delta(name: str, entry: DeltaEntry, tensors: dict[str, torch.Tensor]) -> SparseRows:
    shape = tuple(entry.shape)
    indptr = tensors[f"delta/{name}/indptr"]
    indices = tensors[f"delta/{name}/indices"]
    values = tensors[f"delta/{name}/values"]
    delta = SparseRows(shape, indptr.to(torch.int64), indices, values)
    rows, cols = delta.rows, delta.cols

    def fail(problem: str) -> SubnetworkFormatError:
        return SubnetworkFormatError(f"delta {name!r}: {problem}")

    if indptr.dtype not in _INDPTR_DTYPES or indptr.dim() != 1 or indptr.numel() != rows + 1:
        raise fail(f"indptr must be int32/int64 of length {rows + 1}, got {indptr.dtype} {list(indptr.shape)}")
    if indices.dtype not in _INDEX_DTYPES or indices.dim() != 1:
        raise fail(f"indices must be a 1-D uint16 or int32 tensor, got {indices.dtype} {list(indices.shape)}")
    if indices.dtype == torch.uint16 and cols > 65_536:
        raise fail(f"uint16 indices cannot address {cols} columns")
    if values.dtype not in _VALUE_DTYPES or values.dim() != 1 or values.numel() != indices.numel():
        raise fail(f"values must be a 1-D float tensor as long as indices, got {values.dtype} {list(values.shape)}")
    pointer = delta.indptr
    if int(pointer[0]) != 0 or int(pointer[-1]) != indices.numel() or bool((pointer[1:] < pointer[:-1]).any()):
        raise fail("indptr must start at 0, never decrease and end at the number of stored entries")
    if indices.numel():
        wide = indices.to(torch.int64)
        if int(wide.min()) < 0 or int(wide.max()) >= cols:
            raise fail(f"column index out of range [0, {cols})")
        row_starts = torch.zeros(indices.numel(), dtype=torch.bool)
        row_starts[pointer[:-1][pointer[:-1] < indices.numel()]] = True
        if bool(((wide[1:] <= wide[:-1]) & ~row_starts[1:]).any()):
            raise fail("column indices must be sorted and unique within each row")
        if not bool(torch.isfinite(values).all()):
            raise fail("values hold NaN or Inf")
    return delta
