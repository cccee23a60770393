"""The inference engine: the async face of the backbone owner, the delta cache and the tokenizer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

import ken
from ken.generation import DecodeState
from ken.pooling import Pooling
from ken.taskmodel import (
    FEATURE_EXTRACTION,
    PAIR_SCORING,
    SEQUENCE_CLASSIFICATION,
    TEXT_GENERATION,
    TOKEN_CLASSIFICATION,
    task_pooling,
)
from service.engine.backbone import ResidentBackbone
from service.engine.encoding import EncodedTexts, TextEncoder
from service.engine.generation import CompletionRequest, CompletionUsage, TextDelta, generate, prompt_tokens
from service.engine.integrity import IntegrityMonitor
from service.engine.mixed import CostModel, MixedBatchPolicy, calibrate, calibration_models
from service.engine.owner import BackboneOwner
from service.engine.resolver import TaskResolver
from service.engine.scheduler import DecodeItem, TaskQueues, WorkItem
from service.engine.staged import StagedTask
from service.errors import EngineStopped, InvalidInput
from service.metrics import ServiceMetrics
from service.settings import MixedMode, SchedulingMode, Settings
from service.store import SubnetworkStore, TaskNotFound
from service.task_types import check_task_type

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """Raw results for one request; the API turns them into labels, scores, entities or embeddings."""

    task: str
    version: int
    task_type: str
    labels: list[str]
    #: per input, float32: logits [labels] (classification, pair scoring), [tokens, labels] (token
    #: classification) or the pooled, not yet normalised embedding [hidden] (feature extraction)
    outputs: list[torch.Tensor]
    encoded: EncodedTexts
    pooling: Pooling | None = None  # feature extraction only

    @property
    def truncated(self) -> list[bool]:
        return self.encoded.truncated

    @property
    def logits(self) -> torch.Tensor:
        """``[inputs, labels]`` (one row per input: classification and pair scoring)."""
        return torch.stack(self.outputs)

    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=-1)

    def embeddings(self, normalize: bool | None = None) -> torch.Tensor:
        """``[inputs, hidden]`` (feature extraction), L2-normalised when asked (None: as the task's pooling says)."""
        assert self.pooling is not None, "not an embedding task"
        vectors = torch.stack(self.outputs)
        wanted = self.pooling.normalize if normalize is None else normalize
        return torch.nn.functional.normalize(vectors, p=2, dim=1) if wanted else vectors


@dataclass(frozen=True)
class Completion:
    """A generation under way: its task version, token counts so far and the text as it comes."""

    task: str
    version: int
    usage: CompletionUsage
    deltas: AsyncIterator[TextDelta]


@dataclass(frozen=True)
class IntegrityReport:
    checksum: str
    pristine_checksum: str

    @property
    def intact(self) -> bool:
        return self.checksum == self.pristine_checksum


DEFAULT_ACCELERATOR_HOST_CACHE_BYTES = 1 << 30


def host_cache_budget(settings: Settings, device: torch.device) -> int:
    """The host tier's byte budget: as configured, else 1 GiB beside an accelerator and none on the CPU."""
    if settings.host_cache_bytes is not None:
        return settings.host_cache_bytes
    return 0 if device.type == "cpu" else DEFAULT_ACCELERATOR_HOST_CACHE_BYTES


class InferenceEngine:
    """Answers ``predict(task, texts)``: resolve the task's delta, tokenise, queue for the owner, await logits.

    Everything here runs on the event loop or in worker threads; only the :class:`BackboneOwner`
    thread touches the backbone's weights.
    """

    def __init__(
        self, backbone: ResidentBackbone, store: SubnetworkStore, settings: Settings, metrics: ServiceMetrics
    ) -> None:
        self.backbone = backbone
        self._metrics = metrics
        self._encoder = TextEncoder(backbone.tokenizer, backbone.max_length)
        self._resolver = TaskResolver(
            store,
            backbone,
            metrics,
            device_budget=settings.device_cache_bytes,
            host_budget=host_cache_budget(settings, backbone.device),
        )
        swap_per_request = settings.scheduling is SchedulingMode.SWAP_PER_REQUEST
        self._mixed_policy: MixedBatchPolicy | None = None
        if settings.mixed_batches is not MixedMode.OFF and not swap_per_request:
            mixed = ken.MixedForward(backbone.model, backbone.flat)
            self._mixed_policy = MixedBatchPolicy(mixed, always=settings.mixed_batches is MixedMode.ALWAYS)
        self._queues = TaskQueues(
            max_batch_inputs=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000,
            max_consecutive=settings.max_consecutive_batches,
            one_request_per_batch=swap_per_request,
            mixed_policy=self._mixed_policy,
        )
        self._owner = BackboneOwner(
            backbone,
            self._encoder,
            self._queues,
            metrics,
            max_batch_inputs=settings.max_batch_size,
            keep_applied=not swap_per_request,
            mixed=self._mixed_policy.mixed if self._mixed_policy is not None else None,
        )
        store.subscribe(self._resolver.invalidate)
        # Built now, while the backbone is pristine: the reference digests of the periodic check.
        self.integrity = IntegrityMonitor(backbone.flat, metrics, segment_bytes=settings.integrity_segment_bytes)
        self._integrity_interval = settings.integrity_check_interval_s
        self._integrity_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._owner.alive

    @property
    def mixed_cost_model(self) -> CostModel | None:
        """The rates measured at start-up with ``KEN_MIXED_BATCHES=auto`` (None before that, or in other modes)."""
        return self._mixed_policy.cost_model if self._mixed_policy is not None else None

    def start(self) -> None:
        """Start the owner thread and, when called on an event loop, the periodic integrity checks.

        With ``KEN_MIXED_BATCHES=auto`` the owner's first job measures the mixed-batch cost model."""
        self._owner.start()
        if self._mixed_policy is not None and not self._mixed_policy.always:
            self._queues.submit_control(lambda: self._owner.on_pristine(self._calibrate)).add_done_callback(
                _log_failure
            )
        if self._integrity_interval > 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no event loop: checks run only when asked (check_integrity)
            self._integrity_task = loop.create_task(self._check_periodically(), name="ken-integrity-checks")

    async def stop(self) -> None:
        """Fail queued work, let the owner revert and exit."""
        if self._integrity_task is not None:
            self._integrity_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._integrity_task
            self._integrity_task = None
        self._queues.close()
        await asyncio.to_thread(self._owner.join)

    async def predict(
        self,
        task: str,
        texts: Sequence[str],
        *,
        pairs: Sequence[str] | None = None,
        accept: Collection[str] = (SEQUENCE_CLASSIFICATION,),
    ) -> Prediction:
        """Run ``task`` over ``texts`` (with ``pairs`` as second segments, for pair scoring).

        ``accept``: the task types the calling route serves; any other raises WrongTaskType naming
        the task's routes, before anything is queued.
        """
        started = time.perf_counter()
        task_label, outcome = task, "error"
        failure = self.integrity.status.failure
        if failure is not None:  # the weights cannot be trusted: answer nothing rather than wrong answers
            raise EngineStopped(f"the backbone failed its integrity check, restart the service: {failure}")
        try:
            staged = await self._resolver.resolve(task)
            check_task_type(task, staged.info.task_type, accept)
            encoded = await asyncio.to_thread(self._encode, staged, texts, pairs)
            item = WorkItem(staged, encoded)
            self._queues.submit(item)
            self._metrics.queued_requests.set(self._queues.pending_requests)
            outputs = await asyncio.wrap_future(item.future)
            outcome = "ok"
        except TaskNotFound:
            # Unknown names come from clients: one shared series, so they cannot inflate the label set.
            task_label, outcome = "", "not_found"
            raise
        finally:
            self._metrics.inference_requests.labels(task_label, outcome).inc()
            self._metrics.inference_latency.observe(time.perf_counter() - started)
        self._metrics.inference_inputs.labels(task).inc(len(texts))
        self._metrics.inference_tokens.labels(task).inc(sum(len(f["input_ids"]) for f in encoded.features))
        pooling = task_pooling(staged.info) if staged.info.task_type == FEATURE_EXTRACTION else None
        return Prediction(task, staged.version, staged.info.task_type, staged.labels, outputs, encoded, pooling)

    def _encode(self, staged: StagedTask, texts: Sequence[str], pairs: Sequence[str] | None) -> EncodedTexts:
        """Tokenise as the task's type needs: pairs, character offsets, the pooling's length limit."""
        task_type = staged.info.task_type
        if (pairs is not None) != (task_type == PAIR_SCORING):
            raise InvalidInput(f"a {task_type} task takes {'text pairs' if pairs is None else 'single texts'}")
        max_length = None
        if task_type == FEATURE_EXTRACTION:
            max_length = task_pooling(staged.info).max_seq_length
        return self._encoder.encode(
            texts, pairs=pairs, offsets=task_type == TOKEN_CLASSIFICATION, max_length=max_length
        )

    async def stage(self, task: str, version: int) -> int:
        """Make ``task`` resident at ``version`` or newer before requests for it arrive; the version staged.

        The hook of routers that name versions (service/deploy): older cached versions are dropped first.
        """
        self._resolver.expect(task, version)
        return (await self._resolver.resolve(task)).version

    async def start_completion(self, task: str, request: CompletionRequest) -> Completion:
        """Check the task and the prompt (errors raise here, before any text is sent), then generate lazily."""
        staged = await self._resolver.resolve(task)
        check_task_type(task, staged.info.task_type, (TEXT_GENERATION,))
        tokenizer = self.backbone.tokenizer
        ids = await asyncio.to_thread(
            prompt_tokens, tokenizer, request.prompt, request.max_tokens, self.backbone.max_length
        )
        usage = CompletionUsage(prompt_tokens=len(ids))
        deltas = generate(staged, tokenizer, ids, request, self._decode_step, usage)
        return Completion(task, staged.version, usage, self._counted(task, deltas))

    async def _decode_step(self, staged: StagedTask, state: DecodeState) -> torch.Tensor:
        if self.integrity.status.failure is not None:
            raise EngineStopped(f"the backbone failed its integrity check: {self.integrity.status.failure}")
        item = DecodeItem(staged, state)
        self._queues.submit(item)
        logits = await asyncio.wrap_future(item.future)
        self._metrics.generated_tokens.labels(staged.task).inc()
        return logits

    async def _counted(self, task: str, deltas: AsyncIterator[TextDelta]) -> AsyncIterator[TextDelta]:
        """``deltas``, with the request counted once it ends (ok, or error when a step failed)."""
        started = time.perf_counter()
        outcome = "error"
        try:
            async for delta in deltas:
                yield delta
            outcome = "ok"
        finally:
            self._metrics.inference_requests.labels(task, outcome).inc()
            self._metrics.inference_latency.observe(time.perf_counter() - started)

    async def verify_integrity(self) -> IntegrityReport:
        """Checksum the weights on the owner thread, after reverting any applied delta."""
        checksum = await self._on_owner(self._owner.pristine_checksum)
        report = IntegrityReport(checksum, self.backbone.pristine_checksum)
        if not report.intact:
            self.integrity.report_failure(f"full check: weights hash to {checksum}, not {report.pristine_checksum}")
        return report

    async def check_integrity(self) -> str | None:
        """One incremental integrity check now, on the owner thread between batches; the failure or None."""
        return await self._on_owner(lambda: self._owner.check_integrity(self.integrity))

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._integrity_interval)
            try:
                await self.check_integrity()
            except EngineStopped:
                return
            except Exception:  # a bug in the check must not end the checks silently
                logger.exception("the periodic integrity check raised")

    async def check_head(self, subnetwork: ken.Subnetwork) -> None:
        """Build (and drop) the subnetwork's task model, which fails on any missing or misshapen head tensor.

        Runs on the owner thread: see :class:`~service.engine.staged.StagedTask` for why.
        """
        await self._on_owner(lambda: ken.attach_head(self.backbone.model, subnetwork.info, subnetwork.head))

    def offer(self, task: str, version: int, subnetwork: ken.Subnetwork) -> None:
        """Keep a subnetwork just uploaded through this instance in the host tier."""
        self._resolver.offer(task, version, subnetwork)

    def _calibrate(self) -> None:
        """Owner thread, pristine weights: measure the cost model; until then (or if this fails) batches swap."""
        policy = self._mixed_policy
        assert policy is not None
        device = self.backbone.device
        token = self._encoder.pad_token_id + 1

        def inputs(count: int, length: int) -> dict[str, torch.Tensor]:
            ids = torch.full((count, min(length, self.backbone.max_length)), token, dtype=torch.long, device=device)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        models = calibration_models(self.backbone.model)
        policy.cost_model = calibrate(self.backbone.swapper, policy.mixed, models, inputs)

    async def _on_owner(self, function: Callable[[], T]) -> T:
        if not self.running:
            raise EngineStopped("the inference engine is not running")
        return await asyncio.wrap_future(self._queues.submit_control(function))


def _log_failure(future: concurrent.futures.Future[None]) -> None:
    """Log a failed calibration (not one the engine's stop cancelled before it ran)."""
    error = None if future.cancelled() else future.exception()
    if error is not None and not isinstance(error, EngineStopped):
        logger.error("measuring the mixed-batch cost model failed: batches swap", exc_info=error)
