"""Uploading a folder of subnetwork files at start-up (``--preload DIR`` / ``KEN_PRELOAD_DIR``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from service.catalog import SubnetworkCatalog
from service.errors import ServiceError
from service.store import SubnetworkStore, TaskNotFound, validate_task
from service.store.base import sha256_hex

logger = logging.getLogger(__name__)


async def preload_directory(directory: Path, catalog: SubnetworkCatalog, store: SubnetworkStore) -> list[str]:
    """Upload every ``*.safetensors`` file in ``directory`` under its file stem; return the tasks uploaded.

    A file whose bytes are already stored under its task is skipped, so restarts (and several
    replicas preloading the same folder) do not bump versions. A file that fails validation is
    logged and skipped; the others still load.
    """
    uploaded = []
    for path in sorted(directory.glob("*.safetensors")):
        task = path.stem
        try:
            validate_task(task)
            blob = await asyncio.to_thread(path.read_bytes)
            if await _already_stored(store, task, blob):
                logger.info("preload: unchanged, skipped", extra={"task": task, "file": str(path)})
                continue
            manifest = (await catalog.upload(task, blob)).manifest
        except (ValueError, ServiceError) as exc:
            logger.error("preload: file skipped", extra={"file": str(path), "reason": str(exc)})
            continue
        logger.info("preload: uploaded", extra={"task": task, "version": manifest.version, "file": str(path)})
        uploaded.append(task)
    return uploaded


async def _already_stored(store: SubnetworkStore, task: str, blob: bytes) -> bool:
    try:
        return (await store.manifest(task)).sha256 == sha256_hex(blob)
    except TaskNotFound:
        return False
