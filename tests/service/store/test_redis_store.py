"""RedisSubnetworkStore specifics: key layout, staging cleanup, events, and faults of a real server."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from redis.exceptions import ResponseError

from service.store import RedisSubnetworkStore, StoreUnavailable, TaskNotFound, open_store
from service.store.redis_store import MAX_CHUNK_SIZE
from tests.redis_server import RedisServer

CHUNK = 1024


def new_store(url: str, prefix: str = "ken:", **options) -> RedisSubnetworkStore:
    return RedisSubnetworkStore(url, key_prefix=prefix, chunk_size=CHUNK, **options)


def keys(client, prefix: str) -> set[str]:
    return {key.decode()[len(prefix) :] for key in client.scan_iter(match=f"{prefix}*")}


def test_key_layout_versions_and_cleanup(redis_server, redis_client, key_prefix, run):
    async def scenario() -> None:
        store = new_store(redis_server.url, key_prefix)
        try:
            await store.put("t", os.urandom(3 * CHUNK + 500), {})
            assert keys(redis_client, key_prefix) == {
                "manifest:t", "version:t", "tasks", *(f"blob:t:1:{i}" for i in range(4))
            }  # fmt: skip
            assert all(redis_client.ttl(f"{key_prefix}blob:t:1:{i}") == -1 for i in range(4))
            await store.put("t", os.urandom(2 * CHUNK), {})
            assert keys(redis_client, key_prefix) == {"manifest:t", "version:t", "tasks", "blob:t:2:0", "blob:t:2:1"}
            assert redis_client.smembers(f"{key_prefix}tasks") == {b"t"}
            await store.delete("t")
            assert keys(redis_client, key_prefix) == {"version:t"}  # kept so versions never repeat
        finally:
            await store.close()

    run(scenario())


def test_key_prefixes_isolate_deployments(redis_server, key_prefix, run):
    async def scenario() -> None:
        blue, green = new_store(redis_server.url, key_prefix + "blue:"), new_store(redis_server.url, key_prefix)
        try:
            await blue.put("t", b"blue", {})
            assert await green.list() == []
            with pytest.raises(TaskNotFound):
                await green.get("t")
        finally:
            await blue.close()
            await green.close()

    run(scenario())


def test_failed_commit_discards_staged_chunks(redis_server, redis_client, key_prefix, run):
    async def scenario() -> None:
        store = new_store(redis_server.url, key_prefix)

        async def failing_commit(**_: object) -> None:
            raise ResponseError("ERR the commit script failed")

        store._commit = failing_commit  # type: ignore[method-assign]
        try:
            with pytest.raises(StoreUnavailable, match="commit script failed"):
                await store.put("t", os.urandom(5 * CHUNK), {})
        finally:
            await store.close()
        assert keys(redis_client, key_prefix) == set()  # no staged chunk, no version bump

    run(scenario())


def test_chunk_size_is_validated():
    for size in (0, -1, MAX_CHUNK_SIZE + 1):
        with pytest.raises(ValueError):
            RedisSubnetworkStore("redis://127.0.0.1:1/0", chunk_size=size)


def test_open_store_with_redis_url_uses_redis(redis_server, tmp_path, run):
    store = open_store(redis_server.url, tmp_path, key_prefix="x:")
    assert isinstance(store, RedisSubnetworkStore)
    run(store.close())


def test_malformed_events_are_ignored(redis_server, redis_client, key_prefix, run, make_recorder):
    async def scenario() -> None:
        listener, uploader = new_store(redis_server.url, key_prefix), new_store(redis_server.url, key_prefix)
        seen = make_recorder()
        listener.subscribe(seen)
        await listener.start()
        try:
            for junk in (b"\xff", b"[]", b'{"task": "../x", "version": 1, "origin": "o"}', b'{"task": "t"}'):
                redis_client.publish(f"{key_prefix}events", junk)
            await uploader.put("t", b"x", {})
            await seen.wait_for(("t", 1))
            assert seen.events == [("t", 1)]
        finally:
            await listener.close()
            await uploader.close()

    run(scenario())


async def _assert_unavailable_fast(operation, limit_s: float = 3.0) -> None:
    start = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await operation
    assert time.monotonic() - start < limit_s


def test_stopped_redis_fails_fast_and_everything_recovers_after_restart(fault_redis: RedisServer, run, make_recorder):
    async def scenario() -> None:
        replica, uploader = new_store(fault_redis.url), new_store(fault_redis.url)
        seen = make_recorder()
        replica.subscribe(seen)
        await replica.start()
        await uploader.start()
        try:
            await uploader.put("alpha", b"a" * 3000, {})
            await seen.wait_for(("alpha", 1))

            fault_redis.stop()
            for operation in (
                uploader.put("beta", b"b" * 3000, {}),
                uploader.get("alpha"),
                uploader.manifest("alpha"),
                uploader.list(),
                uploader.delete("alpha"),
                uploader.ping(),
            ):
                await _assert_unavailable_fast(operation)

            fault_redis.restart()  # comes back empty: the store lost "alpha"
            # The listener reconnects (backoff <= 2 s) and, having possibly missed events, reports
            # every task it knew of with its current state.
            await seen.wait_for(("alpha", None), timeout=4.0)
            await uploader.ping()
            await uploader.put("beta", b"b" * 3000, {})
            await seen.wait_for(("beta", 1), timeout=1.0)
            assert (await replica.get("beta"))[1] == b"b" * 3000
        finally:
            await replica.close()
            await uploader.close()

    run(scenario())


def test_frozen_redis_times_out_instead_of_hanging(fault_redis: RedisServer, run, make_recorder):
    async def scenario() -> None:
        default = RedisSubnetworkStore(fault_redis.url)  # default 2 s timeouts
        quick = new_store(fault_redis.url, socket_timeout=0.3, connect_timeout=0.3, keepalive_interval=0.3)
        uploader = new_store(fault_redis.url)
        seen = make_recorder()
        quick.subscribe(seen)
        await quick.start()
        try:
            fault_redis.freeze()
            await _assert_unavailable_fast(default.ping())
            await _assert_unavailable_fast(quick.get("t"), limit_s=1.0)
            await asyncio.sleep(1.0)  # the listener notices the silence and starts reconnecting
            fault_redis.thaw()
            await default.ping()
            await uploader.put("t", b"x", {})
            await seen.wait_for(("t", 1), timeout=3.0)
        finally:
            fault_redis.thaw()
            for store in (default, quick, uploader):
                await store.close()

    run(scenario())


def test_start_while_redis_is_down_returns_and_connects_later(fault_redis: RedisServer, run, make_recorder):
    async def scenario() -> None:
        fault_redis.stop()
        replica = new_store(fault_redis.url)
        seen = make_recorder()
        replica.subscribe(seen)
        start = time.monotonic()
        await replica.start()
        assert time.monotonic() - start < 3.0
        try:
            await _assert_unavailable_fast(replica.ping())
            fault_redis.restart()
            uploader = new_store(fault_redis.url)
            try:
                await uploader.put("t", b"x", {})
                await seen.wait_for(("t", 1), timeout=4.0)  # via the resync or the event, either way
            finally:
                await uploader.close()
            await replica.ping()
        finally:
            await replica.close()

    run(scenario())


def test_first_commands_after_a_restart_succeed(fault_redis: RedisServer, run):
    """Pooled connections that Redis closed must not turn the first requests after a restart into 503s."""

    async def scenario() -> None:
        store = new_store(fault_redis.url)
        try:
            await store.put("t", b"x" * 3000, {})
            await store.list()
            fault_redis.restart()
            assert await store.list() == []
            await store.put("t", b"y" * 3000, {})
            assert (await store.get("t"))[1] == b"y" * 3000
            fault_redis.restart()
            await store.put("t", b"z", {})  # the commit script is gone from the new server's cache too
            fault_redis.restart()
            with pytest.raises(TaskNotFound):
                await store.delete("t")
        finally:
            await store.close()

    run(scenario())
