"""Helpers shared by the library benchmarks: medians of repeated timings, a synthetic fine-tune."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def median_ms(
    fn: Callable[[], object], repeats: int, warmup: int = 2, synchronize: Callable[[], None] = lambda: None
) -> float:
    """Median wall time of ``fn`` in milliseconds, after ``warmup`` untimed calls.

    ``synchronize`` runs after every call, inside the timing (a device synchronisation on a GPU).
    """
    for _ in range(warmup):
        fn()
        synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def perturb_all(model: torch.nn.Module, seed: int, scale: float = 1e-3) -> torch.nn.Module:
    """Change every weight a little: a fine-tune where every row changed (nothing can be skipped)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    return model


def synthetic_finetune(base: Path, folder: Path, seed: int, num_labels: int = 5) -> Path:
    """Save a sequence classifier over ``base`` with every weight perturbed; returns ``folder``."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels)
    perturb_all(model, seed).save_pretrained(folder)
    return folder
