"""The subnetwork catalog: uploads validated against the resident backbone before anything is stored."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import ken
from ken.fileformat import check_magnitudes
from ken.taskmodel import FEATURE_EXTRACTION, PAIR_SCORING, TEXT_GENERATION, task_labels, task_pooling
from service.engine import InferenceEngine
from service.errors import BackboneMismatch, InvalidSubnetwork
from service.store import CorruptSubnetwork, StoredManifest, SubnetworkStore, TaskNotFound
from service.store.base import sha256_hex
from service.task_types import SERVED_TASK_TYPES

__all__ = ["SERVED_TASK_TYPES", "SubnetworkCatalog", "describe"]


def describe(subnetwork: ken.Subnetwork) -> dict[str, Any]:
    """What the manifest records about a subnetwork, so listings never parse files."""
    info = subnetwork.info
    return {
        "k": info.k,
        "method": info.method,
        "task_type": info.task_type,
        "kept_entries": subnetwork.kept_entries,
        "head_entries": subnetwork.head_entries,
        "labels": task_labels(info),
        "backbone_fingerprint": info.backbone_fingerprint,
        **({"pooling": task_pooling(info).to_dict()} if info.task_type == FEATURE_EXTRACTION else {}),
    }


class Upload(NamedTuple):
    manifest: StoredManifest
    stored: bool  # False: these exact bytes were already the task's current version, nothing was written


class SubnetworkCatalog:
    """Validates and stores uploads; the rest of the store's API is used directly by the routes."""

    def __init__(self, store: SubnetworkStore, engine: InferenceEngine) -> None:
        self._store = store
        self._engine = engine

    async def upload(self, task: str, blob: bytes) -> Upload:
        """Validate ``blob`` completely (format, fingerprint, shapes, bounds, finiteness, head), then store it.

        Idempotent: when the task's current version has these exact bytes, that version is returned and
        nothing is stored (a retried or repeated push does not bump the version). Validation still runs
        first, so the answer is the same as for a first upload of these bytes to this backbone.
        """
        subnetwork = await asyncio.to_thread(self._parse, blob)
        try:
            await self._engine.check_head(subnetwork)
        except (ken.KenError, RuntimeError) as exc:  # load_state_dict raises RuntimeError on a misshapen head
            raise InvalidSubnetwork(f"the head does not fit the task model: {exc}") from None
        current = await self._current(task)
        if current is not None and current.sha256 == sha256_hex(blob) and await self._intact(task):
            return Upload(current, stored=False)
        manifest = await self._store.put(task, blob, describe(subnetwork))
        self._engine.offer(task, manifest.version, subnetwork)
        return Upload(manifest, stored=True)

    async def _current(self, task: str) -> StoredManifest | None:
        try:
            return await self._store.manifest(task)
        except TaskNotFound:
            return None
        except CorruptSubnetwork:  # written by something else: this upload replaces (repairs) it
            return None

    async def _intact(self, task: str) -> bool:
        """Whether the stored bytes still match their manifest; if not, even identical bytes are stored again."""
        try:
            await self._store.get(task)
        except (CorruptSubnetwork, TaskNotFound):
            return False
        return True

    def _parse(self, blob: bytes) -> ken.Subnetwork:
        backbone = self._engine.backbone
        try:
            subnetwork = ken.load_bytes(blob, backbone_fingerprint=backbone.fingerprint)
            backbone.flat.check_compatible(subnetwork)
            check_magnitudes(subnetwork)
            labels = task_labels(subnetwork.info)
        except ken.FingerprintMismatch as exc:
            raise BackboneMismatch(str(exc)) from None
        except ValueError as exc:  # ken's errors are ValueErrors, and so is a config transformers rejects
            raise InvalidSubnetwork(str(exc)) from None
        check_task_shape(subnetwork.info, labels)
        return subnetwork


def check_task_shape(info: ken.SubnetworkInfo, labels: list[str]) -> None:
    """What the task type needs of the subnetwork: a served type, labels where it classifies, one score for pairs."""
    task_type = info.task_type
    if task_type not in SERVED_TASK_TYPES:
        raise InvalidSubnetwork(f"task type {task_type!r} is not served; supported: {', '.join(SERVED_TASK_TYPES)}")
    if task_type in (FEATURE_EXTRACTION, TEXT_GENERATION):
        return  # no labels; an embedding task's head must be empty (checked when the task model is built)
    if not labels:
        raise InvalidSubnetwork("the subnetwork's task has no labels")
    if task_type == PAIR_SCORING and len(labels) != 1:
        raise InvalidSubnetwork(
            f"a {PAIR_SCORING} task answers one relevance score per pair, but this one has {len(labels)} labels "
            "(pair classifiers with several labels, e.g. NLI, are not served)"
        )
