"""KEN_viz images of stored tasks for the console, rendered on demand and kept per stored version.

Images are drawn from the stored file alone (``ken.viz.render_all`` without the backbone): the
backbone's weights are rewritten in place by the owner thread, so no other thread may read them.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import ken
import ken.viz
from service.store import StoredManifest, SubnetworkStore

#: The views ``render_all`` writes, by the prefix of their file names, with what each shows.
VIEWS: dict[str, str] = {
    "retention": "kept % per layer",
    "matrix": "one matrix: kept entries coloured by value, reset ones blank",
    "neighbours": "kept neighbours of each kept entry (clustering)",
    "layers": "the same matrix across every layer",
}


@dataclass(frozen=True)
class TaskImages:
    task: str
    version: int
    png: dict[str, bytes]  # view -> PNG bytes, in the order of VIEWS


def render_views(subnetwork: ken.Subnetwork) -> dict[str, bytes]:
    """Every default KEN_viz view of ``subnetwork`` as PNG bytes (blocking: run it in a worker thread)."""
    with tempfile.TemporaryDirectory(prefix="ken-viz-") as folder:
        paths = ken.viz.render_all(subnetwork, folder)
        by_view = {view: path for path in paths for view in VIEWS if Path(path).name.startswith(view)}
        return {view: Path(by_view[view]).read_bytes() for view in VIEWS if view in by_view}


class VizCache:
    """Rendered images of the last ``capacity`` task versions; concurrent requests for one share a render."""

    def __init__(self, store: SubnetworkStore, capacity: int = 16) -> None:
        self._store = store
        self._capacity = capacity
        self._entries: OrderedDict[str, asyncio.Future[TaskImages]] = OrderedDict()

    async def images(self, task: str) -> TaskImages:
        """The images of the task's current version (TaskNotFound, StoreUnavailable as the store raises)."""
        manifest = await self._store.manifest(task)
        key = f"{task}@{manifest.sha256}"
        future = self._entries.get(key)
        if future is None:
            future = asyncio.ensure_future(self._render(manifest))
            self._entries[key] = future
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        try:
            return await asyncio.shield(future)  # a client that goes away does not cancel the others' render
        except Exception:
            if self._entries.get(key) is future:
                del self._entries[key]  # failures are not cached: the next request tries again
            raise

    async def _render(self, manifest: StoredManifest) -> TaskImages:
        stored, blob = await self._store.get(manifest.task)
        subnetwork = await asyncio.to_thread(ken.load_bytes, blob)
        png = await asyncio.to_thread(render_views, subnetwork)
        return TaskImages(stored.task, stored.version, png)
