"""Per-task request queues between the request path (many producers) and the backbone owner (one consumer).

The owner asks :meth:`TaskQueues.next_job` for work. It gets control jobs first, then a batch of
one task's requests: the task is chosen by :func:`choose_task` (the fullest batch, staying on the
applied task while its batch is at least half as full, since a swap costs about as much as a few
inputs' forward pass; but the task holding the longest-waiting request once ``max_consecutive``
batches in a row have gone ahead of it), so no task starves under a skewed load. A batch takes
whole requests in arrival order up to ``max_batch_inputs`` inputs (the first request always fits)
and waits up to ``max_wait_s`` after its oldest request arrived for more to fill it.

With a mixed policy (``KEN_MIXED_BATCHES``, :mod:`service.engine.mixed`), whenever two or more
tasks are queued the policy is first offered the oldest requests of all tasks up to the batch
budget, grouped by task (:class:`MixedBatch`); if it accepts, they run as one mixed pass
(:mod:`ken.mixed`) and the oldest request leads by construction.

Why the fullest batch rather than staying on the applied task while it has work: under a mixed
load the applied task's queue holds only what arrived during its own last batch, so staying made
batches of a third of what the other queues held (measured: 12 inputs per batch for four tasks at
64 clients, against 32 for one task).
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

from ken.generation import DecodeState
from service.engine.encoding import EncodedTexts
from service.engine.staged import StagedTask
from service.errors import EngineStopped


@dataclass(eq=False)
class WorkItem:
    """One inference request: its texts for one staged task, and the future of its outputs (one per input)."""

    staged: StagedTask
    encoded: EncodedTexts
    future: Future[list[torch.Tensor]] = field(default_factory=Future)
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return len(self.encoded)


@dataclass(eq=False)
class DecodeItem:
    """One decode step of one sequence being generated: the owner steps it with its task applied."""

    staged: StagedTask
    state: DecodeState
    future: Future[torch.Tensor] = field(default_factory=Future)
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return 1


QueueItem = WorkItem | DecodeItem


@dataclass(frozen=True)
class Batch:
    staged: StagedTask
    items: list[QueueItem]

    @property
    def inputs(self) -> int:
        return sum(item.size for item in self.items)


@dataclass(frozen=True)
class MixedBatch:
    """The oldest requests of several tasks for one mixed pass: one :class:`Batch` per task, by first arrival."""

    groups: list[Batch]

    @property
    def inputs(self) -> int:
        return sum(group.inputs for group in self.groups)


#: Whether a candidate mixed batch (one Batch per task, items not yet taken) should run as one
#: mixed pass, given the task applied now (None: pristine). Called on the owner thread.
MixedPolicy = Callable[[list[Batch], StagedTask | None], bool]


@dataclass(frozen=True)
class ControlJob:
    """Work that must run on the owner thread between batches (integrity checks, head validation)."""

    run: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass(frozen=True)
class Waiting:
    """A task's queue as the scheduler sees it."""

    oldest: float  # enqueue time of its oldest request
    inputs: int  # inputs its next batch would hold (whole requests, up to the batch budget)


def choose_task(
    waiting: Mapping[StagedTask, Waiting], current: StagedTask | None, passed_over: int, max_consecutive: int
) -> StagedTask:
    """The task to serve next.

    The task holding the longest-waiting request, once ``passed_over`` (batches in a row that went to
    other tasks while it waited) reaches ``max_consecutive``. Otherwise the task with the fullest
    next batch; the applied task ``current`` keeps the owner (no swap) while its batch is at least
    half as full as the fullest other; ties go to the longest-waiting task.
    """
    oldest = min(waiting, key=lambda task: waiting[task].oldest)
    if passed_over >= max_consecutive:
        return oldest
    fullest = max(waiting, key=lambda task: (waiting[task].inputs, -waiting[task].oldest))
    if current in waiting and 2 * waiting[current].inputs >= waiting[fullest].inputs:
        return current
    return fullest


class TaskQueues:
    """Thread-safe per-task FIFO queues with the batching and fairness policy of the module docstring."""

    def __init__(
        self,
        *,
        max_batch_inputs: int,
        max_wait_s: float,
        max_consecutive: int,
        one_request_per_batch: bool,
        mixed_policy: MixedPolicy | None = None,
    ) -> None:
        self._max_batch_inputs = max_batch_inputs
        self._max_wait_s = max_wait_s
        self._max_consecutive = max_consecutive
        self._one_request_per_batch = one_request_per_batch
        self._mixed_policy = mixed_policy
        self._queues: dict[StagedTask, deque[QueueItem]] = {}
        self._control: deque[ControlJob] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._last: StagedTask | None = None
        self._passed_over = 0  # batches in a row that did not go to the longest-waiting request's task

    @property
    def pending_requests(self) -> int:
        with self._condition:
            return sum(len(queue) for queue in self._queues.values())

    def submit(self, item: QueueItem) -> None:
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

    def next_job(self) -> Batch | MixedBatch | ControlJob | None:
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
                waiting = {task: self._waiting(queue) for task, queue in self._queues.items()}
                mixed = self._mixed_candidate()
                if mixed is not None:
                    deadline = min(w.oldest for w in waiting.values()) + self._max_wait_s
                    remaining = deadline - time.monotonic()
                    if remaining > 0 and sum(group.inputs for group in mixed) < self._max_batch_inputs:
                        self._condition.wait(remaining)
                        continue  # more work may arrive meanwhile
                    taken = self._take_mixed(mixed)
                    if taken.groups:
                        self._last, self._passed_over = None, 0  # the pass reads pristine weights; the oldest led
                        return taken
                    continue
                task = choose_task(waiting, self._last, self._passed_over, self._max_consecutive)
                queue = self._queues[task]
                if not self._one_request_per_batch:
                    deadline = waiting[task].oldest + self._max_wait_s
                    remaining = deadline - time.monotonic()
                    if remaining > 0 and sum(item.size for item in queue) < self._max_batch_inputs:
                        self._condition.wait(remaining)
                        continue  # choose again: more work may have arrived meanwhile
                longest_waiting = min(waiting, key=lambda t: waiting[t].oldest)
                batch = self._take(task, queue)
                if batch.items:
                    self._passed_over = 0 if task is longest_waiting else self._passed_over + 1
                    self._last = task
                    return batch

    def _full(self, inputs: int, next_size: int) -> bool:
        """Whether a batch of ``inputs`` inputs must stop before a request of ``next_size`` (the first always fits)."""
        return inputs > 0 and (self._one_request_per_batch or inputs + next_size > self._max_batch_inputs)

    def _waiting(self, queue: deque[QueueItem]) -> Waiting:
        inputs = 0
        for item in queue:
            if self._full(inputs, item.size):
                break
            inputs += item.size
        return Waiting(queue[0].enqueued_at, inputs)

    def _take(self, task: StagedTask, queue: deque[QueueItem]) -> Batch:
        items: list[QueueItem] = []
        inputs = 0
        while queue and not self._full(inputs, queue[0].size):
            item = queue.popleft()
            if item.future.set_running_or_notify_cancel():  # False: the client went away
                items.append(item)
                inputs += item.size
        if not queue:
            del self._queues[task]
        return Batch(task, items)

    def _mixed_candidate(self) -> list[Batch] | None:
        """The oldest queued requests of all tasks up to the batch budget, grouped by task, if the policy takes them."""
        if self._mixed_policy is None or self._one_request_per_batch or len(self._queues) < 2:
            return None
        queued = sorted((item for queue in self._queues.values() for item in queue), key=lambda i: i.enqueued_at)
        groups: dict[StagedTask, list[QueueItem]] = {}
        inputs = 0
        for item in queued:
            if item.future.cancelled():
                continue
            if self._full(inputs, item.size):
                break
            groups.setdefault(item.staged, []).append(item)
            inputs += item.size
        candidate = [Batch(task, items) for task, items in groups.items()]
        if len(candidate) < 2 or not self._mixed_policy(candidate, self._last):
            return None
        return candidate

    def _take_mixed(self, candidate: list[Batch]) -> MixedBatch:
        """Take the candidate's requests (a prefix of each task's queue, cancelled ones dropped) off the queues."""
        groups = []
        for group in candidate:
            queue = self._queues[group.staged]
            wanted = set(group.items)
            items = []
            while queue and wanted:
                item = queue.popleft()
                wanted.discard(item)
                if item.future.set_running_or_notify_cancel():  # False: the client went away
                    items.append(item)
            if not queue:
                del self._queues[group.staged]
            if items:
                groups.append(Batch(group.staged, items))
        return MixedBatch(groups)

    def _drop_cancelled(self) -> None:
        for task in list(self._queues):
            queue = self._queues[task]
            while queue and queue[0].future.cancelled():
                queue.popleft()
            if not queue:
                del self._queues[task]
