"""Prometheus metrics of one service instance, in a registry of its own (several apps can coexist in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SWAP_BUCKETS = (0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Every metric the service exports. Safe to update from any thread (prometheus_client locks)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.http_requests = Counter(
            "ken_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=registry
        )
        self.http_latency = Histogram(
            "ken_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_requests = Counter(
            "ken_inference_requests", "Inference requests per task and outcome.", ["task", "outcome"], registry=registry
        )
        self.inference_inputs = Counter(
            "ken_inference_inputs", "Inputs (texts or text pairs) answered per task.", ["task"], registry=registry
        )
        self.inference_tokens = Counter(
            "ken_inference_tokens",
            "Tokens of the answered inputs per task, after truncation.",
            ["task"],
            registry=registry,
        )
        self.inference_latency = Histogram(
            "ken_inference_duration_seconds",
            "Engine time of an inference request: delta lookup, tokenisation, queue, swap and forward.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "ken_queue_wait_seconds",
            "Time a request waited in the queue before its batch started.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queued_requests = Gauge("ken_queued_requests", "Requests waiting for the backbone.", registry=registry)
        self.batch_size = Histogram(
            "ken_batch_size_inputs", "Inputs per batch (one task).", buckets=BATCH_BUCKETS, registry=registry
        )
        self.forward_time = Histogram(
            "ken_forward_seconds", "Time of a batch's forward pass.", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.decode_step_time = Histogram(
            "ken_decode_step_seconds",
            "Time of one decode step of a batch of sequences (one task) being generated.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.generated_tokens = Counter(
            "ken_generated_tokens", "Tokens generated per task.", ["task"], registry=registry
        )
        self.swaps = Counter("ken_swaps", "Deltas applied to the backbone, per task.", ["task"], registry=registry)
        self.swap_time = Histogram(
            "ken_swap_seconds",
            "Time to write a task's delta into the backbone: from pristine (op=apply), straight from another task's "
            "(op=switch, one fused pass), or to take it out (op=revert).",
            ["task", "op"],
            buckets=SWAP_BUCKETS,
            registry=registry,
        )
        self.mixed_batches = Counter(
            "ken_mixed_batches",
            "Batches of several tasks' requests (KEN_MIXED_BATCHES): run as one mixed pass (outcome=mixed), or task "
            "by task because the pass could not mix them (outcome=fallback).",
            ["outcome"],
            registry=registry,
        )
        self.failed_batches = Counter("ken_failed_batches", "Batches that raised.", ["task"], registry=registry)
        self.nonfinite_outputs = Counter(
            "ken_nonfinite_outputs",
            "Requests refused because the task's forward pass gave NaN or Inf scores.",
            ["task"],
            registry=registry,
        )
        self.cache_hits = Counter("ken_cache_hits", "Delta cache hits per tier.", ["tier"], registry=registry)
        self.cache_misses = Counter("ken_cache_misses", "Delta cache misses per tier.", ["tier"], registry=registry)
        self.cache_bytes = Gauge(
            "ken_cache_bytes", "Bytes held by the delta cache per tier.", ["tier"], registry=registry
        )
        self.cache_entries = Gauge(
            "ken_cache_entries", "Entries in the delta cache per tier.", ["tier"], registry=registry
        )
        self.store_loads = Counter("ken_store_loads", "Subnetworks read from the store.", registry=registry)
        # The periodic backbone integrity check (service/engine/integrity.py).
        self.integrity_checks = Counter(
            "ken_integrity_checks", "Periodic backbone integrity checks run.", registry=registry
        )
        self.integrity_failures = Counter(
            "ken_integrity_failures", "Periodic integrity checks that found changed weights.", registry=registry
        )
        self.integrity_last_check = Gauge(
            "ken_integrity_last_check_timestamp_seconds",
            "Unix time of the last integrity check.",
            registry=registry,
        )
        self.integrity_ok = Gauge(
            "ken_integrity_ok", "1 while every integrity check has passed, 0 after a failure.", registry=registry
        )
        self.integrity_ok.set(1)
        self.integrity_check_time = Histogram(
            "ken_integrity_check_seconds",
            "Time of one integrity check on the owner thread.",
            buckets=SWAP_BUCKETS,
            registry=registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
