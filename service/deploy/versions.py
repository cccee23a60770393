"""The current version of each task, as the router needs it to name ``task@version``; kept fresh by the store."""

from __future__ import annotations

from service.store import StoreUnavailable, SubnetworkStore, TaskNotFound, validate_task


class TaskVersions:
    """Versions read from the store once, then updated by its change notifications (pub/sub for Redis).

    Versions of a task only ever increase (across deletes too), so every update keeps the highest
    version seen: a late notification cannot move a task back. Runs on one event loop (no locking).
    """

    def __init__(self, store: SubnetworkStore) -> None:
        self._store = store
        self._known: dict[str, int] = {}
        store.subscribe(self._changed)

    async def current(self, task: str) -> int | None:
        """The task's version, or None when it is not stored or the store cannot say (route it anyway)."""
        known = self._known.get(task)
        if known is not None:
            return known
        try:
            version = (await self._store.manifest(validate_task(task))).version
        except (TaskNotFound, StoreUnavailable, ValueError):
            return None
        self.learned(task, version)  # a change that raced this read is kept all the same: the highest wins
        return self._known[task]

    def learned(self, task: str, version: int) -> None:
        """A version seen elsewhere (an upload answered through this router)."""
        self._known[task] = max(version, self._known.get(task, 0))

    def _changed(self, task: str, version: int | None) -> None:
        if version is None:
            self._known.pop(task, None)
        else:
            self.learned(task, version)
