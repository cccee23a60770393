"""Behaviour every SubnetworkStore must have, run against both backends (the ``backend`` fixture).

Redis-backed stores here use 1 KiB chunks, so the few-KiB blobs below span several chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import datetime, timedelta, timezone

import pytest

from service.store import CorruptSubnetwork, StoredManifest, SubnetworkStore, TaskNotFound

BLOB = os.urandom(5000)
INFO = {"k": 0.1, "method": "ken", "labels": ["neg", "pos"]}

INVALID_NAMES = ["", "A", "Task", "-x", ".x", "_x", "a/b", "../x", "a" * 65, "a b", "x:y", "é", "a\n"]
VALID_NAMES = ["a", "0", "a" * 64, "sst2.v1_b-c"]


def test_backend_satisfies_protocol(backend):
    assert isinstance(backend.new_store(), SubnetworkStore)


def test_put_get_round_trip(backend, run):
    async def scenario() -> None:
        async with backend.replica() as store:
            before = datetime.now(timezone.utc)
            stored = await store.put("sst2", BLOB, INFO)
            manifest, blob = await store.get("sst2")
            assert blob == BLOB
            assert manifest == stored
            assert (manifest.task, manifest.version, manifest.size) == ("sst2", 1, len(BLOB))
            assert manifest.sha256 == hashlib.sha256(BLOB).hexdigest()
            assert manifest.info == INFO
            assert manifest.created.tzinfo is not None
            assert before - timedelta(seconds=1) <= manifest.created <= datetime.now(timezone.utc)
            assert await store.manifest("sst2") == stored

    run(scenario())


def test_empty_blob_round_trip(backend, run):
    async def scenario() -> None:
        async with backend.replica() as store:
            await store.put("empty", b"", {})
            manifest, blob = await store.get("empty")
            assert (blob, manifest.size) == (b"", 0)

    run(scenario())


def test_info_is_copied_and_must_be_json(backend, run):
    async def scenario() -> None:
        async with backend.replica() as store:
            info = {"labels": ["a"]}
            stored = await store.put("t", BLOB, info)
            info["labels"].append("mutated")
            assert (await store.manifest("t")).info == stored.info == {"labels": ["a"]}
            for bad in ({"x": object()}, {"x": float("nan")}, ["not", "a", "dict"]):
                with pytest.raises(ValueError):
                    await store.put("t", BLOB, bad)  # type: ignore[arg-type]
            assert (await store.manifest("t")).version == 1

    run(scenario())


def test_versions_increase_and_old_data_is_removed(backend, run):
    async def scenario() -> None:
        async with backend.replica() as store:
            versions = [(await store.put("t", bytes([i]) * 3000, {"i": i})).version for i in range(3)]
            assert versions == [1, 2, 3]
            manifest, blob = await store.get("t")
            assert (manifest.version, manifest.info, blob) == (3, {"i": 2}, bytes([2]) * 3000)
            assert backend.blob_versions("t") == {3}

    run(scenario())


def test_list_is_sorted_and_manifest_matches_put(backend, run):
    async def scenario() -> None:
        async with backend.replica() as store:
            assert await store.list() == []
            stored = {task: await store.put(task, BLOB, {"name": task}) for task in ["b-task", "c_1", "a.task"]}
            listed = await store.list()
            assert [m.task for m in listed] == ["a.task", "b-task", "c_1"]
            assert listed == [stored[m.task] for m in listed]
            for task, manifest in stored.items():
                assert await store.manifest(task) == manifest

    run(scenario())


def test_delete_returns_manifest_and_versions_never_repeat(backend, run):
    async def scenario() -> None:
        async with backend.replica() as store:
            await store.put("t", BLOB, {})
            second = await store.put("t", BLOB[:100], {})
            assert await store.delete("t") == second
            assert await store.list() == []
            assert backend.blob_versions("t") == set()
            for operation in (store.get, store.manifest, store.delete):
                with pytest.raises(TaskNotFound):
                    await operation("t")
            again = await store.put("t", BLOB, {})
            assert again.version == 3  # not 1: a replica holding v1 must see this as a change

    run(scenario())


def test_unknown_task_raises_task_not_found(backend, run):
    async def scenario() -> None:
        async with backend.replica() as store:
            await store.put("other", BLOB, {})
            for operation in (store.get, store.manifest, store.delete):
                with pytest.raises(TaskNotFound) as excinfo:
                    await operation("missing")
                assert isinstance(excinfo.value, KeyError)
                assert "missing" in str(excinfo.value)

    run(scenario())


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_task_names_are_refused(backend, run, name):
    async def scenario() -> None:
        async with backend.replica() as store:
            with pytest.raises(ValueError):
                await store.put(name, BLOB, {})
            for operation in (store.get, store.manifest, store.delete):
                with pytest.raises(ValueError):
                    await operation(name)
            assert await store.list() == []

    run(scenario())


def test_valid_edge_case_names_are_accepted(backend, run):
    async def scenario() -> None:
        async with backend.replica() as store:
            for name in VALID_NAMES:
                await store.put(name, BLOB, {})
            assert [m.task for m in await store.list()] == sorted(VALID_NAMES)

    run(scenario())


def test_corrupt_data_is_detected(backend, run):
    async def scenario() -> None:
        async with backend.replica() as store:
            await store.put("t", BLOB, {})
            backend.corrupt_blob("t", 1)
            with pytest.raises(CorruptSubnetwork):
                await store.get("t")
            assert (await store.manifest("t")).version == 1  # the manifest itself is fine
            await store.put("t", BLOB, {})  # overwriting repairs the task
            assert (await store.get("t"))[1] == BLOB

    run(scenario())


def test_missing_data_is_detected(backend, run):
    async def scenario() -> None:
        async with backend.replica() as store:
            await store.put("t", BLOB, {})
            backend.drop_blob("t", 1)
            with pytest.raises(CorruptSubnetwork):
                await store.get("t")

    run(scenario())


def test_unreadable_manifest_is_reported_skipped_and_still_deletable(backend, run, make_recorder):
    async def scenario() -> None:
        async with backend.replica() as store:
            seen = make_recorder()
            store.subscribe(seen)
            await store.put("good", BLOB, {})
            await store.put("bad", BLOB, {})
            backend.corrupt_manifest("bad")
            for operation in (store.get, store.manifest):
                with pytest.raises(CorruptSubnetwork):
                    await operation("bad")
            assert [m.task for m in await store.list()] == ["good"]
            with pytest.raises(CorruptSubnetwork):
                await store.delete("bad")
            assert seen.events[-1] == ("bad", None)
            with pytest.raises(TaskNotFound):
                await store.manifest("bad")
            assert backend.blob_versions("bad") == set()
            assert (await store.put("bad", BLOB, {})).version == 2

    run(scenario())


def test_concurrent_puts_from_two_instances_get_distinct_versions(backend, run):
    async def scenario() -> None:
        async with backend.replica() as first, backend.replica() as second:
            blobs = {f"{who}{i}": os.urandom(2500) for who in "ab" for i in range(8)}
            puts = [
                (first if name.startswith("a") else second).put("t", blob, {"name": name})
                for name, blob in blobs.items()
            ]
            manifests = await asyncio.gather(*puts)
            assert sorted(m.version for m in manifests) == list(range(1, len(blobs) + 1))
            last = max(manifests, key=lambda m: m.version)
            for store in (first, second):
                manifest, blob = await store.get("t")
                assert manifest == last
                assert blob == blobs[last.info["name"]]
            assert backend.blob_versions("t") == {last.version}

    run(scenario())


def test_readers_never_see_a_partial_or_mixed_subnetwork(backend, run):
    async def scenario() -> None:
        async with backend.replica() as writer, backend.replica() as reader:
            blobs = [os.urandom(6000) for _ in range(16)]
            await writer.put("t", blobs[0], {"n": 0})
            done = asyncio.Event()

            async def write() -> None:
                for n in range(1, len(blobs)):
                    await writer.put("t", blobs[n], {"n": n})
                done.set()

            async def read() -> int:
                reads = 0
                while not done.is_set():
                    manifest, blob = await reader.get("t")
                    assert blob == blobs[manifest.info["n"]]
                    reads += 1
                return reads

            _, *reads = await asyncio.gather(write(), read(), read())
            assert sum(reads) > 0

    run(scenario())


def test_other_replica_is_notified_of_put_and_delete_within_a_second(backend, run, make_recorder):
    async def scenario() -> None:
        async with backend.replica() as uploader, backend.replica() as replica:
            seen = make_recorder()
            replica.subscribe(seen)
            await uploader.put("t", BLOB, {})
            assert await seen.wait_for(("t", 1), timeout=1.0) < 1.0
            await uploader.put("t", BLOB, {})
            await seen.wait_for(("t", 2), timeout=1.0)
            await uploader.delete("t")
            await seen.wait_for(("t", None), timeout=1.0)
            assert seen.events == [("t", 1), ("t", 2), ("t", None)]

    run(scenario())


def test_own_changes_are_reported_once_before_the_call_returns(backend, run, make_recorder):
    async def scenario() -> None:
        async with backend.replica() as store:
            seen, plain_calls = make_recorder(), []
            store.subscribe(seen)
            store.subscribe(lambda task, version: plain_calls.append((task, version)))  # sync callbacks too
            await store.put("t", BLOB, {})
            assert seen.events == [("t", 1)]
            await store.delete("t")
            assert seen.events == [("t", 1), ("t", None)]
            await asyncio.sleep(1.2)  # longer than the poll interval / pub-sub round trip: no echo
            assert seen.events == plain_calls == [("t", 1), ("t", None)]

    run(scenario())


def test_a_failing_callback_does_not_break_the_store_or_other_callbacks(backend, run, make_recorder):
    async def scenario() -> None:
        async with backend.replica() as uploader, backend.replica() as replica:

            def broken(task: str, version: int | None) -> None:
                raise RuntimeError("subscriber bug")

            mine, theirs = make_recorder(), make_recorder()
            for store, recorder in ((uploader, mine), (replica, theirs)):
                store.subscribe(broken)
                store.subscribe(recorder)
            await uploader.put("t", BLOB, {})
            await uploader.put("t", BLOB, {})
            assert mine.events == [("t", 1), ("t", 2)]
            await theirs.wait_for(("t", 2))

    run(scenario())


def test_ping_start_and_close_are_idempotent(backend, run):
    async def scenario() -> None:
        store = backend.new_store()
        await store.start()
        await store.start()
        await store.ping()
        await store.close()
        await store.close()

    run(scenario())


def test_manifest_is_a_frozen_value(backend, run):
    async def scenario() -> StoredManifest:
        async with backend.replica() as store:
            return await store.put("t", BLOB, {})

    manifest = run(scenario())
    with pytest.raises(AttributeError):
        manifest.version = 2  # type: ignore[misc]
