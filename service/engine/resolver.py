"""Finding a task's staged delta: device tier, then host tier, then the store; invalidated by store changes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import ken
from ken.fileformat import check_magnitudes
from service.allocator import release_freed_memory
from service.engine.backbone import ResidentBackbone
from service.engine.lru import ByteBudgetLru
from service.engine.staged import StagedTask, stage_task, subnetwork_nbytes
from service.errors import BackboneMismatch
from service.metrics import ServiceMetrics
from service.store import CorruptSubnetwork, SubnetworkStore

logger = logging.getLogger(__name__)

DEVICE_TIER = "device"
HOST_TIER = "host"


@dataclass(frozen=True)
class HostEntry:
    version: int
    subnetwork: ken.Subnetwork  # parsed and validated, tensors in host memory


class TaskResolver:
    """Two LRU tiers with byte budgets in front of the store, one entry per task (its current version).

    Runs on the event loop only (no locking). Concurrent misses for a task share one load. A store
    change bumps the task's generation: entries of other versions are dropped, loads started
    before the change still answer the requests that started them but are not cached, and later
    requests start a fresh load. Requests already queued keep their own :class:`StagedTask`, so
    they finish on the version they started with.
    """

    def __init__(
        self,
        store: SubnetworkStore,
        backbone: ResidentBackbone,
        metrics: ServiceMetrics,
        *,
        device_budget: int,
        host_budget: int,
    ) -> None:
        self._store = store
        self._backbone = backbone
        self._metrics = metrics
        self._device: ByteBudgetLru[str, StagedTask] = ByteBudgetLru(device_budget)
        self._host: ByteBudgetLru[str, HostEntry] = ByteBudgetLru(host_budget)
        self._generation: dict[str, int] = {}  # bumped by every store change of the task
        self._notified_version: dict[str, int | None] = {}
        self._loading: dict[tuple[str, int], asyncio.Future[StagedTask]] = {}

    async def resolve(self, task: str) -> StagedTask:
        staged = self._device.get(task)
        if staged is not None:
            self._metrics.cache_hits.labels(DEVICE_TIER).inc()
            return staged
        self._metrics.cache_misses.labels(DEVICE_TIER).inc()
        key = (task, self._generation.get(task, 0))
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(task, key[1]))
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loaded(key))
        # shield: a client that goes away must not cancel a load other requests may be waiting on
        return await asyncio.shield(pending)

    def _loaded(self, key: tuple[str, int]) -> None:
        self._loading.pop(key, None)
        # the load's transients (file bytes, parsed tensors) are garbage now: give their pages back
        asyncio.get_running_loop().run_in_executor(None, release_freed_memory)

    def invalidate(self, task: str, version: int | None) -> None:
        """A store change (``version`` None: deleted): forget every cached version of ``task`` but ``version``."""
        self._generation[task] = self._generation.get(task, 0) + 1
        self._notified_version[task] = version
        for tier in (self._device, self._host):
            entry = tier.peek(task)
            if entry is not None and entry.version != version:
                tier.pop(task)
        self._report_sizes()

    def expect(self, task: str, version: int) -> None:
        """A router saw ``version`` in the store: drop older cached versions now, not when the notification comes.

        Lets a request routed as ``task@version`` (service/deploy) be served at that version even when
        this replica's store notification is still on its way.
        """
        if (self._notified_version.get(task) or 0) >= version:
            return
        cached = (self._device.peek(task), self._host.peek(task))
        if any(entry is not None and entry.version >= version for entry in cached):
            return
        self.invalidate(task, version)  # also keeps a load of an older version, already under way, out of the cache

    def offer(self, task: str, version: int, subnetwork: ken.Subnetwork) -> None:
        """Cache a subnetwork this instance just stored, unless the store has moved on since."""
        if self._notified_version.get(task, version) == version:
            self._host.put(task, HostEntry(version, subnetwork), subnetwork_nbytes(subnetwork))
            self._report_sizes()

    async def _load(self, task: str, generation: int) -> StagedTask:
        entry = self._host.get(task)
        if entry is None:
            self._metrics.cache_misses.labels(HOST_TIER).inc()
            manifest, blob = await self._store.get(task)
            self._metrics.store_loads.inc()
            subnetwork = await asyncio.to_thread(self._parse, task, blob)
            entry = HostEntry(manifest.version, subnetwork)
            if self._generation.get(task, 0) == generation:
                self._host.put(task, entry, subnetwork_nbytes(subnetwork))
        else:
            self._metrics.cache_hits.labels(HOST_TIER).inc()
        staged = await asyncio.to_thread(stage_task, task, entry.version, entry.subnetwork, self._backbone)
        if self._generation.get(task, 0) == generation:
            self._device.put(task, staged, staged.nbytes)
        self._report_sizes()
        logger.info("task staged", extra={"task": task, "version": entry.version, "device_bytes": staged.nbytes})
        return staged

    def _parse(self, task: str, blob: bytes) -> ken.Subnetwork:
        """Validate again on load: the store may be shared with replicas that serve another backbone."""
        try:
            subnetwork = ken.load_bytes(blob, backbone_fingerprint=self._backbone.fingerprint)
            self._backbone.flat.check_compatible(subnetwork)
            check_magnitudes(subnetwork)
        except ken.FingerprintMismatch as exc:
            raise BackboneMismatch(f"task {task!r}: {exc}") from None
        except ken.KenError as exc:
            raise CorruptSubnetwork(f"task {task!r}: {exc}") from None
        return subnetwork

    def _report_sizes(self) -> None:
        for name, tier in ((DEVICE_TIER, self._device), (HOST_TIER, self._host)):
            self._metrics.cache_bytes.labels(name).set(tier.nbytes)
            self._metrics.cache_entries.labels(name).set(len(tier))
