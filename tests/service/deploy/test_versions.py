"""The router's view of task versions: read once, then kept current by the store's notifications."""

from __future__ import annotations

import asyncio
from pathlib import Path

from service.deploy.versions import TaskVersions
from service.store import DirectorySubnetworkStore


def test_versions_follow_puts_and_deletes_and_never_go_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = DirectorySubnetworkStore(tmp_path)
        versions = TaskVersions(store)
        assert await versions.current("news") is None
        await store.put("news", b"one", {})
        assert await versions.current("news") == 1
        await store.put("news", b"two", {})  # reported to this instance's subscribers by put itself
        assert await versions.current("news") == 2
        versions.learned("news", 1)  # a late report of an older version
        assert await versions.current("news") == 2
        await store.delete("news")
        assert await versions.current("news") is None
        await store.put("news", b"three", {})
        assert await versions.current("news") == 3  # versions keep increasing across deletes
        assert await versions.current("Not A Task") is None

    asyncio.run(scenario())


def test_a_version_read_while_a_change_arrives_is_not_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = DirectorySubnetworkStore(tmp_path)
        await store.put("news", b"one", {})
        versions = TaskVersions(store)
        read = store.manifest

        async def racing_manifest(task: str):  # the store moves on while the router's read is in flight
            manifest = await read(task)
            await store.put(task, b"two", {})
            store.manifest = read
            return manifest

        store.manifest = racing_manifest
        assert await versions.current("news") == 2

    asyncio.run(scenario())
