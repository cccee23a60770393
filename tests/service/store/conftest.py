"""Fixtures of the store tests: private Redis servers and a backend-neutral view of both stores.

The tests are plain functions that drive their coroutine with the ``run`` fixture (pytest-asyncio
is not used). Redis-backed tests share one private session server, each under its own random key
prefix whose keys are deleted afterwards; fault tests get a server of their own (``fault_redis``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from service.store import DirectorySubnetworkStore, RedisSubnetworkStore, SubnetworkStore
from tests.redis_server import RedisServer, start_redis_server

T = TypeVar("T")
TEST_CHUNK_SIZE = 1024  # tiny, so that ordinary test blobs span many chunks
TEST_TIMEOUT_S = 20.0


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with start_redis_server() as server:
        yield server


@pytest.fixture
def fault_redis() -> Iterator[RedisServer]:
    """A server of the test's own, which it may stop, restart or freeze."""
    with start_redis_server() as server:
        yield server


@pytest.fixture
def key_prefix(redis_server: RedisServer) -> Iterator[str]:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    with redis.Redis.from_url(redis_server.url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A synchronous client on the session server, to inspect or tamper with keys directly."""
    with redis.Redis.from_url(redis_server.url) as client:
        yield client


@pytest.fixture
def run() -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a test coroutine to completion on a fresh event loop, never for longer than 20 s."""

    def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coro, TEST_TIMEOUT_S)

        return asyncio.run(bounded())

    return run_coroutine


class ChangeRecorder:
    """A change callback (a coroutine function, as the engine's will be) that records what it gets."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int | None]] = []

    async def __call__(self, task: str, version: int | None) -> None:
        self.events.append((task, version))

    async def wait_for(self, event: tuple[str, int | None], timeout: float = 1.0) -> float:
        """Seconds until ``event`` was recorded; AssertionError if not within ``timeout``."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while event not in self.events:
            if loop.time() - start > timeout:
                raise AssertionError(f"{event} not reported within {timeout} s; got {self.events}")
            await asyncio.sleep(0.01)
        return loop.time() - start


@pytest.fixture
def make_recorder() -> Callable[[], ChangeRecorder]:
    return ChangeRecorder


@dataclass
class Backend:
    """One storage backend shared by any number of store instances (replicas), plus direct access
    to the stored data so tests can inspect it or damage it behind the store's back."""

    kind: str
    new_store: Callable[[], SubnetworkStore]
    corrupt_blob: Callable[[str, int], None]  # flip one stored byte of (task, version)
    drop_blob: Callable[[str, int], None]  # lose (part of) the stored data of (task, version)
    blob_versions: Callable[[str], set[int]]  # versions of a task whose data is still stored
    corrupt_manifest: Callable[[str], None]  # make the task's manifest unreadable

    @contextlib.asynccontextmanager
    async def replica(self) -> AsyncIterator[SubnetworkStore]:
        """A started store instance, closed on exit."""
        store = self.new_store()
        await store.start()
        try:
            yield store
        finally:
            await store.close()


def directory_backend(root: Path) -> Backend:
    def blob_path(task: str, version: int) -> Path:
        return root / task / f"v{version}.bin"

    def corrupt_blob(task: str, version: int) -> None:
        data = bytearray(blob_path(task, version).read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob_path(task, version).write_bytes(bytes(data))

    def blob_versions(task: str) -> set[int]:
        return {int(p.stem[1:]) for p in (root / task).glob("v*.bin")} if (root / task).is_dir() else set()

    return Backend(
        kind="directory",
        new_store=lambda: DirectorySubnetworkStore(root),
        corrupt_blob=corrupt_blob,
        drop_blob=lambda task, version: os.unlink(blob_path(task, version)),
        blob_versions=blob_versions,
        corrupt_manifest=lambda task: (root / task / "manifest.json").write_text("{not json"),
    )


def redis_backend(url: str, client: redis.Redis, prefix: str) -> Backend:
    def chunk_keys(task: str, version: int) -> list[bytes]:
        return sorted(client.scan_iter(match=f"{prefix}blob:{task}:{version}:*"))

    def corrupt_blob(task: str, version: int) -> None:
        keys = chunk_keys(task, version)
        key = keys[len(keys) // 2]
        chunk = bytearray(client.get(key))
        chunk[0] ^= 0xFF
        client.set(key, bytes(chunk))

    def blob_versions(task: str) -> set[int]:
        return {int(key.split(b":")[-2]) for key in client.scan_iter(match=f"{prefix}blob:{task}:*")}

    return Backend(
        kind="redis",
        new_store=lambda: RedisSubnetworkStore(url, key_prefix=prefix, chunk_size=TEST_CHUNK_SIZE),
        corrupt_blob=corrupt_blob,
        drop_blob=lambda task, version: client.delete(chunk_keys(task, version)[-1]),
        blob_versions=blob_versions,
        corrupt_manifest=lambda task: client.hset(f"{prefix}manifest:{task}", "manifest", "{not json"),
    )


@pytest.fixture(params=["directory", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "directory":
        return directory_backend(tmp_path / "store")
    server: RedisServer = request.getfixturevalue("redis_server")
    client: redis.Redis = request.getfixturevalue("redis_client")
    return redis_backend(server.url, client, request.getfixturevalue("key_prefix"))
