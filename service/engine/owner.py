"""The backbone owner: the one thread that writes the backbone's weights (swaps) and runs forward passes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch

import ken
from ken.taskmodel import task_outputs
from service.engine.backbone import ResidentBackbone
from service.engine.encoding import TextEncoder
from service.engine.integrity import IntegrityMonitor
from service.engine.scheduler import Batch, ControlJob, DecodeItem, MixedBatch, TaskQueues
from service.engine.staged import StagedTask
from service.errors import NonFiniteOutput
from service.metrics import ServiceMetrics

T = TypeVar("T")
logger = logging.getLogger(__name__)


class BackboneOwner:
    """Drains :class:`TaskQueues`: per batch, swap the task's delta in, run the forward pass, answer.

    In batched mode the delta stays applied after a batch and is reverted only when another task
    (or a control job that needs the pristine weights) comes next, so a run of one task costs one
    swap. In swap-per-request mode every batch (one request) is applied and reverted. A batch that
    raises is failed alone, after the backbone has been restored. A :class:`MixedBatch` runs as one
    mixed pass on the pristine weights (:mod:`ken.mixed`), or task by task where that is unsupported.
    """

    def __init__(
        self,
        backbone: ResidentBackbone,
        encoder: TextEncoder,
        queues: TaskQueues,
        metrics: ServiceMetrics,
        *,
        max_batch_inputs: int,
        keep_applied: bool,
        mixed: ken.MixedForward | None = None,
    ) -> None:
        self._backbone = backbone
        self._encoder = encoder
        self._queues = queues
        self._metrics = metrics
        self._max_batch_inputs = max_batch_inputs
        self._keep_applied = keep_applied
        self._mixed = mixed
        self._applied: StagedTask | None = None
        self._thread = threading.Thread(target=self._run, name="ken-backbone-owner", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- control jobs (run on the owner thread through TaskQueues.submit_control) -------------------

    def pristine_checksum(self) -> str:
        """Revert whatever is applied, then checksum the weights."""
        self._restore()
        return self._backbone.checksum()

    def on_pristine(self, function: Callable[[], T]) -> T:
        """Revert whatever is applied, then run ``function`` (a control job that drives the swapper itself)."""
        self._restore()
        return function()

    def check_integrity(self, monitor: IntegrityMonitor) -> str | None:
        """One incremental integrity check of the weights as they are now: pristine, or with one delta applied."""
        applied = self._applied
        if applied is None:
            return monitor.check()
        return monitor.check(self._backbone.swapper, task=applied.task)

    # -- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.no_grad():
                while (job := self._queues.next_job()) is not None:
                    if isinstance(job, ControlJob):
                        self._run_control(job)
                    elif isinstance(job, MixedBatch):
                        self._run_mixed(job)
                    else:
                        self._run_batch(job)
                self._restore()
        except BaseException as exc:  # the weights may be damaged: stop serving rather than serve wrong answers
            logger.critical("backbone owner crashed; the engine stops", exc_info=exc)
            self._queues.close()

    def _run_control(self, job: ControlJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.run())
        except Exception as exc:
            job.future.set_exception(exc)

    def _run_batch(self, batch: Batch) -> None:
        staged = batch.staged
        started = time.monotonic()
        for item in batch.items:
            self._metrics.queue_wait.observe(started - item.enqueued_at)
        self._metrics.queued_requests.set(self._queues.pending_requests)
        try:
            self._switch_to(staged)
            if isinstance(batch.items[0], DecodeItem):
                outputs = self._decode(staged, batch)
            else:
                outputs = self._forward(staged, batch)
            if not self._keep_applied:
                self._restore()
        except Exception as exc:
            try:
                self._restore()  # restored before anything else runs; if even this fails, the owner crashes
            finally:
                self._metrics.failed_batches.labels(staged.task).inc()
                logger.exception("batch failed", extra={"task": staged.task, "version": staged.version})
                for item in batch.items:
                    item.future.set_exception(exc)
            return
        finite = [bool(torch.isfinite(output).all()) for output in outputs]  # per input
        if not all(finite):
            self._restore()  # the delta that overflowed is not left applied for the next batch
        offset = 0
        for item in batch.items:
            rows = slice(offset, offset + item.size)
            offset += item.size
            if all(finite[rows]):
                item.future.set_result(outputs[rows.start] if isinstance(item, DecodeItem) else outputs[rows])
                continue
            self._metrics.nonfinite_outputs.labels(staged.task).inc()
            logger.error("non-finite scores", extra={"task": staged.task, "version": staged.version})
            item.future.set_exception(
                NonFiniteOutput(
                    f"task {staged.task!r} v{staged.version} gave NaN or Inf scores for this request: its weights "
                    "overflow in the forward pass; upload a corrected subnetwork"
                )
            )

    def _run_mixed(self, batch: MixedBatch) -> None:
        """One forward pass for several tasks' requests on the pristine weights; task by task if it cannot mix."""
        started = time.monotonic()
        for group in batch.groups:
            for item in group.items:
                self._metrics.queue_wait.observe(started - item.enqueued_at)
        self._metrics.queued_requests.set(self._queues.pending_requests)
        try:
            self._restore()  # a mixed pass reads the pristine weights
            results = self._mixed_forward(batch)
        except ken.MixedUnsupported as exc:
            self._metrics.mixed_batches.labels("fallback").inc()
            logger.info("mixed batch runs task by task instead", extra={"reason": str(exc)})
            for group in batch.groups:
                self._run_batch(group)
            return
        except Exception as exc:
            try:
                self._restore()
            finally:
                logger.exception("mixed batch failed", extra={"tasks": [g.staged.task for g in batch.groups]})
                for group in batch.groups:
                    self._metrics.failed_batches.labels(group.staged.task).inc()
                    for item in group.items:
                        item.future.set_exception(exc)
            return
        self._metrics.mixed_batches.labels("mixed").inc()
        for group, logits in zip(batch.groups, results, strict=True):
            rows = list(logits.unbind(0))  # per input, as task_outputs gives a sequence classifier's answers
            offset = 0
            for item in group.items:
                item.future.set_result(rows[offset : offset + item.size])
                offset += item.size

    def _mixed_forward(self, batch: MixedBatch) -> list[torch.Tensor]:
        if self._mixed is None:
            raise ken.MixedUnsupported("mixed batches are off")
        groups = []
        for group in batch.groups:
            group.staged.complete_on_owner(self._backbone)
            assert group.staged.model is not None
            groups.append(ken.MixedGroup(group.staged.plan, group.staged.model, group.inputs))
        features = [feature for group in batch.groups for item in group.items for feature in item.encoded.features]
        started = time.perf_counter()
        inputs = self._encoder.collate(features)
        inputs = {name: tensor.to(self._backbone.device) for name, tensor in inputs.items()}
        results = [logits.float().cpu() for logits in self._mixed.logits(groups, inputs)]
        self._metrics.forward_time.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(batch.inputs)
        return results

    def _switch_to(self, staged: StagedTask) -> None:
        """Make ``staged`` the applied task: an apply from pristine, or one fused pass from another task."""
        if self._applied is staged:
            return
        staged.complete_on_owner(self._backbone)
        operation = "apply" if self._applied is None else "switch"
        started = time.perf_counter()
        self._applied = staged  # before writing: whatever a failed pass wrote is reverted by _restore
        self._backbone.swapper.switch(staged.plan)
        self._synchronize()
        self._metrics.swap_time.labels(staged.task, operation).observe(time.perf_counter() - started)
        self._metrics.swaps.labels(staged.task).inc()

    def _restore(self) -> None:
        """Revert the applied delta, if any: the backbone is pristine afterwards."""
        applied = self._applied
        if applied is None:
            return
        started = time.perf_counter()
        self._backbone.swapper.revert()
        self._synchronize()
        self._applied = None
        self._metrics.swap_time.labels(applied.task, "revert").observe(time.perf_counter() - started)

    def _forward(self, staged: StagedTask, batch: Batch) -> list[torch.Tensor]:
        """Per input of the batch, what its task type answers (``ken.taskmodel.task_outputs``)."""
        assert staged.model is not None
        features = [feature for item in batch.items for feature in item.encoded.features]
        started = time.perf_counter()
        outputs: list[torch.Tensor] = []
        for start in range(0, len(features), self._max_batch_inputs):
            inputs = self._encoder.collate(features[start : start + self._max_batch_inputs])
            inputs = {name: tensor.to(self._backbone.device) for name, tensor in inputs.items()}
            outputs += task_outputs(staged.model, staged.info, inputs)
        self._metrics.forward_time.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(batch.inputs)
        return outputs

    @staticmethod
    def _split(logits: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
        """Each request's rows of the batch's logits."""
        sizes = [item.size for item in batch.items]
        return list(logits.split(sizes))

    def _decode(self, staged: StagedTask, batch: Batch) -> list[torch.Tensor]:
        """One step of every sequence in the batch, each against its own KV cache, under one apply."""
        assert staged.model is not None
        started = time.perf_counter()
        results = [item.state.step(staged.model) for item in batch.items if isinstance(item, DecodeItem)]
        self._metrics.decode_step_time.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(batch.inputs)
        return results

    def _synchronize(self) -> None:
        if self._backbone.device.type == "cuda":
            torch.cuda.synchronize(self._backbone.device)
