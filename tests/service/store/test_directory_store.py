"""DirectorySubnetworkStore specifics: on-disk layout, recovery, errors, and real cross-process use."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service.store import (
    CorruptSubnetwork,
    DirectorySubnetworkStore,
    StoreUnavailable,
    TaskNotFound,
    open_store,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
BLOB = os.urandom(3000)


def test_layout_on_disk(tmp_path, run):
    async def scenario() -> None:
        store = DirectorySubnetworkStore(tmp_path)
        await store.put("t", b"first", {"k": 1})
        second = await store.put("t", BLOB, {"k": 2})
        task_dir = tmp_path / "t"
        assert sorted(p.name for p in task_dir.iterdir()) == [".last-version", ".lock", "manifest.json", "v2.bin"]
        assert (task_dir / "v2.bin").read_bytes() == BLOB
        assert json.loads((task_dir / "manifest.json").read_text()) == second.to_json_dict()
        assert (task_dir / ".last-version").read_text() == "2"
        await store.delete("t")
        assert sorted(p.name for p in task_dir.iterdir()) == [".last-version", ".lock"]

    run(scenario())


def test_unreadable_manifest_is_corrupt_skipped_by_list_and_repaired_by_put(tmp_path, run):
    async def scenario() -> None:
        store = DirectorySubnetworkStore(tmp_path)
        await store.put("good", BLOB, {})
        await store.put("bad", BLOB, {})
        (tmp_path / "bad" / "manifest.json").write_text("{not json")
        for operation in (store.get, store.manifest):
            with pytest.raises(CorruptSubnetwork):
                await operation("bad")
        assert [m.task for m in await store.list()] == ["good"]
        repaired = await store.put("bad", BLOB, {})
        assert repaired.version == 2  # the counter file remembers version 1
        assert (await store.get("bad"))[1] == BLOB

    run(scenario())


def test_put_recovers_from_a_crash_between_manifest_switch_and_counter_update(tmp_path, run):
    async def scenario() -> None:
        store = DirectorySubnetworkStore(tmp_path)
        for _ in range(3):
            await store.put("t", BLOB, {})
        (tmp_path / "t" / ".last-version").write_text("1")  # as if the counter write was lost
        (tmp_path / "t" / "v9.bin").write_bytes(b"leftover of a crashed put")
        assert (await store.put("t", BLOB, {})).version == 4
        assert sorted(p.name for p in (tmp_path / "t").glob("v*.bin")) == ["v4.bin"]

    run(scenario())


def test_stray_entries_in_the_root_are_ignored(tmp_path, run):
    async def scenario() -> None:
        store = DirectorySubnetworkStore(tmp_path)
        (tmp_path / "Not-A-Task").mkdir()
        (tmp_path / "file.txt").write_text("x")
        (tmp_path / "empty-dir").mkdir()
        await store.put("t", BLOB, {})
        assert [m.task for m in await store.list()] == ["t"]
        with pytest.raises(TaskNotFound):
            await store.get("empty-dir")

    run(scenario())


def test_ping_and_io_failures_raise_store_unavailable(tmp_path, run):
    async def scenario() -> None:
        missing = DirectorySubnetworkStore(tmp_path / "not-yet")
        with pytest.raises(StoreUnavailable):
            await missing.ping()
        await missing.start()  # creates the root
        await missing.ping()
        await missing.close()

        (tmp_path / "a-file").write_text("not a directory")
        broken = DirectorySubnetworkStore(tmp_path / "a-file")
        with pytest.raises(StoreUnavailable):
            await broken.ping()
        with pytest.raises(StoreUnavailable):
            await broken.put("t", BLOB, {})
        with pytest.raises(StoreUnavailable):
            await broken.list()

    run(scenario())


def test_open_store_without_redis_url_uses_the_directory(tmp_path):
    store = open_store(None, tmp_path)
    assert isinstance(store, DirectorySubnetworkStore)
    assert store.root == tmp_path
    assert isinstance(open_store("", tmp_path), DirectorySubnetworkStore)


_WRITER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from service.store import DirectorySubnetworkStore

    async def main(root, who, count):
        store = DirectorySubnetworkStore(root)
        print("ready", flush=True)
        while not os.path.exists(os.path.join(root, "go")):  # start both writers at once
            time.sleep(0.005)
        for i in range(count):
            manifest = await store.put("shared", f"{who}-{i}".encode() * 500, {"who": who, "i": i})
            print(manifest.version, flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def test_processes_sharing_a_directory_get_distinct_versions_and_notify_each_other(tmp_path, run, make_recorder):
    """Two real processes put the same task concurrently; an observer process (this one) is told."""
    count = 20

    async def scenario() -> None:
        observer = DirectorySubnetworkStore(tmp_path)
        seen = make_recorder()
        observer.subscribe(seen)
        await observer.start()
        try:
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
            writers = [
                subprocess.Popen(
                    [sys.executable, "-c", _WRITER, str(tmp_path), who, str(count)],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                for who in ("a", "b")
            ]
            for writer in writers:
                assert writer.stdout is not None
                assert await asyncio.to_thread(writer.stdout.readline) == "ready\n"
            (tmp_path / "go").touch()
            outputs = [(await asyncio.to_thread(writer.communicate, timeout=15))[0] for writer in writers]
            assert [writer.returncode for writer in writers] == [0, 0]
            per_writer = [[int(line) for line in output.split()] for output in outputs]
            assert sorted(per_writer[0] + per_writer[1]) == list(range(1, 2 * count + 1))

            await seen.wait_for(("shared", 2 * count), timeout=1.0)
            manifest, blob = await observer.get("shared")
            assert manifest.version == 2 * count
            assert blob == f"{manifest.info['who']}-{manifest.info['i']}".encode() * 500
            assert sorted(p.name for p in (tmp_path / "shared").glob("v*.bin")) == [f"v{2 * count}.bin"]
        finally:
            await observer.close()

    run(scenario())
