"""Uploading a folder of subnetwork files (``--preload DIR`` / ``KEN_PRELOAD_DIR``): once at start-up,
and, with ``--watch SECONDS`` (``KEN_PRELOAD_WATCH_S``), whenever a file appears or changes there, so
tasks that are still being built (the demo) arrive while the server already answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from service.catalog import SubnetworkCatalog
from service.errors import ServiceError
from service.store import SubnetworkStore, TaskNotFound, validate_task
from service.store.base import sha256_hex

logger = logging.getLogger(__name__)

#: What identifies a file's content between scans without reading it: (modification time in ns, size).
FileStamp = tuple[int, int]


class PreloadFolder:
    """Uploads every ``*.safetensors`` file of ``directory`` under its file stem.

    A file whose bytes are already stored under its task is skipped, so restarts (and several
    replicas preloading the same folder) do not bump versions. A file that fails validation is
    logged and skipped (and tried again once it changes); the others still load. ``expected``
    names tasks the folder will receive; :meth:`pending` lists those the store does not hold yet.
    """

    def __init__(
        self,
        directory: Path,
        catalog: SubnetworkCatalog,
        store: SubnetworkStore,
        *,
        expected: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.expected = list(dict.fromkeys(expected))
        self._catalog = catalog
        self._store = store
        self._seen: dict[Path, FileStamp] = {}

    async def scan(self) -> list[str]:
        """Upload the files that are new or changed since the last scan; return the tasks uploaded."""
        uploaded = []
        for path in sorted(self.directory.glob("*.safetensors")):
            try:
                stat = path.stat()
            except FileNotFoundError:  # replaced or removed since the listing
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._seen.get(path) == stamp:
                continue
            self._seen[path] = stamp
            if await self._upload(path):
                uploaded.append(path.stem)
        return uploaded

    async def watch(self, interval_s: float) -> None:
        """Scan every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.scan()
            except Exception:  # a store outage must not end the watch; the next scan retries
                logger.exception("preload: scan failed", extra={"folder": str(self.directory)})
                self._seen.clear()

    async def pending(self) -> list[str]:
        """The expected tasks that the store does not hold yet."""
        missing = []
        for task in self.expected:
            try:
                await self._store.manifest(task)
            except TaskNotFound:
                missing.append(task)
        return missing

    async def _upload(self, path: Path) -> bool:
        task = path.stem
        try:
            validate_task(task)
            blob = await asyncio.to_thread(path.read_bytes)
            if await _already_stored(self._store, task, blob):
                logger.info("preload: unchanged, skipped", extra={"task": task, "file": str(path)})
                return False
            manifest = (await self._catalog.upload(task, blob)).manifest
        except (ValueError, ServiceError) as exc:
            logger.error("preload: file skipped", extra={"file": str(path), "reason": str(exc)})
            return False
        logger.info("preload: uploaded", extra={"task": task, "version": manifest.version, "file": str(path)})
        return True


async def _already_stored(store: SubnetworkStore, task: str, blob: bytes) -> bool:
    try:
        return (await store.manifest(task)).sha256 == sha256_hex(blob)
    except TaskNotFound:
        return False
