"""Per-task request queues between the request path (many producers) and the backbone owner (one consumer).

The owner asks :meth:`TaskQueues.next_job` for work. It gets control jobs first, then a batch of
one task's requests: the task is chosen by :func:`choose_task` (stay on the current task while it
has work, for at most ``max_consecutive`` batches in a row while other tasks wait; otherwise the
task whose oldest request has waited longest), so no task starves under a skewed load. A batch
takes whole requests in arrival order up to ``max_batch_inputs`` inputs (the first request always
fits) and waits up to ``max_wait_s`` after its oldest request arrived for more to fill it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from service.engine.encoding import EncodedTexts
from service.engine.staged import StagedTask
from service.errors import EngineStopped


@dataclass(eq=False)
class WorkItem:
    """One inference request: its texts for one staged task, and the future of its logits."""

    staged: StagedTask
    encoded: EncodedTexts
    future: Future[torch.Tensor] = field(default_factory=Future)
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return len(self.encoded)


@dataclass(frozen=True)
class Batch:
    staged: StagedTask
    items: list[WorkItem]

    @property
    def inputs(self) -> int:
        return sum(item.size for item in self.items)


@dataclass(frozen=True)
class ControlJob:
    """Work that must run on the owner thread between batches (integrity checks, head validation)."""

    run: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


def choose_task(
    oldest: Mapping[StagedTask, float], current: StagedTask | None, streak: int, max_consecutive: int
) -> StagedTask:
    """The task to serve next, given each waiting task's oldest enqueue time.

    Stay on ``current`` (no swap needed) while it has work and either nobody else waits or it has
    had fewer than ``max_consecutive`` batches in a row; otherwise oldest-waiting-first among the
    others.
    """
    if current in oldest and (len(oldest) == 1 or streak < max_consecutive):
        return current
    others = {task: t for task, t in oldest.items() if task is not current}
    return min(others, key=others.__getitem__)


class TaskQueues:
    """Thread-safe per-task FIFO queues with the batching and fairness policy of the module docstring."""

    def __init__(
        self, *, max_batch_inputs: int, max_wait_s: float, max_consecutive: int, one_request_per_batch: bool
    ) -> None:
        self._max_batch_inputs = max_batch_inputs
        self._max_wait_s = max_wait_s
        self._max_consecutive = max_consecutive
        self._one_request_per_batch = one_request_per_batch
        self._queues: dict[StagedTask, deque[WorkItem]] = {}
        self._control: deque[ControlJob] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._last: StagedTask | None = None
        self._streak = 0

    @property
    def pending_requests(self) -> int:
        with self._condition:
            return sum(len(queue) for queue in self._queues.values())

    def submit(self, item: WorkItem) -> None:
        with self._condition:
            if self._closed:
                raise EngineStopped("the inference engine is not running")
            self._queues.setdefault(item.staged, deque()).append(item)
            self._condition.notify()

    def submit_control(self, run: Callable[[], Any]) -> Future[Any]:
        job = ControlJob(run)
        with self._condition:
            if self._closed:
                raise EngineStopped("the inference engine is not running")
            self._control.append(job)
            self._condition.notify()
        return job.future

    def close(self) -> None:
        """Stop accepting work and fail everything still queued; the owner then gets None."""
        with self._condition:
            self._closed = True
            queued = [item.future for queue in self._queues.values() for item in queue]
            queued += [job.future for job in self._control]
            self._queues.clear()
            self._control.clear()
            self._condition.notify_all()
        for future in queued:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineStopped("the inference engine stopped"))

    def next_job(self) -> Batch | ControlJob | None:
        """Block until there is work; None once closed."""
        with self._condition:
            while True:
                if self._closed:
                    return None
                if self._control:
                    return self._control.popleft()
                self._drop_cancelled()
                if not self._queues:
                    self._condition.wait()
                    continue
                oldest = {task: queue[0].enqueued_at for task, queue in self._queues.items()}
                task = choose_task(oldest, self._last, self._streak, self._max_consecutive)
                queue = self._queues[task]
                if not self._one_request_per_batch:
                    deadline = oldest[task] + self._max_wait_s
                    remaining = deadline - time.monotonic()
                    if remaining > 0 and sum(item.size for item in queue) < self._max_batch_inputs:
                        self._condition.wait(remaining)
                        continue  # choose again: more work may have arrived meanwhile
                batch = self._take(task, queue)
                if batch.items:
                    self._streak = self._streak + 1 if task is self._last else 1
                    self._last = task
                    return batch

    def _take(self, task: StagedTask, queue: deque[WorkItem]) -> Batch:
        items: list[WorkItem] = []
        inputs = 0
        while queue:
            if items and (self._one_request_per_batch or inputs + queue[0].size > self._max_batch_inputs):
                break
            item = queue.popleft()
            if item.future.set_running_or_notify_cancel():  # False: the client went away
                items.append(item)
                inputs += item.size
        if not queue:
            del self._queues[task]
        return Batch(task, items)

    def _drop_cancelled(self) -> None:
        for task in list(self._queues):
            queue = self._queues[task]
            while queue and queue[0].future.cancelled():
                queue.popleft()
            if not queue:
                del self._queues[task]
