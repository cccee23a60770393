from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save

import ken
from ken.fileformat import METADATA_KEY
from tests.tiny_models import TinyPair


@pytest.fixture(scope="module")
def subnetwork(tiny_bert: TinyPair) -> ken.Subnetwork:
    return ken.extract(tiny_bert.base, tiny_bert.finetuned, k=6, progress=False)


def _tensors_and_meta(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load

    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    return load(data), json.loads(header["__metadata__"][METADATA_KEY])


def _rebuild(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    return save(tensors, metadata={METADATA_KEY: json.dumps(meta)})


def test_round_trip_bytes_and_file(subnetwork: ken.Subnetwork, tmp_path) -> None:
    data = ken.save_bytes(subnetwork)
    again = ken.load_bytes(data, backbone_fingerprint=subnetwork.info.backbone_fingerprint)
    assert ken.save_bytes(again) == data
    for name, delta in subnetwork.deltas.items():
        assert torch.equal(again.deltas[name].flat_indices(), delta.flat_indices())
        assert torch.equal(again.deltas[name].values, delta.values)
    path = tmp_path / "task.safetensors"
    ken.save_file(subnetwork, path)
    assert path.read_bytes() == data
    assert ken.load_file(path).info.labels == subnetwork.info.labels
    assert ken.read_info(data).k == 6


def test_indices_take_two_bytes_per_entry(subnetwork: ken.Subnetwork) -> None:
    tensors, meta = _tensors_and_meta(ken.save_bytes(subnetwork))
    for name in meta["deltas"]:
        assert tensors[f"delta/{name}/indices"].dtype == torch.uint16
        assert tensors[f"delta/{name}/indptr"].dtype == torch.int32
    assert meta["format_version"] == 1 and meta["method"] == "ken"
    assert meta["head"] == ["classifier.bias", "classifier.weight"]


def test_wide_rows_use_int32_indices() -> None:
    delta = ken.SparseRows(
        (1, 70_000), torch.tensor([0, 2]), torch.tensor([5, 69_999], dtype=torch.int32), torch.tensor([1.0, 2.0])
    )
    info = ken.SubnetworkInfo(backbone_fingerprint="sha256:x", method="ken", k=3)
    data = ken.save_bytes(ken.Subnetwork({"w": delta}, {}, info))
    loaded = ken.load_bytes(data)
    assert loaded.deltas["w"].indices.dtype == torch.int32
    assert loaded.deltas["w"].flat_indices().tolist() == [5, 69_999]


def test_fingerprint_mismatch_is_refused(subnetwork: ken.Subnetwork) -> None:
    with pytest.raises(ken.FingerprintMismatch, match="extract it again"):
        ken.load_bytes(ken.save_bytes(subnetwork), backbone_fingerprint="sha256:another")


def _corrupt(subnetwork: ken.Subnetwork, edit) -> bytes:
    tensors, meta = _tensors_and_meta(ken.save_bytes(subnetwork))
    edit(tensors, meta)
    return _rebuild(tensors, meta)


NAME = "encoder.layer.0.attention.self.query.weight"


def _set(key: str, fn):
    def edit(tensors, meta):
        tensors[key] = fn(tensors[key].clone())

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set(f"delta/{NAME}/indices", lambda t: t.to(torch.int32).add_(40).to(torch.uint16)), "out of range"),
        (_set(f"delta/{NAME}/indices", lambda t: t.to(torch.int32).flip(0).to(torch.uint16)), "sorted and unique"),
        (_set(f"delta/{NAME}/indices", lambda t: torch.cat([t[:1], t[:1], t[2:]])), "sorted and unique"),
        (_set(f"delta/{NAME}/indices", lambda t: t.to(torch.int64)), "uint16 or int32"),
        (_set(f"delta/{NAME}/values", lambda t: t.index_fill_(0, torch.tensor([3]), float("nan"))), "NaN or Inf"),
        (_set(f"delta/{NAME}/values", lambda t: t.index_fill_(0, torch.tensor([0]), float("inf"))), "NaN or Inf"),
        (_set(f"delta/{NAME}/values", lambda t: t[:-1]), "as long as indices"),
        (_set(f"delta/{NAME}/values", lambda t: t.to(torch.int32)), "float tensor"),
        (_set(f"delta/{NAME}/indptr", lambda t: t[:-1]), "length"),
        (_set(f"delta/{NAME}/indptr", lambda t: t.index_fill_(0, torch.tensor([0]), 1)), "start at 0"),
        (_set("head/classifier.weight", lambda t: t.fill_(float("nan"))), "head tensor"),
        (lambda t, m: t.update({"delta/x/values": torch.ones(1)}), "unknown tensor"),
        (lambda t, m: t.pop(f"delta/{NAME}/values"), "missing"),
        (lambda t, m: m.update(format_version=99), "version 99 is not supported"),
        (lambda t, m: m.update(k=0), "k must be >= 1"),
        (lambda t, m: m.pop("backbone_fingerprint"), "backbone_fingerprint"),
        (lambda t, m: m["deltas"][NAME].update(shape=[32, -1]), r"deltas\..*shape.*greater than 0"),
    ],
)
def test_invalid_files_name_the_tensor_and_problem(subnetwork: ken.Subnetwork, edit, message: str) -> None:
    with pytest.raises(ken.SubnetworkFormatError, match=message):
        ken.load_bytes(_corrupt(subnetwork, edit))


def test_hostile_bytes(subnetwork: ken.Subnetwork) -> None:
    import pickle

    data = ken.save_bytes(subnetwork)
    cases = {
        "too short": b"abc",
        "exceeds": struct.pack("<Q", 1 << 40) + b"{}",
        "truncated": data[: len(data) // 2],
        "header length": pickle.dumps({"weights": [1, 2, 3]}),
        "header is not JSON": struct.pack("<Q", 4) + b"\x80\x04}q" + b"\x00" * 8,
        "no 'ken' entry": save({"w": torch.ones(2)}),
    }
    for message, blob in cases.items():
        with pytest.raises(ken.SubnetworkFormatError, match=message):
            ken.load_bytes(blob)
