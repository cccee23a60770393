"""A cheap, periodic check that the resident backbone still holds exactly the weights it was loaded with.

The full check (``GET /v1/backbone/integrity``) hashes every weight and reverts any applied delta
first: too slow to run often on a real backbone. This module checks a little at a time, on the
owner thread, between batches, without reverting anything:

* the flat weight buffer is cut into segments of ``segment_bytes``; a digest of every segment is
  taken when the monitor is built (the backbone must be pristine then: the engine builds it before
  the owner thread starts);
* each :meth:`IntegrityMonitor.check` verifies the next segment in turn (so a full sweep takes
  ``segments`` checks). If a delta is applied, every entry it wrote inside the segment must hold
  exactly the delta's value (applied == expected, compared bit for bit), and the segment is then
  compared as it must look *with that delta reverted*: a copy of the segment gets the swapper's
  saved originals written back before hashing. So a stray write anywhere, a partial or corrupted
  apply, a revert that restored the wrong values, or originals that were saved from a non-pristine
  backbone all show up within one sweep.

A failure is sticky: weights that changed behind the owner's back cannot be trusted until the
process restarts. The engine then answers inference with 503 and ``/readyz`` fails with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

import torch

import ken
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 4 << 20

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits as integers (so NaN == NaN and -0.0 != 0.0, as bytes compare)."""
    return tensor.view(_BITS[tensor.element_size()])


def _digest(segment: torch.Tensor) -> bytes:
    raw = segment.detach().contiguous().view(torch.uint8).cpu().numpy()
    return hashlib.blake2b(raw, digest_size=16).digest()


@dataclass(frozen=True)
class IntegrityStatus:
    """What the checks have found so far (read by ``/readyz``)."""

    checks: int
    failures: int
    last_check: float | None  # wall-clock time (time.time()) of the last check
    failure: str | None  # the first failure's description; None while intact

    @property
    def ok(self) -> bool:
        return self.failure is None


class IntegrityMonitor:
    """Segment digests of the pristine backbone and the incremental check described in the module docstring.

    ``check`` must run on the backbone owner thread (it reads the weights between batches); ``status``
    may be read from any thread.
    """

    def __init__(
        self,
        flat: ken.FlatParameters,
        metrics: ServiceMetrics | None = None,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        self._flat = flat
        self._metrics = metrics
        element = flat.buffer.element_size()
        self._segment_elems = max(1, segment_bytes // element)
        total = flat.buffer.numel()
        self._bounds = [
            (start, min(start + self._segment_elems, total)) for start in range(0, total, self._segment_elems)
        ]
        self._digests = [_digest(flat.buffer[lo:hi]) for lo, hi in self._bounds]
        self._next = 0
        self._lock = threading.Lock()
        self._checks = 0
        self._failures = 0
        self._last_check: float | None = None
        self._failure: str | None = None

    @property
    def segments(self) -> int:
        """Checks needed for one full sweep of the buffer."""
        return len(self._bounds)

    @property
    def status(self) -> IntegrityStatus:
        with self._lock:
            return IntegrityStatus(self._checks, self._failures, self._last_check, self._failure)

    def check(self, swapper: ken.Swapper | None = None, *, task: str | None = None) -> str | None:
        """Verify the next segment (with the applied delta's entries in it); return a failure description or None.

        ``swapper`` is the one writing the backbone (None, or one with nothing applied, when it is
        pristine), ``task`` the applied task's name for the message. Owner thread only.
        """
        started = time.perf_counter()
        problem = self._check_segment(self._next, swapper, task)
        self._next = (self._next + 1) % len(self._bounds)
        self._record(problem, time.perf_counter() - started)
        return problem

    def check_all(self, swapper: ken.Swapper | None = None, *, task: str | None = None) -> str | None:
        """One full sweep (every segment); owner thread only."""
        problem = None
        for _ in range(len(self._bounds)):
            problem = self.check(swapper, task=task)
            if problem is not None:
                break
        return problem

    def report_failure(self, problem: str) -> None:
        """Record a failure found elsewhere (the full check of ``GET /v1/backbone/integrity``)."""
        self._record(problem, 0.0)

    # -- the checks ---------------------------------------------------------------------------------

    def _check_segment(self, index: int, swapper: ken.Swapper | None, task: str | None) -> str | None:
        lo, hi = self._bounds[index]
        segment = self._flat.buffer[lo:hi]
        plan = swapper.applied if swapper is not None else None
        if swapper is not None and plan is not None:
            start, end = _entries_between(plan, lo, hi)
            end = min(end, swapper.originals.numel())  # entries past a failed pass were never written
            if end > start:
                local = plan.positions[start:end].to(torch.int64) - lo
                wrong = as_bits(segment.take(local)) != as_bits(plan.values[start:end])
                if bool(wrong.any()):
                    first = lo + int(local[wrong.nonzero()[0, 0]])
                    return (
                        f"{int(wrong.sum())} of the entries written by {_who(task)} in segment {index + 1}/"
                        f"{len(self._bounds)} do not hold the subnetwork's values (first at flat position {first})"
                    )
                segment = segment.clone()
                segment.put_(local, swapper.originals[start:end])
        if _digest(segment) != self._digests[index]:
            state = f"with {_who(task)} reverted" if plan is not None else "with no delta applied"
            return (
                f"backbone weights changed: segment {index + 1}/{len(self._bounds)} (flat positions {lo}..{hi - 1}) "
                f"differs from the pristine weights {state}"
            )
        return None

    def _record(self, problem: str | None, seconds: float) -> None:
        with self._lock:
            self._checks += 1
            self._last_check = time.time()
            if problem is not None:
                self._failures += 1
                if self._failure is None:
                    self._failure = problem
        if problem is not None:
            logger.critical("backbone integrity check failed: %s", problem)
        metrics = self._metrics
        if metrics is not None:
            metrics.integrity_checks.inc()
            metrics.integrity_check_time.observe(seconds)
            metrics.integrity_last_check.set(self._last_check or 0.0)
            if problem is not None:
                metrics.integrity_failures.inc()
                metrics.integrity_ok.set(0)
            elif self._failure is None:
                metrics.integrity_ok.set(1)


def _entries_between(plan: ken.DeltaPlan, lo: int, hi: int) -> tuple[int, int]:
    """The range of the plan's (sorted) entries whose flat positions lie in ``[lo, hi)``."""
    bounds = torch.tensor([lo, hi], dtype=plan.positions.dtype, device=plan.positions.device)
    start, end = torch.searchsorted(plan.positions, bounds).tolist()
    return start, end


def _who(task: str | None) -> str:
    return f"task {task!r}" if task else "the applied delta"
