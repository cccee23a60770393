"""Hostile uploads through HTTP, the complete matrix: each is refused with the right 4xx and a reason,
nothing is stored (no listing entry, no file) and the backbone is untouched.

Reused, not repeated: tests/service/test_uploads.py (garbage, empty, truncated, NaN values, misshapen
head, another backbone's fingerprint, content type, bodies over the limit by status, task-name rule)
and tests/ken/test_fileformat.py (the same validations at library level). Added here: a pickle file,
an oversized header, negative / out-of-range / duplicate / unsorted indices, wrong dtypes and
shapes, unknown tensor names, Inf values, hostile task names (``../``, slashes, NUL, unicode,
1,000 characters), and proof that an oversized body is refused *before* it is read whole, with and
without Content-Length.
"""

from __future__ import annotations

import io
import pickle
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

from service.settings import Settings
from tests.ken.test_fileformat import _corrupt, _set
from tests.service.conftest import OCTET, TaskFiles
from tests.service.servers import ServiceThread
from tests.service.test_uploads import bad_uploads

LIMIT = 60_000
QUERY = "encoder.layer.0.attention.self.query.weight"  # [32, 32]


@pytest.fixture
def service(make_settings: Callable[..., Settings], serve: Callable[[Settings], ServiceThread]) -> ServiceThread:
    return serve(make_settings(max_upload_bytes=LIMIT, max_request_bytes=20_000))


def as_int32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32)


def rename_delta(new: str) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        for part in ("indptr", "indices", "values"):
            tensors[f"delta/{new}/{part}"] = tensors.pop(f"delta/{QUERY}/{part}")
        meta["deltas"][new] = meta["deltas"].pop(QUERY)

    return edit


def add_head_tensor(name: str) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        tensors[f"head/{name}"] = torch.ones(2)
        meta["head"].append(name)

    return edit


def hostile_files(files: TaskFiles) -> list[tuple[str, bytes, int, str]]:
    """(case, body, status, message fragment), on top of tests/service/test_uploads.py's bad_uploads."""
    sub = files.news_subnetwork
    torch_pickle = io.BytesIO()
    torch.save({"weight": torch.ones(3)}, torch_pickle)  # what `torch.save` makes: a zip of pickles
    cases: list[tuple[str, bytes, int, str]] = [
        ("pickle", pickle.dumps({"weights": [1.0, 2.0]}), 400, "not a subnetwork file"),
        ("torch.save pickle", torch_pickle.getvalue(), 400, "not a subnetwork file"),
        ("oversized header", struct.pack("<Q", 1 << 40) + b"{}", 400, "exceeds"),
        ("header longer than file", struct.pack("<Q", 50_000) + b"{}", 400, "truncated"),
        ("index out of range", _corrupt(sub, _set(f"delta/{QUERY}/indices", lambda t: t.fill_(32))), 400, "range"),
        (
            "negative index",
            _corrupt(sub, _set(f"delta/{QUERY}/indices", lambda t: as_int32(t).index_fill_(0, torch.tensor([0]), -1))),
            400,
            "range",
        ),
        (
            "duplicate index",
            _corrupt(sub, _set(f"delta/{QUERY}/indices", lambda t: torch.cat([t[:1], t[:1], t[2:]]))),
            400,
            "sorted and unique",
        ),
        (
            "unsorted indices",
            _corrupt(sub, _set(f"delta/{QUERY}/indices", lambda t: as_int32(t).flip(0).to(torch.uint16))),
            400,
            "sorted and unique",
        ),
        ("int64 indices", _corrupt(sub, _set(f"delta/{QUERY}/indices", lambda t: t.to(torch.int64))), 400, "uint16"),
        ("int values", _corrupt(sub, _set(f"delta/{QUERY}/values", lambda t: t.to(torch.int32))), 400, "float"),
        ("short values", _corrupt(sub, _set(f"delta/{QUERY}/values", lambda t: t[:-1])), 400, "as long as"),
        ("short indptr", _corrupt(sub, _set(f"delta/{QUERY}/indptr", lambda t: t[:-1])), 400, "length"),
        ("2-D values", _corrupt(sub, _set(f"delta/{QUERY}/values", lambda t: t.reshape(1, -1))), 400, "1-D"),
        (
            "shape not the backbone's",
            _corrupt(sub, rename_delta("embeddings.position_embeddings.weight")),  # [64, 32] in the backbone
            400,
            "shape",
        ),
        ("unknown backbone tensor", _corrupt(sub, rename_delta("encoder.layer.9.output.dense.weight")), 400, "no "),
        (
            "undeclared tensor",
            _corrupt(sub, lambda t, m: t.update({"delta/evil/values": torch.ones(1)})),
            400,
            "unknown tensor",
        ),
        (
            "unknown head tensor",
            _corrupt(
                sub, lambda t, m: (t.update({"head/evil.weight": torch.ones(2)}), m["head"].append("evil.weight"))
            ),
            400,
            "head",
        ),
        (
            "Inf value",
            _corrupt(sub, _set(f"delta/{QUERY}/values", lambda t: t.index_fill_(0, torch.tensor([0]), float("inf")))),
            400,
            "NaN or Inf",
        ),
        (
            "-Inf in the head",
            _corrupt(sub, _set("head/classifier.bias", lambda t: t.fill_(float("-inf")))),
            400,
            "NaN or Inf",
        ),
        ("NaN in the head", _corrupt(sub, _set("head/classifier.weight", lambda t: t.fill_(float("nan")))), 400, "NaN"),
        ("format version", _corrupt(sub, lambda t, m: m.update(format_version=2)), 400, "not supported"),
    ]
    return [*bad_uploads(files), *cases]


def assert_nothing_stored(service: ServiceThread) -> None:
    with service.client() as client:
        assert client.get("/v1/subnetworks").json() == {"subnetworks": []}
        assert client.get("/v1/backbone/integrity").json()["intact"] is True
    store_dir: Path = service.settings.store_dir
    assert not store_dir.exists() or not any(store_dir.iterdir()), list(store_dir.rglob("*"))


def test_hostile_files_are_refused_and_nothing_is_stored(service: ServiceThread, task_files: TaskFiles) -> None:
    cases = hostile_files(task_files)
    with service.client() as client:
        for case, body, status, fragment in cases:
            response = client.put("/v1/subnetworks/news", content=body, headers=OCTET)
            assert response.status_code == status, (case, response.text)
            assert fragment.lower() in response.json()["detail"].lower(), (case, response.text)
    print(f"\n{len(cases)} hostile files refused")
    assert_nothing_stored(service)


def raw_request(url: str, head: bytes, body_parts: list[bytes], wait_s: float = 10.0) -> tuple[int, float]:
    """Send a request head and body parts on a raw socket, *without* finishing the body; the status and
    how long the answer took after the last part was sent."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=wait_s) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        sent = time.monotonic()
        reply = b""
        while b"\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else -1
    return status, time.monotonic() - sent


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize(
    ("method", "path", "content_type", "limit"),
    [
        ("PUT", "/v1/subnetworks/big", "application/octet-stream", LIMIT),
        ("POST", "/v1/predict", "application/json", 20_000),
    ],
)
def test_oversized_bodies_are_refused_before_they_are_read_whole(
    service: ServiceThread, method: str, path: str, content_type: str, limit: int
) -> None:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n".encode()
    # Declared too large: answered at once, without a single body byte sent.
    status, seconds = raw_request(service.url, head + b"Content-Length: 1000000000\r\n\r\n", [])
    assert (status, seconds < 5) == (413, True)
    # Chunked, no length: answered once the stream passes the limit, while the client is still "sending".
    parts = [chunk(b"x" * 8192) for _ in range(limit // 8192 + 2)]
    status, seconds = raw_request(service.url, head + b"Transfer-Encoding: chunked\r\n\r\n", parts)
    assert (status, seconds < 5) == (413, True)
    assert_nothing_stored(service)


HOSTILE_NAMES = [
    "..",
    "../etc",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "a/b",
    "a%2Fb",
    "news%00",
    "news%20",
    ".hidden",
    "-dash",
    "NEWS",
    "n%C3%ABws",  # nëws
    "%E2%80%AEnews",  # right-to-left override
    "a" * 1000,
    "a" * 65,
]


def test_hostile_task_names_are_refused_and_nothing_is_stored(service: ServiceThread, task_files: TaskFiles) -> None:
    body = task_files.news
    for name in HOSTILE_NAMES:
        for method, extra in (("PUT", f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"),
                              ("DELETE", ""), ("GET", "")):  # fmt: skip
            head = f"{method} /v1/subnetworks/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()
            status, _ = raw_request(service.url, head, [body] if method == "PUT" else [])
            # 422: the route saw the name and refused it; 404/405: the path never matched a task route.
            assert status in (404, 405, 422), (method, name, status)
    with service.client() as client:
        response = client.post("/v1/predict", json={"task": "../../etc/passwd", "inputs": ["x"]})
        assert response.status_code == 422 and "invalid task name" in response.text
    assert_nothing_stored(service)
    assert not (service.settings.store_dir.parent / "etc").exists()
