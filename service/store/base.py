"""The subnetwork store interface shared by every backend, its errors and its manifest.

A store keeps, per task name, the bytes of one subnetwork file (opaque to the store) and a small
JSON manifest describing it. Backends: :mod:`service.store.directory` (a shared directory) and
:mod:`service.store.redis_store` (a shared Redis).

Change notification contract (both backends):

* every ``put`` and ``delete`` is reported to the callbacks registered with ``subscribe`` on every
  store instance sharing the backend, as ``callback(task, new_version)`` or ``callback(task, None)``
  for a deletion;
* changes made through an instance are reported to that instance's callbacks exactly once, by the
  ``put``/``delete`` call itself, after the change is committed and before the call returns;
* changes made by other instances (other processes or replicas) are reported by the background
  listener started by ``start()``, within about a second;
* delivery is at-least-once: after a connection loss a backend may report tasks that did not
  change. Callbacks must therefore be idempotent, typically "re-read the manifest and reload if the
  version differs from what I hold". Versions of a task never repeat (they keep increasing across
  deletes), so comparing versions is enough to detect a change.

Callbacks may be plain functions or coroutine functions. They run on the event loop, one at a time,
in the order the changes were observed; an exception raised by a callback is logged and swallowed
so that one faulty subscriber cannot break the store or the other subscribers. Keep them short:
long work should be scheduled by the callback (e.g. with ``asyncio.create_task``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

TASK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

ChangeCallback = Callable[[str, int | None], Awaitable[None] | None]


class StoreUnavailable(Exception):
    """The backend is unreachable, timed out or failed at the I/O level (the API answers 503)."""


class TaskNotFound(KeyError):
    """No subnetwork is stored under this task name."""

    def __str__(self) -> str:  # KeyError's str() is the repr of its argument, which reads poorly
        return f"task not found: {self.args[0]}" if self.args else "task not found"


class CorruptSubnetwork(Exception):
    """Stored data fails verification: checksum or size mismatch, missing chunk, unreadable manifest."""


def validate_task(task: str) -> str:
    """Return ``task`` if it is a valid task name, else raise ValueError.

    The API validates names too; the store checks again because the name becomes a path component
    or part of a Redis key, so a bad name must never get that far.
    """
    if not isinstance(task, str) or not TASK_NAME_RE.fullmatch(task):
        raise ValueError(f"invalid task name {task!r}: must match {TASK_NAME_RE.pattern}")
    return task


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def normalise_info(info: dict[str, Any]) -> dict[str, Any]:
    """A deep, JSON-round-tripped copy of ``info``; ValueError if it is not a JSON object."""
    if not isinstance(info, dict):
        raise ValueError(f"info must be a dict, got {type(info).__name__}")
    try:
        return json.loads(json.dumps(info, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"info is not JSON-serialisable: {exc}") from exc


@dataclass(frozen=True)
class StoredManifest:
    """What the store knows about one stored version of a task's subnetwork."""

    task: str
    version: int  # increases by 1 with each successful put of that task (first put: 1)
    sha256: str  # hex digest of the blob
    size: int  # bytes
    created: datetime  # UTC, when this version was stored
    info: dict[str, Any]  # free JSON metadata given by the caller at put time

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "created": self.created.isoformat(),
            "info": self.info,
        }

    @classmethod
    def from_json_dict(cls, data: Any, *, task: str) -> StoredManifest:
        """Parse a manifest read from storage; CorruptSubnetwork if it is malformed or misplaced."""
        try:
            manifest = cls(
                task=str(data["task"]),
                version=int(data["version"]),
                sha256=str(data["sha256"]),
                size=int(data["size"]),
                created=datetime.fromisoformat(data["created"]),
                info=data["info"],
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CorruptSubnetwork(f"unreadable manifest for task {task!r}: {exc!r}") from exc
        if not isinstance(manifest.info, dict):
            raise CorruptSubnetwork(f"manifest of task {task!r}: info is not a JSON object")
        if manifest.task != task:
            raise CorruptSubnetwork(f"manifest stored under {task!r} names task {manifest.task!r}")
        return manifest

    def verify(self, blob: bytes) -> None:
        """Raise CorruptSubnetwork unless ``blob`` is exactly the bytes this manifest describes."""
        if len(blob) != self.size:
            raise CorruptSubnetwork(
                f"task {self.task!r} v{self.version}: size {len(blob)} != manifest size {self.size}"
            )
        if sha256_hex(blob) != self.sha256:
            raise CorruptSubnetwork(f"task {self.task!r} v{self.version}: sha256 mismatch")


@runtime_checkable
class SubnetworkStore(Protocol):
    """Versioned, checksummed storage of one subnetwork file per task (see the module docstring)."""

    async def put(self, task: str, blob: bytes, info: dict[str, Any]) -> StoredManifest:
        """Store ``blob`` as the task's next version, atomically; ValueError for a bad name or info."""
        ...

    async def get(self, task: str) -> tuple[StoredManifest, bytes]:
        """The current manifest and blob, verified (CorruptSubnetwork on mismatch)."""
        ...

    async def manifest(self, task: str) -> StoredManifest:
        """The current manifest (blob not read nor verified). TaskNotFound if absent."""
        ...

    async def list(self) -> list[StoredManifest]:
        """Every stored task's current manifest, sorted by task."""
        ...

    async def delete(self, task: str) -> StoredManifest:
        """Remove a task; returns the manifest it had. TaskNotFound if absent.

        A task whose manifest is unreadable is removed all the same, then CorruptSubnetwork is raised.
        """
        ...

    async def ping(self) -> None:
        """Return if the backend is usable, else raise StoreUnavailable."""
        ...

    def subscribe(self, callback: ChangeCallback) -> None:
        """Call ``callback(task, version or None)`` on every change, from any instance (see above)."""
        ...

    async def start(self) -> None:
        """Start the background change listener; idempotent."""
        ...

    async def close(self) -> None:
        """Stop the listener and release connections; idempotent."""
        ...


class ChangeNotifier:
    """The callbacks registered with ``subscribe`` and their (fault-isolated) invocation."""

    def __init__(self) -> None:
        self._callbacks: list[ChangeCallback] = []

    def add(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    async def notify(self, task: str, version: int | None) -> None:
        for callback in list(self._callbacks):
            try:
                result = callback(task, version)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("store change callback %r failed for (%s, %s)", callback, task, version)
