"""Subnetwork store in a directory, safe to share between processes on one POSIX host.

Layout, one directory per task::

    {root}/{task}/manifest.json    current manifest (JSON), switched atomically with os.replace
    {root}/{task}/v{version}.bin   the blob of that version; only the current one survives a put
    {root}/{task}/.last-version    highest version ever committed, so versions never repeat
    {root}/{task}/.lock            flock(2) target serialising writers across processes

A put writes and fsyncs ``v{N}.bin`` first, then replaces ``manifest.json`` (temp file, fsync,
``os.replace``, fsync of the directory), so a reader that finds a manifest always finds its complete
blob, unless a later put removed it in between, in which case the reader re-reads the manifest.
The task directory and its lock file are never removed (deleting a file another process may be
about to flock is a classic race); a deleted task is a directory without ``manifest.json``.

Writers of one task are serialised by an asyncio lock (within this instance, so that waiting does
not tie up worker threads) and by ``flock`` on ``.lock`` (across instances and processes). Readers
take no lock. All file I/O runs in worker threads (``asyncio.to_thread``).

Other instances' changes are noticed by polling the manifests' versions every ``poll_interval``
seconds once ``start()`` has been called.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

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

MANIFEST_NAME = "manifest.json"
LAST_VERSION_NAME = ".last-version"
LOCK_NAME = ".lock"
DEFAULT_POLL_INTERVAL_S = 0.5
# A reader retries this many times when a concurrent put removes the blob it was about to read.
READ_ATTEMPTS = 5

_BLOB_NAME_RE = re.compile(r"^v[0-9]+\.bin$")
T = TypeVar("T")


class DirectorySubnetworkStore:
    """A :class:`~service.store.base.SubnetworkStore` keeping its data under ``root``."""

    def __init__(self, root: Path | str, *, poll_interval: float = DEFAULT_POLL_INTERVAL_S) -> None:
        self._root = Path(root)
        self._poll_interval = poll_interval
        self._notifier = ChangeNotifier()
        self._locks: dict[str, asyncio.Lock] = {}
        # Versions as last reported to the callbacks; the poller reports the differences.
        self._known: dict[str, int] = {}
        # Per-task count of this instance's own changes, so a poll racing with one is discarded.
        self._local_changes: dict[str, int] = {}
        self._poller: asyncio.Task[None] | None = None

    @property
    def root(self) -> Path:
        return self._root

    # -- SubnetworkStore -------------------------------------------------------------------------

    async def put(self, task: str, blob: bytes, info: dict[str, Any]) -> StoredManifest:
        validate_task(task)
        info = normalise_info(info)
        async with self._task_lock(task):
            manifest = await self._io(self._put_sync, task, blob, info)
            self._record_local_change(task, manifest.version)
        await self._notifier.notify(task, manifest.version)
        return manifest

    async def get(self, task: str) -> tuple[StoredManifest, bytes]:
        validate_task(task)
        return await self._io(self._get_sync, task)

    async def manifest(self, task: str) -> StoredManifest:
        validate_task(task)
        return await self._io(self._read_manifest_sync, task)

    async def list(self) -> list[StoredManifest]:
        return await self._io(self._list_sync)

    async def delete(self, task: str) -> StoredManifest:
        validate_task(task)
        async with self._task_lock(task):
            outcome = await self._io(self._delete_sync, task)
            self._record_local_change(task, None)
        await self._notifier.notify(task, None)
        if isinstance(outcome, CorruptSubnetwork):
            raise outcome  # the task is deleted all the same
        return outcome

    async def ping(self) -> None:
        await self._io(self._ping_sync)

    def subscribe(self, callback: ChangeCallback) -> None:
        self._notifier.add(callback)

    async def start(self) -> None:
        """Create ``root`` if needed and start polling for other instances' changes."""
        if self._poller is not None and not self._poller.done():
            return
        await self._io(self._root.mkdir, parents=True, exist_ok=True)
        self._known = await self._io(self._scan_versions_sync)
        self._poller = asyncio.create_task(self._poll_forever(), name=f"ken-store-poll:{self._root}")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    # -- change detection ------------------------------------------------------------------------

    def _task_lock(self, task: str) -> asyncio.Lock:
        return self._locks.setdefault(task, asyncio.Lock())

    def _record_local_change(self, task: str, version: int | None) -> None:
        if version is None:
            self._known.pop(task, None)
        else:
            self._known[task] = version
        self._local_changes[task] = self._local_changes.get(task, 0) + 1

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            changes_before = dict(self._local_changes)
            try:
                current = await self._io(self._scan_versions_sync)
            except StoreUnavailable as exc:
                logger.warning("directory store poll failed: %s", exc)
                continue
            for task in sorted(current.keys() | self._known.keys()):
                version = current.get(task)
                if version == self._known.get(task) or self._busy_locally(task, changes_before):
                    continue
                if version is None:
                    del self._known[task]
                else:
                    self._known[task] = version
                await self._notifier.notify(task, version)

    def _busy_locally(self, task: str, changes_before: dict[str, int]) -> bool:
        """Whether this instance is changing ``task`` or changed it since the scan began: such a
        change reports itself, and the scan may predate it."""
        lock = self._locks.get(task)
        locked = lock is not None and lock.locked()
        return locked or self._local_changes.get(task) != changes_before.get(task)

    # -- blocking helpers, run in worker threads --------------------------------------------------

    async def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking file I/O in a thread; I/O errors mean the store is unusable (503)."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except OSError as exc:
            raise StoreUnavailable(f"directory store {self._root}: {exc}") from exc

    def _put_sync(self, task: str, blob: bytes, info: dict[str, Any]) -> StoredManifest:
        task_dir = self._root / task
        task_dir.mkdir(parents=True, exist_ok=True)
        with _flocked(task_dir / LOCK_NAME):
            version = self._last_version_sync(task_dir) + 1
            blob_name = f"v{version}.bin"
            # Nothing references this file until the manifest switch below, so no temp name needed;
            # a leftover from a crashed put of the same version is simply overwritten.
            _write_durably(task_dir / blob_name, blob)
            manifest = StoredManifest(
                task=task,
                version=version,
                sha256=sha256_hex(blob),
                size=len(blob),
                created=datetime.now(timezone.utc),
                info=info,
            )
            _replace_durably(task_dir / MANIFEST_NAME, json.dumps(manifest.to_json_dict()).encode())
            _replace_durably(task_dir / LAST_VERSION_NAME, str(version).encode())
            _remove_blobs(task_dir, keep=blob_name)
        return manifest

    def _delete_sync(self, task: str) -> StoredManifest | CorruptSubnetwork:
        """Delete the task; its manifest, or the error that made the manifest unreadable (an
        unreadable task must stay removable)."""
        task_dir = self._root / task
        if not task_dir.is_dir():
            raise TaskNotFound(task)
        with _flocked(task_dir / LOCK_NAME):
            outcome: StoredManifest | CorruptSubnetwork
            try:
                outcome = self._read_manifest_sync(task)
            except CorruptSubnetwork as exc:
                outcome = exc
            if isinstance(outcome, StoredManifest) and outcome.version > _read_int(task_dir / LAST_VERSION_NAME):
                _replace_durably(task_dir / LAST_VERSION_NAME, str(outcome.version).encode())
            (task_dir / MANIFEST_NAME).unlink()
            _fsync_dir(task_dir)
            _remove_blobs(task_dir, keep=None)
        return outcome

    def _get_sync(self, task: str) -> tuple[StoredManifest, bytes]:
        missing_in: int | None = None
        for _ in range(READ_ATTEMPTS):
            manifest = self._read_manifest_sync(task)
            if manifest.version == missing_in:
                raise CorruptSubnetwork(f"task {task!r} v{manifest.version}: blob file is missing")
            try:
                blob = (self._root / task / f"v{manifest.version}.bin").read_bytes()
            except FileNotFoundError:
                missing_in = manifest.version  # replaced by a concurrent put, or lost: look again
                continue
            manifest.verify(blob)
            return manifest, blob
        raise StoreUnavailable(f"task {task!r} changed {READ_ATTEMPTS} times while being read")

    def _read_manifest_sync(self, task: str) -> StoredManifest:
        try:
            raw = (self._root / task / MANIFEST_NAME).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise TaskNotFound(task) from None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise CorruptSubnetwork(f"manifest of task {task!r} is not JSON: {exc}") from exc
        return StoredManifest.from_json_dict(data, task=task)

    def _last_version_sync(self, task_dir: Path) -> int:
        """Highest version committed so far (0 if none): the counter file or, after a crash between
        the manifest switch and the counter update, the manifest."""
        last = _read_int(task_dir / LAST_VERSION_NAME)
        try:
            return max(last, self._read_manifest_sync(task_dir.name).version)
        except (TaskNotFound, CorruptSubnetwork):
            return last  # a corrupt manifest is about to be replaced by a good one

    def _task_names_sync(self) -> list[str]:
        try:
            entries = list(os.scandir(self._root))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if TASK_NAME_RE.fullmatch(e.name) and e.is_dir())

    def _list_sync(self) -> list[StoredManifest]:
        manifests = []
        for task in self._task_names_sync():
            try:
                manifests.append(self._read_manifest_sync(task))
            except TaskNotFound:
                continue  # deleted task (or deleted concurrently)
            except CorruptSubnetwork as exc:
                logger.warning("listing skips task %r: %s", task, exc)
        return manifests

    def _scan_versions_sync(self) -> dict[str, int]:
        return {m.task: m.version for m in self._list_sync()}

    def _ping_sync(self) -> None:
        if not self._root.is_dir():
            raise StoreUnavailable(f"directory store root {self._root} is not a directory")
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise StoreUnavailable(f"directory store root {self._root} is not writable")


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace_durably(path: Path, data: bytes) -> None:
    """Atomically make ``path`` hold ``data``, durable once this returns."""
    tmp = path.with_name(f".{path.name}.tmp")  # only ever written under the task's flock
    _write_durably(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_blobs(task_dir: Path, *, keep: str | None) -> None:
    for entry in os.scandir(task_dir):
        if entry.name != keep and _BLOB_NAME_RE.fullmatch(entry.name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _read_int(path: Path) -> int:
    """The integer in a counter file; 0 if it is missing or unreadable (the manifest backs it up)."""
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return 0
    except ValueError:
        logger.warning("ignoring unreadable version counter %s", path)
        return 0
