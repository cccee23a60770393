"""Subnetwork store in Redis, shared by every replica pointing at the same server and key prefix.

Keys (``P`` is the key prefix, ``ken:`` by default; task names contain no ``:``)::

    P manifest:{task}            hash: version, chunks (count), manifest (JSON: task, sha256, size,
                                 created, info)
    P version:{task}             last version ever committed; kept on delete so versions never repeat
    P blob:{task}:{version}:{i}  chunk i of that version's blob; immutable once committed
    P staging:{task}:{token}:{i} chunks of a put in progress, with a TTL so a crashed put cannot leak
    P tasks                      set of stored task names
    P events                     pub/sub channel of change events

A put uploads the blob in chunks of ``chunk_size`` bytes under staging keys (one command per chunk,
so every command stays small and well under Redis' 512 MB value limit), then a Lua script commits
atomically: it INCRements the version counter (two concurrent puts get distinct versions), renames
the staged chunks to their version-specific keys, switches the manifest, unlinks the previous
version's chunks and publishes the change event. (The scripts derive chunk key names themselves,
so this needs a standalone Redis or a replicated primary, not Redis Cluster.) A failed put
discards its staged chunks (or, when Redis is unreachable, leaves them to their TTL).

A reader reads the manifest, then the chunks of that version. Committed chunks never change, so
the chunks it gets are exactly that version's, but a concurrent put or delete may unlink them
between the two reads: the reader then re-reads the manifest and retries with the new version.

Every command runs under ``socket_timeout`` (connect: ``connect_timeout``), is retried at most once
and only after a connection error (never after a timeout), so an unreachable or hung Redis raises
StoreUnavailable within about one timeout. redis-py applies the timeout to a whole command, so one
chunk must cross the network *and be parsed* within ``socket_timeout``: with redis-py's pure-Python
parser a 64 MiB chunk takes about 1 s even on localhost, so the default is 4 MiB (measured no
slower; puts were faster). Raise it only with hiredis installed.

Change events are JSON ``{"task": ..., "version": int | null, "origin": <instance id>}``. The
listener started by ``start()`` reports events of other instances; those of this instance are
skipped because ``put``/``delete`` already reported them (see :mod:`service.store.base`). It
reconnects with exponential backoff after any failure, pings the server every
``keepalive_interval`` seconds to notice a silently dead connection, and, because events published
while it was disconnected are lost, after every reconnection it reports every task it knows of
(stored now, or stored before the disconnection) with its current version, or None if gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.store.base import (
    TASK_NAME_RE,
    ChangeCallback,
    ChangeNotifier,
    CorruptSubnetwork,
    StoredManifest,
    StoreUnavailable,
    TaskNotFound,
    normalise_info,
    sha256_hex,
    validate_task,
)

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "ken:"
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MAX_CHUNK_SIZE = 256 * 1024 * 1024  # half of Redis' 512 MB string limit
STAGING_TTL_S = 3600
# A reader retries this many times when concurrent puts keep replacing the version it reads.
READ_ATTEMPTS = 5
#: Chunk keys fetched per round trip when reading a blob.
CHUNKS_PER_READ = 16
#: How every error about stored data written by something else ends: the way out.
REPAIR = "upload the task again to repair it"
_MIN_BACKOFF_S = 0.1

# KEYS: version counter, manifest hash, task set.
# ARGV: task, chunk key prefix of the task, staging key prefix, chunk count, manifest JSON,
#       events channel, origin.
_COMMIT_LUA = """
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  if redis.call('EXISTS', ARGV[3] .. i) == 0 then
    return redis.error_reply('KEN_STAGING_LOST staged chunk ' .. i .. ' vanished before the commit')
  end
end
-- Whatever something else wrote here is repaired: a manifest key that is not a hash is replaced,
-- a version counter that is not an integer (or lags the manifest) restarts above the manifest's.
local old = redis.pcall('HMGET', KEYS[2], 'version', 'chunks')
if old.err then
  redis.call('DEL', KEYS[2])
  old = {}
end
local old_version = tonumber(old[1])
if old_version and (old_version < 1 or old_version % 1 ~= 0 or old_version >= 2^53) then
  old_version = nil
end
local version = redis.pcall('INCR', KEYS[1])
if type(version) ~= 'number' or version <= (old_version or 0) then
  version = (old_version or 0) + 1
  redis.call('SET', KEYS[1], version)
end
for i = 0, n - 1 do
  local key = ARGV[2] .. version .. ':' .. i
  redis.call('RENAME', ARGV[3] .. i, key)
  redis.call('PERSIST', key)
end
redis.call('HSET', KEYS[2], 'version', version, 'chunks', n, 'manifest', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[1])
if old[1] and old[1] ~= tostring(version) then
  -- up to the first missing chunk, whatever count the old manifest claims
  local i = 0
  while redis.call('UNLINK', ARGV[2] .. old[1] .. ':' .. i) == 1 do
    i = i + 1
  end
end
redis.call('PUBLISH', ARGV[6], cjson.encode({task = ARGV[1], version = version, origin = ARGV[7]}))
return version
"""

# KEYS: manifest hash, task set. ARGV: task, chunk key prefix of the task, events channel, origin.
_DELETE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
-- A manifest key that is not a hash, or lacks fields, is removed all the same (and reported unreadable).
local old = redis.pcall('HMGET', KEYS[1], 'version', 'chunks', 'manifest')
if old.err or not old[1] or not old[3] then
  old = {'', '', ''}
end
redis.call('DEL', KEYS[1])
redis.pcall('SREM', KEYS[2], ARGV[1])
if old[1] ~= '' then
  local i = 0
  while redis.call('UNLINK', ARGV[2] .. old[1] .. ':' .. i) == 1 do
    i = i + 1
  end
end
redis.call('PUBLISH', ARGV[3], cjson.encode({task = ARGV[1], version = cjson.null, origin = ARGV[4]}))
return old
"""


@contextlib.contextmanager
def _unavailable_on_redis_error(action: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise StoreUnavailable(f"redis store: {action} failed: {exc}") from exc


class RedisSubnetworkStore:
    """A :class:`~service.store.base.SubnetworkStore` backed by Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        socket_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        keepalive_interval: float = 5.0,
        max_backoff: float = 2.0,
    ) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
        timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
        # One immediate retry on a connection error, because the first command on a pooled connection
        # that Redis closed (e.g. across a restart) fails; none on timeouts, so that a hung Redis
        # fails within one timeout. Retrying is safe for every command used here: reads and staging
        # writes are idempotent, and a commit re-run after a lost reply finds its staged chunks gone
        # and fails instead of committing twice.
        once_on_disconnect = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._redis = Redis.from_url(url, retry=once_on_disconnect, **timeouts)
        # The event listener must see every disconnection (it resyncs after one), so redis-py must
        # not reconnect and resubscribe behind its back: no retries at all.
        self._events_redis = Redis.from_url(url, retry=Retry(NoBackoff(), 0), **timeouts)
        self._prefix = key_prefix
        self._chunk_size = chunk_size
        self._socket_timeout = socket_timeout
        self._keepalive_interval = keepalive_interval
        self._max_backoff = max_backoff
        self._channel = f"{key_prefix}events"
        self._tasks_key = f"{key_prefix}tasks"
        self._commit = self._redis.register_script(_COMMIT_LUA)
        self._delete = self._redis.register_script(_DELETE_LUA)
        self._instance_id = secrets.token_hex(8)
        self._notifier = ChangeNotifier()
        # Tasks this instance knows of, with their last seen version: reported after a reconnection.
        self._known: dict[str, int] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listener_settled = asyncio.Event()

    @property
    def instance_id(self) -> str:
        """The ``origin`` of the change events this instance publishes."""
        return self._instance_id

    # -- keys ------------------------------------------------------------------------------------

    def _manifest_key(self, task: str) -> str:
        return f"{self._prefix}manifest:{task}"

    def _version_key(self, task: str) -> str:
        return f"{self._prefix}version:{task}"

    def _chunk_prefix(self, task: str) -> str:
        return f"{self._prefix}blob:{task}:"

    def _chunk_keys(self, task: str, version: int, chunks: int) -> list[str]:
        return [f"{self._chunk_prefix(task)}{version}:{i}" for i in range(chunks)]

    # -- SubnetworkStore -------------------------------------------------------------------------

    async def put(self, task: str, blob: bytes, info: dict[str, Any]) -> StoredManifest:
        validate_task(task)
        info = normalise_info(info)
        digest = await asyncio.to_thread(sha256_hex, blob)  # tens of ms for large blobs: off the event loop
        created = datetime.now(timezone.utc)
        body = {"task": task, "sha256": digest, "size": len(blob), "created": created.isoformat(), "info": info}
        with _unavailable_on_redis_error(f"put of {task!r}"):
            await self._repair_task_set()
            version = await self._stage_and_commit(task, blob, json.dumps(body))
        manifest = StoredManifest(task, version, digest, len(blob), created, info)
        self._known[task] = version
        await self._notifier.notify(task, version)
        return manifest

    async def _stage_and_commit(self, task: str, blob: bytes, manifest_json: str) -> int:
        chunks = math.ceil(len(blob) / self._chunk_size)
        staging = f"{self._prefix}staging:{task}:{secrets.token_hex(8)}:"
        staged = [f"{staging}{i}" for i in range(chunks)]
        view = memoryview(blob)
        try:
            for i, key in enumerate(staged):
                piece = view[i * self._chunk_size : (i + 1) * self._chunk_size]
                await self._redis.set(key, piece, ex=STAGING_TTL_S)
            keys = [self._version_key(task), self._manifest_key(task), self._tasks_key]
            args = [task, self._chunk_prefix(task), staging, chunks, manifest_json]
            return int(await self._commit(keys=keys, args=[*args, self._channel, self._instance_id]))
        except (RedisConnectionError, RedisTimeoutError):
            raise  # cleaning up would only wait for another timeout; the staging TTL reclaims the chunks
        except BaseException:
            if staged:
                with contextlib.suppress(RedisError):
                    await self._redis.delete(*staged)
            raise

    async def get(self, task: str) -> tuple[StoredManifest, bytes]:
        validate_task(task)
        missing_in: int | None = None
        with _unavailable_on_redis_error(f"get of {task!r}"):
            for _ in range(READ_ATTEMPTS):
                manifest, chunks = await self._read_manifest(task)
                if manifest.version == missing_in:
                    raise CorruptSubnetwork(
                        f"task {task!r} v{manifest.version}: chunk(s) missing under "
                        f"{self._chunk_prefix(task)}{manifest.version}:*; {REPAIR}"
                    )
                parts = await self._read_chunks(manifest, chunks)
                if parts is None:
                    missing_in = manifest.version  # unlinked by a concurrent put or delete, or lost
                    continue
                return manifest, await asyncio.to_thread(_assemble, manifest, parts, self._chunk_prefix(task))
        raise StoreUnavailable(f"task {task!r} changed {READ_ATTEMPTS} times while being read")

    async def _read_chunks(self, manifest: StoredManifest, chunks: int) -> list[bytes] | None:
        """The version's chunks, or None if one is missing. Read a few at a time, so a count that
        something else wrote (a billion) costs one batch past the chunks that exist, not a billion keys."""
        parts: list[bytes] = []
        received = 0
        for start in range(0, chunks, CHUNKS_PER_READ):
            prefix = f"{self._chunk_prefix(manifest.task)}{manifest.version}:"
            keys = [f"{prefix}{i}" for i in range(start, min(chunks, start + CHUNKS_PER_READ))]
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                replies = await pipe.execute(raise_on_error=False)
            for key, reply in zip(keys, replies, strict=True):
                if reply is None:
                    return None
                if isinstance(reply, Exception):
                    raise CorruptSubnetwork(
                        f"task {manifest.task!r}: chunk key {key!r} is unreadable ({reply}); {REPAIR}"
                    )
                received += len(reply)
                if received > manifest.size:
                    raise CorruptSubnetwork(
                        f"task {manifest.task!r} v{manifest.version}: chunks up to {key!r} hold more than the "
                        f"manifest's {manifest.size} bytes; {REPAIR}"
                    )
                parts.append(reply)
        return parts

    async def manifest(self, task: str) -> StoredManifest:
        validate_task(task)
        with _unavailable_on_redis_error(f"manifest of {task!r}"):
            manifest, _ = await self._read_manifest(task)
        return manifest

    async def list(self) -> list[StoredManifest]:
        with _unavailable_on_redis_error("list"):
            tasks = await self._task_names()
            async with self._redis.pipeline(transaction=False) as pipe:
                for task in tasks:
                    pipe.hmget(self._manifest_key(task), "version", "chunks", "manifest")
                rows = await pipe.execute(raise_on_error=False)
        manifests = []
        for task, row in zip(tasks, rows, strict=True):
            key = self._manifest_key(task)
            try:
                if isinstance(row, Exception):
                    raise CorruptSubnetwork(f"task {task!r}: key {key!r} is not a hash ({row}); {REPAIR}")
                if row[0] is None:
                    continue  # deleted between the two reads
                manifests.append(_parse_manifest(task, key, *row)[0])
            except CorruptSubnetwork as exc:
                logger.warning("listing skips task %r: %s", task, exc)
        return manifests

    async def _task_names(self) -> list[str]:
        """The task set's valid names; if something else replaced the set, the names of the manifest keys."""
        try:
            members = await self._redis.smembers(self._tasks_key)
        except ResponseError as exc:
            logger.warning("task set %r is unreadable (%s): listing the manifest keys instead", self._tasks_key, exc)
            prefix = self._manifest_key("")
            members = {key[len(prefix) :] async for key in self._redis.scan_iter(match=f"{prefix}*", count=1000)}
        names = set()
        for member in members:
            name = member.decode("utf-8", "replace")
            if TASK_NAME_RE.fullmatch(name):
                names.add(name)
            else:
                logger.warning("task set %r holds %r, which is not a task name: skipped", self._tasks_key, member[:80])
        return sorted(names)

    async def _repair_task_set(self) -> None:
        """Before a commit: a task set that something else replaced is rebuilt from the manifest keys."""
        kind = await self._redis.type(self._tasks_key)
        if kind in (b"set", b"none"):
            return
        names = await self._task_names()  # falls back to the manifest keys
        logger.warning(
            "rebuilding task set %r (it was a %s) with %d task(s)", self._tasks_key, kind.decode(), len(names)
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._tasks_key)
            if names:
                pipe.sadd(self._tasks_key, *names)
            await pipe.execute()

    async def delete(self, task: str) -> StoredManifest:
        validate_task(task)
        with _unavailable_on_redis_error(f"delete of {task!r}"):
            keys = [self._manifest_key(task), self._tasks_key]
            args = [task, self._chunk_prefix(task), self._channel, self._instance_id]
            old = await self._delete(keys=keys, args=args)
        if old is None:
            raise TaskNotFound(task)
        self._known.pop(task, None)
        await self._notifier.notify(task, None)
        manifest, _ = _parse_manifest(task, keys[0], *old)  # if unreadable: deleted all the same, then raises
        return manifest

    async def ping(self) -> None:
        with _unavailable_on_redis_error("ping"):
            await self._redis.ping()

    def subscribe(self, callback: ChangeCallback) -> None:
        self._notifier.add(callback)

    async def start(self) -> None:
        """Start the event listener and wait for its first connection attempt to succeed or fail.

        If Redis is unreachable this still returns (after about one timeout) and the listener keeps
        trying in the background; ``ping()`` tells whether the store is usable.
        """
        if self._listener is not None and not self._listener.done():
            return
        self._listener_settled.clear()
        self._listener = asyncio.create_task(self._listen_forever(), name=f"ken-store-events:{self._instance_id}")
        await self._listener_settled.wait()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._events_redis.aclose()
        await self._redis.aclose()

    # -- reads -----------------------------------------------------------------------------------

    async def _read_manifest(self, task: str) -> tuple[StoredManifest, int]:
        key = self._manifest_key(task)
        try:
            version, chunks, body = await self._redis.hmget(key, "version", "chunks", "manifest")
        except ResponseError as exc:  # WRONGTYPE: something else wrote another kind of value there
            raise CorruptSubnetwork(f"task {task!r}: key {key!r} is not a hash ({exc}); {REPAIR}") from None
        if version is None and chunks is None and body is None:
            raise TaskNotFound(task)
        return _parse_manifest(task, key, version, chunks, body)

    # -- change listener -------------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        backoff = _MIN_BACKOFF_S
        missed_events = False  # whether events may have been published while we were not subscribed
        while True:
            pubsub = self._events_redis.pubsub()
            try:
                await self._subscribe(pubsub)
                await self._resync(report=missed_events)
                self._listener_settled.set()
                backoff = _MIN_BACKOFF_S
                await self._pump(pubsub)
            except (RedisError, StoreUnavailable) as exc:
                logger.warning("store event listener: %s; reconnecting in %.1f s", exc, backoff)
            except Exception:  # a bug must not silently end change notifications: log it and go on
                logger.exception("store event listener failed; restarting in %.1f s", backoff)
            finally:
                self._listener_settled.set()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            missed_events = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _subscribe(self, pubsub: PubSub) -> None:
        await pubsub.subscribe(self._channel)
        # Wait for the confirmation: only then can no later event be missed by the resync's listing.
        reply = await pubsub.get_message(timeout=self._socket_timeout)
        if reply is None or reply["type"] != "subscribe":
            raise RedisTimeoutError(f"no confirmation of the subscription to {self._channel} (got {reply!r})")

    async def _resync(self, *, report: bool) -> None:
        """Refresh the known versions; with ``report``, report every known task (events may be lost)."""
        current = {m.task: m.version for m in await self.list()}
        previous, self._known = self._known, dict(current)
        if report:
            for task in sorted(current.keys() | previous.keys()):
                await self._notifier.notify(task, current.get(task))

    async def _pump(self, pubsub: PubSub) -> None:
        """Dispatch events until the connection fails (this only returns by raising)."""
        loop = asyncio.get_running_loop()
        last_heard = last_ping = loop.time()
        while True:
            if loop.time() - last_ping >= self._keepalive_interval:
                await pubsub.ping()
                last_ping = loop.time()
            message = await pubsub.get_message(timeout=min(1.0, self._keepalive_interval))
            if message is not None:
                last_heard = loop.time()
                if message["type"] == "message":
                    await self._on_event(message["data"])
            elif loop.time() - last_heard > self._keepalive_interval + self._socket_timeout:
                raise RedisTimeoutError("the event connection stopped answering pings")

    async def _on_event(self, data: bytes) -> None:
        try:
            event = json.loads(data)
            task = validate_task(event["task"])
            version = event["version"]
            origin = event["origin"]
            if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
                raise ValueError(f"bad version {version!r}")
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring malformed store event %r: %s", data, exc)
            return
        if origin == self._instance_id or self._known.get(task) == version:
            return  # reported already: by our own put/delete, or by a resync that saw it
        if version is None:
            del self._known[task]
        else:
            self._known[task] = version
        await self._notifier.notify(task, version)


def _assemble(manifest: StoredManifest, parts: list[bytes], chunk_prefix: str) -> bytes:
    blob = b"".join(parts)
    try:
        manifest.verify(blob)
    except CorruptSubnetwork as exc:
        raise CorruptSubnetwork(f"{exc} (chunks {chunk_prefix}{manifest.version}:*); {REPAIR}") from None
    return blob


def _parse_manifest(
    task: str, key: str, version: bytes | None, chunks: bytes | None, body: bytes | None
) -> tuple[StoredManifest, int]:
    """The manifest and chunk count from the fields of the manifest hash ``key``, checked for sense."""

    def corrupt(problem: str) -> CorruptSubnetwork:
        return CorruptSubnetwork(f"task {task!r}: manifest {key!r} {problem}; {REPAIR}")

    try:
        data = json.loads(body)  # type: ignore[arg-type]  # None: the field is missing
        version_number = int(version)  # type: ignore[arg-type]
        chunk_count = int(chunks)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError) as exc:
        raise corrupt(f"is unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise corrupt(f"holds a JSON {type(data).__name__}, not an object")
    if not 0 < version_number < 2**53:
        raise corrupt(f"has version {version_number}, not a positive integer below 2**53")
    data["version"] = version_number
    try:
        manifest = StoredManifest.from_json_dict(data, task=task)
    except CorruptSubnetwork as exc:
        raise corrupt(f"is unusable: {exc}") from None
    fewest = math.ceil(manifest.size / MAX_CHUNK_SIZE)
    if not fewest <= chunk_count <= manifest.size:
        raise corrupt(f"claims {chunk_count} chunks for {manifest.size} bytes")
    return manifest, chunk_count
