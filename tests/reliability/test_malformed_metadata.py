"""Malformed safetensors headers and ``ken`` metadata: each upload is a 400 naming the field, never a 500.

The files are real safetensors bytes: a valid subnetwork whose header JSON (or ``ken`` metadata) is
edited and re-framed with its data section untouched, so each case breaks exactly one thing.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import pytest
import torch

import ken
from ken.fileformat import METADATA_KEY
from service.settings import Settings
from tests.ken.test_fileformat import _corrupt
from tests.reliability.test_hostile_uploads import assert_nothing_stored
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread

QUERY = "encoder.layer.0.attention.self.query.weight"


@pytest.fixture
def service(make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread]) -> ServiceThread:
    return serve(make_settings())


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def frame(header: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + body


def edit_header(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    header, body = split(data)
    edit(header)
    return frame(json.dumps(header).encode(), body)


def edit_meta_text(data: bytes, text: str) -> bytes:
    return edit_header(data, lambda header: header["__metadata__"].update({METADATA_KEY: text}))


def edit_meta(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    header, _ = split(data)
    meta = json.loads(header["__metadata__"][METADATA_KEY])
    edit(meta)
    return edit_meta_text(data, json.dumps(meta))


def set_field(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``meta[a][b]...`` for the dotted path ``a.b...`` (the last part may be new)."""

    def edit(meta: dict[str, Any]) -> None:
        *parents, last = path.split("|")
        target = meta
        for part in parents:
            target = target[part]
        target[last] = value

    return edit


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def malformed(data: bytes, sub: ken.Subnetwork) -> list[tuple[str, bytes, str]]:
    """(case, file, fragment the message must contain: the field or what is wrong)."""
    first_entry = next(name for name in split(data)[0] if name != "__metadata__")
    meta_cases: list[tuple[str, str, Any, str]] = [
        ("selected as a list", f"deltas|{QUERY}|selected", [3], "selected"),
        ("selected null", f"deltas|{QUERY}|selected", None, "selected"),
        ("selected Inf", f"deltas|{QUERY}|selected", float("inf"), "selected"),
        ("selected negative", f"deltas|{QUERY}|selected", -1, "selected"),
        ("kept a string", f"deltas|{QUERY}|kept", "8", "kept"),
        ("shape a string", f"deltas|{QUERY}|shape", "32x32", "shape"),
        ("shape with a zero", f"deltas|{QUERY}|shape", [32, 0], "shape"),
        ("shape beyond int64", f"deltas|{QUERY}|shape", [2**70, 1], "shape"),
        ("shape with a float", f"deltas|{QUERY}|shape", [32.0, 32], "shape"),
        ("delta entry a number", f"deltas|{QUERY}", 5, "deltas"),
        ("deltas a list", "deltas", [QUERY], "deltas"),
        ("head an object", "head", {"classifier.weight": 1}, "head"),
        ("head names twice", "head", ["classifier.bias", "classifier.bias", "classifier.weight"], "head"),
        ("k a string", "k", "8", "'k'"),
        ("k a float", "k", 8.0, "'k'"),
        ("k true", "k", True, "'k'"),
        ("k huge", "k", 10**30, "'k'"),
        ("k Infinity", "k", float("inf"), "'k'"),
        ("format_version a string", "format_version", "1", "format_version"),
        ("fingerprint a number", "backbone_fingerprint", 7, "backbone_fingerprint"),
        ("method a list", "method", ["ken"], "method"),
        ("task_type null", "task_type", None, "task_type"),
        ("base_prefix missing", "base_prefix", ..., "base_prefix"),
        ("include a number", "include", 5, "include"),
        ("config a list", "config", [], "config"),
        ("config a string", "config", "{}", "config"),
        ("id2label with a gap", "id2label", {"0": "a", "1": "b", "3": "c"}, "id2label"),
        ("id2label not starting at 0", "id2label", {"1": "a", "2": "b", "3": "c"}, "id2label"),
        ("id2label keys not indices", "id2label", {"a": "x"}, "id2label"),
        ("id2label a non-string label", "id2label", {"0": 1, "1": "b", "2": "c"}, "id2label"),
        ("id2label a list", "id2label", ["a", "b", "c"], "id2label"),
        ("config nested 40 deep", "config|evil", nested(40), "nested"),
        ("config model_type a list", "config|model_type", ["bert"], "model_type"),
        ("config hidden_size a string", "config|hidden_size", "32", "hidden_size"),
        ("config id2label with a gap", "config|id2label", {"0": "a", "2": "b"}, "id2label"),
    ]
    cases: list[tuple[str, bytes, str]] = []
    for case, path, value, fragment in meta_cases:
        if value is ...:
            body = edit_meta(data, lambda meta, path=path: meta.pop(path))
        else:
            body = edit_meta(data, set_field(path, value))
        cases.append((case, body, fragment))
    cases += [
        ("ken metadata a number", edit_meta_text(data, "5"), "JSON object"),
        ("ken metadata a string", edit_meta_text(data, '"hello"'), "JSON object"),
        ("ken metadata a list", edit_meta_text(data, "[1, 2]"), "JSON object"),
        ("ken metadata an object of the wrong shape", edit_meta_text(data, '{"a": {"b": 1}}'), "format_version"),
        ("ken metadata not JSON", edit_meta_text(data, "{nope"), "not JSON"),
        ("ken metadata nested 100,000 deep", edit_meta_text(data, "[" * 100_000 + "]" * 100_000), "nested"),
        ("ken metadata an integer of 5,000 digits", edit_meta_text(data, '{"k": ' + "9" * 5000 + "}"), "JSON"),
        ("__metadata__ a list", edit_header(data, lambda h: h.update(__metadata__=["ken"])), "__metadata__"),
        ("__metadata__ a string", edit_header(data, lambda h: h.update(__metadata__="ken")), "__metadata__"),
        (
            "__metadata__ value a number",
            edit_header(data, lambda h: h.update(__metadata__={METADATA_KEY: 5})),
            "__metadata__",
        ),
        ("header nested 100,000 deep", frame(b"[" * 100_000 + b"]" * 100_000, b""), "nested"),
        ("header a list", frame(b"[1, 2, 3]", b""), "not a JSON object"),
        (
            "header names a tensor twice",
            frame(_duplicate_entry(data, first_entry), split(data)[1]),
            "twice",
        ),
        (
            "header offsets beyond the data",
            edit_header(data, lambda h: h[first_entry].update(data_offsets=[0, 10**9])),
            "corrupt",
        ),
        (
            "header dtype unknown",
            edit_header(data, lambda h: h[first_entry].update(dtype="F128")),
            "corrupt",
        ),
        (
            "header shape disagrees with the offsets",
            edit_header(data, lambda h: h[first_entry].update(shape=[10**6])),
            "corrupt",
        ),
        ("header length a lie (too short)", _lie_about_length(data, -40), "not JSON"),
        ("header length a lie (too long)", _lie_about_length(data, 8), "not JSON"),
        (
            "float8 head",
            _corrupt(
                sub,
                lambda t, m: t.update({"head/classifier.weight": t["head/classifier.weight"].to(torch.float8_e4m3fn)}),
            ),
            "dtype",
        ),
        (
            "int head",
            _corrupt(sub, lambda t, m: t.update({"head/classifier.bias": torch.ones(3, dtype=torch.int32)})),
            "dtype",
        ),
    ]
    return cases


def _duplicate_entry(data: bytes, name: str) -> bytes:
    header, _ = split(data)
    text = json.dumps(header)
    entry = json.dumps({name: header[name]})[1:-1]
    return text.replace("{", "{" + entry + ", ", 1).encode()


def _lie_about_length(data: bytes, delta: int) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    return struct.pack("<Q", length + delta) + data[8:]


def test_malformed_metadata_is_a_400_naming_the_field(service: ServiceThread, task_files: TaskFiles) -> None:
    cases = malformed(task_files.news, task_files.news_subnetwork)
    failures = []
    with service.client() as client:
        for case, body, fragment in cases:
            response = client.put("/v1/subnetworks/news", content=body, headers=OCTET)
            detail = response.json().get("detail", "") if response.headers["content-type"] == "application/json" else ""
            if response.status_code != 400 or fragment.lower() not in str(detail).lower():
                failures.append((case, response.status_code, response.text[:200]))
    assert not failures, "\n".join(map(str, failures))
    print(f"\n{len(cases)} malformed headers/metadata refused with 400")
    assert_nothing_stored(service)


def test_the_library_names_the_field_too(task_files: TaskFiles) -> None:
    body = edit_meta(task_files.news, set_field(f"deltas|{QUERY}|selected", [1]))
    with pytest.raises(ken.SubnetworkFormatError, match=rf"'deltas\.{QUERY}\.selected'"):
        ken.load_bytes(body)
