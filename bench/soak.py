"""Soak test of weight integrity: many random apply/revert cycles over several tasks, with injected faults.

Run from the repository root (venv active, offline)::

    python -m bench.soak --cycles 100000 --engine-requests 20000

On a tiny BERT backbone (the test suite's, built in a temp dir) with ``--tasks`` KEN subnetworks of
different fine-tunes, label counts and k, two phases:

1. **library**: ``--cycles`` random cycles of one ``Swapper``: apply + revert, apply + A→B
   ``switch`` + revert, an apply or switch interrupted at a random write (a random prefix of it
   written, then an exception) + revert, an exception raised inside the forward pass (a hook on an encoder layer)
   + revert; every ``--forward-every``-th cycle runs a forward pass and compares the logits with
   the serial reference bit for bit; the whole buffer is compared with the pristine copy every
   ``--compare-every`` cycles and at the end, and the service's incremental ``IntegrityMonitor``
   checks between cycles (it must never report a failure on intact weights).
2. **engine**: ``--engine-requests`` requests through ``InferenceEngine`` (the service's engine, no
   HTTP), half in ``batched`` and half in ``swap-per-request`` scheduling, ``--concurrency`` in
   flight, with injected exceptions mid-swap (a ``Swapper`` pass writes a random prefix and
   raises) and mid-forward, requests that time out (``asyncio.wait_for``) or are cancelled, tasks
   overwritten in the store meanwhile, a small device cache (deltas evicted and re-prepared), and
   the periodic integrity check running every few milliseconds. Every answered request is compared
   with the serial reference (labels exactly, logits ``allclose(atol=1e-5)``: batch composition
   changes the last bits of float32 matmuls). At the end the full SHA-256 of the weights must equal
   the one taken at load.

A request is *lost* if it ends in anything but its correct answer, the injected error of its
batch,
or the client's own timeout/cancellation (wrong answer, unexpected error, or no answer within
``--deadline`` seconds). Prints a table; exit status 1 if anything was lost or any check failed.
``tests/reliability/test_weight_integrity.py`` runs the same code with small counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import ken
from service.engine import InferenceEngine, load_backbone
from service.engine.backbone import weights_checksum
from service.engine.integrity import IntegrityMonitor, as_bits
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.store import DirectorySubnetworkStore
from tests.tiny_models import WORDS, make_bert_pair, perturb

MAX_LENGTH = 64  # the tiny BERT's positions: inputs are truncated to it
ATOL = 1e-5


class InjectedFault(RuntimeError):
    """Raised by the fault injectors; a request failing with it is an expected outcome, not a loss."""


# -- the tasks ------------------------------------------------------------------------------------------


@dataclass
class Task:
    name: str
    blob: bytes
    subnetwork: ken.Subnetwork


@dataclass
class Fixture:
    base: Path
    tasks: list[Task]
    texts: list[str]


def build_fixture(root: Path, tasks: int, seed: int = 0) -> Fixture:
    """A tiny BERT backbone and ``tasks`` KEN subnetworks of different fine-tunes of it."""
    pair = make_bert_pair(root / "pair", seed=seed)
    base_model = ken.load_backbone_model(pair.base)
    out: list[Task] = []
    ks = (4, 8, 16, 32, 64)
    for i in range(tasks):
        labels = 2 + i % 4
        id2label = {j: f"label{j}" for j in range(labels)}
        config = BertConfig.from_pretrained(pair.base, id2label=id2label, label2id={v: k for k, v in id2label.items()})
        model = BertForSequenceClassification(config)
        model.bert.load_state_dict(base_model.state_dict())
        perturb(model, seed + 100 + i, scale=0.02 + 0.01 * (i % 3))
        folder = root / f"ft{i}"
        model.save_pretrained(folder)
        subnetwork = ken.extract(pair.base, folder, k=ks[i % len(ks)], progress=False)
        out.append(Task(f"task{i}", ken.save_bytes(subnetwork), subnetwork))
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 80))) for _ in range(24)]
    return Fixture(pair.base, out, texts)


# -- the library phase ----------------------------------------------------------------------------------


@dataclass
class Report:
    """What a phase did and found; ``lost`` and ``failed_checks`` must be 0."""

    name: str
    operations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    mismatches: int = 0
    lost: int = 0
    integrity_checks: int = 0
    integrity_failures: int = 0
    buffer_compares: int = 0
    buffer_mismatches: int = 0
    final_intact: bool = False
    seconds: float = 0.0

    @property
    def failed_checks(self) -> int:
        return self.integrity_failures + self.buffer_mismatches + (0 if self.final_intact else 1)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.mismatches == 0 and self.failed_checks == 0


class ForwardFault:
    """A forward hook on an encoder layer that raises while armed (an exception in the middle of a forward)."""

    def __init__(self, module: torch.nn.Module, probability: float, rng: random.Random) -> None:
        self.probability = probability
        self.armed = False
        self.fired = 0
        self._rng = rng
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: object, output: object) -> None:
        if self.armed or (self.probability and self._rng.random() < self.probability):
            self.fired += 1
            raise InjectedFault("injected fault in the middle of the forward pass")

    def remove(self) -> None:
        self._handle.remove()


def encode(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return dict(tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt"))


def run_library_cycles(fixture: Fixture, cycles: int, *, seed: int = 0, forward_every: int = 10,
                       compare_every: int = 1000, segment_bytes: int = 16384) -> Report:  # fmt: skip
    """Phase 1 (see the module docstring)."""
    report = Report("library")
    started = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    backbone = ken.load_backbone_model(fixture.base).eval()
    flat = ken.FlatParameters(backbone)
    tokenizer = AutoTokenizer.from_pretrained(fixture.base)
    pristine = as_bits(flat.buffer.clone())
    pristine_hash = weights_checksum(flat)
    monitor = IntegrityMonitor(flat, segment_bytes=segment_bytes)
    plans = [ken.DeltaPlan(task.subnetwork, flat) for task in fixture.tasks]
    swapper = ken.Swapper(flat)
    models = [ken.attach_head(backbone, task.subnetwork.info, task.subnetwork.head) for task in fixture.tasks]
    inputs = [encode(tokenizer, [text]) for text in fixture.texts]
    fault = ForwardFault(backbone.encoder.layer[-1], 0.0, rng)
    with torch.no_grad():
        references = {}
        for t, (plan, model) in enumerate(zip(plans, models, strict=True)):
            swapper.apply(plan)
            for x, encoded in enumerate(inputs):
                references[t, x] = model(**encoded).logits
            swapper.revert()

        def forward_and_compare(t: int) -> None:
            x = rng.randrange(len(inputs))
            report.operations["forward"] += 1
            if not torch.equal(models[t](**inputs[x]).logits, references[t, x]):
                report.mismatches += 1

        def check(applied: int | None) -> None:
            problem = monitor.check(swapper, task=f"task{applied}")
            report.integrity_checks += 1
            report.integrity_failures += problem is not None

        for cycle in range(cycles):
            t = rng.randrange(len(plans))
            kind = rng.choices(("apply", "switch", "swap-fault", "forward-fault"), (70, 15, 8, 7))[0]
            report.operations[kind] += 1
            if kind in ("apply", "switch"):
                shown = t if kind == "apply" else rng.randrange(len(plans))
                swapper.apply(plans[t])
                swapper.switch(plans[shown])  # no-op for an apply
                check(shown)
                if cycle % forward_every == 0:
                    forward_and_compare(shown)
                swapper.revert()
            elif kind == "swap-fault":
                # What the owner does when a pass raises: revert whatever it wrote, then go on.
                with swap_faults(0.5, rng) as fired:
                    try:
                        swapper.apply(plans[t])
                        swapper.switch(plans[rng.randrange(len(plans))])
                    except InjectedFault:
                        pass
                report.faults["exception mid-swap"] += fired["exception mid-swap"]
                swapper.revert()
            else:
                swapper.apply(plans[t])
                fault.armed = True
                try:
                    models[t](**inputs[rng.randrange(len(inputs))])
                except InjectedFault:
                    report.faults["exception mid-forward"] += 1
                finally:
                    fault.armed = False
                    swapper.revert()
            check(None)
            if (cycle + 1) % compare_every == 0:
                report.buffer_compares += 1
                report.buffer_mismatches += not torch.equal(as_bits(flat.buffer), pristine)
    fault.remove()
    report.buffer_compares += 1
    report.buffer_mismatches += not torch.equal(as_bits(flat.buffer), pristine)
    report.final_intact = weights_checksum(flat) == pristine_hash
    report.outcomes["cycles"] = cycles
    report.seconds = time.perf_counter() - started
    return report


# -- the engine phase -----------------------------------------------------------------------------------


def _nonempty_chunks(plan: ken.DeltaPlan) -> int:
    """Writes a pass makes for the plan: one per chunk of the buffer that holds some of its entries."""
    edges = plan.chunk_edges
    return sum(1 for start, end in itertools.pairwise(edges) if end > start)


@contextlib.contextmanager
def swap_faults(probability: float, rng: random.Random) -> Iterator[Counter[str]]:
    """With ``probability`` per pass, make a ``Swapper`` pass raise at a random one of its writes,
    after writing a random prefix of that write's entries: a pass that stops anywhere."""
    fired: Counter[str] = Counter()
    original_switch, original_put = ken.Swapper.switch, ken.Swapper._put
    countdown: dict[int, int] = {}

    def switch(self: ken.Swapper, plan: ken.DeltaPlan | None) -> None:
        writes = sum(_nonempty_chunks(p) for p in {id(p): p for p in (plan, self.applied) if p is not None}.values())
        if writes and rng.random() < probability:
            countdown[id(self)] = rng.randrange(1, writes + 1)
        try:
            original_switch(self, plan)
        finally:
            countdown.pop(id(self), None)

    def put(self: ken.Swapper, index: torch.Tensor, values: torch.Tensor) -> None:
        left = countdown.get(id(self))
        if left is not None:
            countdown[id(self)] = left - 1
            if left == 1:
                del countdown[id(self)]
                cut = rng.randrange(index.numel() + 1)
                original_put(self, index[:cut], values[:cut])
                fired["exception mid-swap"] += 1
                raise InjectedFault("injected fault in the middle of a swap")
        original_put(self, index, values)

    ken.Swapper.switch, ken.Swapper._put = switch, put  # type: ignore[method-assign]
    try:
        yield fired
    finally:
        ken.Swapper.switch, ken.Swapper._put = original_switch, original_put  # type: ignore[method-assign]


def reference_logits(fixture: Fixture) -> dict[tuple[str, str], torch.Tensor]:
    """Serial single-text logits per (task, text), from a backbone laid out as the service's."""
    backbone = ken.load_backbone_model(fixture.base).eval()
    flat = ken.FlatParameters(backbone)
    tokenizer = AutoTokenizer.from_pretrained(fixture.base)
    out = {}
    with torch.no_grad():
        swapper = ken.Swapper(flat)
        for task in fixture.tasks:
            model = ken.attach_head(backbone, task.subnetwork.info, task.subnetwork.head)
            swapper.apply(ken.DeltaPlan(task.subnetwork, flat))
            for text in fixture.texts:
                out[task.name, text] = model(**encode(tokenizer, [text])).logits[0].float()
            swapper.revert()
    return out


def run_engine_requests(fixture: Fixture, requests: int, store_dir: Path, *, scheduling: str = "batched",
                        seed: int = 0, concurrency: int = 16, fault_rate: float = 0.02,
                        deadline: float = 60.0,
                        references: dict[tuple[str, str], torch.Tensor] | None = None) -> Report:  # fmt: skip
    """Phase 2 in one scheduling mode (see the module docstring)."""
    report = Report(f"engine ({scheduling})")
    started = time.perf_counter()
    rng = random.Random(seed)
    references = references if references is not None else reference_logits(fixture)
    backbone = load_backbone(fixture.base, name="tiny", device=torch.device("cpu"), dtype=torch.float32)
    pristine_hash = backbone.pristine_checksum
    staged_bytes = max(len(task.blob) for task in fixture.tasks)
    settings = Settings(
        backbone=fixture.base,
        scheduling=scheduling,
        max_wait_ms=1.0,
        max_batch_size=8,
        integrity_check_interval_s=0.005,
        integrity_segment_bytes=16384,
        device_cache_bytes=3 * staged_bytes,  # about half the tasks: deltas are evicted and prepared again
    )
    metrics = ServiceMetrics()
    fault = ForwardFault(backbone.model.encoder.layer[-1], fault_rate, random.Random(seed + 1))

    async def one(engine: InferenceEngine, store: DirectorySubnetworkStore, gate: asyncio.Semaphore) -> None:
        task = rng.choice(fixture.tasks)
        texts = [rng.choice(fixture.texts) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
        kind = rng.choices(("plain", "timeout", "cancel", "overwrite"), (80, 8, 8, 4))[0]
        async with gate:
            report.operations[kind] += 1
            if kind == "overwrite":  # the same bytes as a new version: a store change while requests run
                await store.put(task.name, task.blob, {})
                kind = "plain"
            call = asyncio.ensure_future(engine.predict(task.name, texts))
            try:
                if kind == "timeout":
                    prediction = await asyncio.wait_for(asyncio.shield(call), rng.uniform(0.0002, 0.005))
                elif kind == "cancel":
                    await asyncio.sleep(rng.uniform(0, 0.003))
                    call.cancel()
                    prediction = await call
                else:
                    prediction = await asyncio.wait_for(call, deadline)
            except asyncio.TimeoutError:
                if kind == "timeout":
                    report.faults["request timed out"] += 1
                    call.cancel()  # the client gives up: the request is dropped if still queued
                    with contextlib.suppress(asyncio.CancelledError, InjectedFault):
                        await asyncio.wait_for(call, deadline)
                    report.outcomes["timed out"] += 1
                else:
                    report.lost += 1
                    report.outcomes["no answer (lost)"] += 1
                return
            except asyncio.CancelledError:
                report.faults["request cancelled"] += 1
                report.outcomes["cancelled"] += 1
                return
            except InjectedFault:
                report.outcomes["failed by an injected fault"] += 1
                return
            except Exception as exc:  # anything else is a loss
                report.lost += 1
                report.outcomes[f"unexpected {type(exc).__name__} (lost)"] += 1
                return
        report.outcomes["answered"] += 1
        for row, text in enumerate(texts):
            expected = references[task.name, text]
            got = prediction.logits[row]
            exact = len(texts) == 1 and scheduling == "swap-per-request"
            same = torch.equal(got, expected) if exact else torch.allclose(got, expected, rtol=0, atol=ATOL)
            if not same or int(got.argmax()) != int(expected.argmax()):
                report.mismatches += 1

    async def main() -> None:
        store = DirectorySubnetworkStore(store_dir)
        for task in fixture.tasks:
            await store.put(task.name, task.blob, {})
        engine = InferenceEngine(backbone, store, settings, metrics)
        engine.start()
        await store.start()
        try:
            with swap_faults(fault_rate, random.Random(seed + 2)) as fired, torch.no_grad():
                gate = asyncio.Semaphore(concurrency)
                await asyncio.gather(*(one(engine, store, gate) for _ in range(requests)))
            report.faults.update(fired)
            full = await engine.verify_integrity()
            report.final_intact = full.intact and full.checksum == pristine_hash
            status = engine.integrity.status
            report.integrity_checks, report.integrity_failures = status.checks, status.failures
        finally:
            await engine.stop()
            await store.close()

    try:
        asyncio.run(main())
    finally:
        fault.remove()
    report.faults["exception mid-forward"] += fault.fired
    report.outcomes["swaps (task changes)"] = int(_total(metrics, "ken_swaps_total"))
    report.outcomes["failed batches"] = int(_total(metrics, "ken_failed_batches_total"))
    report.buffer_compares = 1
    report.buffer_mismatches = 0 if report.final_intact else 1
    report.seconds = time.perf_counter() - started
    return report


def _total(metrics: ServiceMetrics, name: str) -> float:
    return sum(
        sample.value for family in metrics.registry.collect() for sample in family.samples if sample.name == name
    )


# -- the report -----------------------------------------------------------------------------------------


def format_reports(reports: list[Report]) -> str:
    lines = []
    for report in reports:
        lines.append(f"## {report.name}: {report.seconds:.1f} s")
        lines.append("| what | count |")
        lines.append("|---|---:|")
        for title, counter in (("operation", report.operations), ("fault", report.faults)):
            for key, value in sorted(counter.items()):
                lines.append(f"| {title}: {key} | {value} |")
        for key, value in sorted(report.outcomes.items()):
            lines.append(f"| outcome: {key} | {value} |")
        lines.append(f"| answers differing from the serial reference | {report.mismatches} |")
        lines.append(f"| lost requests | {report.lost} |")
        checks, failed = report.integrity_checks, report.integrity_failures
        lines.append(f"| incremental integrity checks (failed) | {checks} ({failed}) |")
        lines.append(f"| full-buffer comparisons (differing) | {report.buffer_compares} ({report.buffer_mismatches}) |")
        lines.append(f"| final SHA-256 equals the one at load | {'yes' if report.final_intact else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=100_000, help="library-level apply/revert cycles")
    parser.add_argument("--engine-requests", type=int, default=20_000, help="requests through the engine (total)")
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fault-rate", type=float, default=0.02, help="per apply and per forward, engine phase")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model: a second intra-op thread mostly spins (10x slower on a busy machine)
    # Failed batches are expected here (injected); an integrity failure still shows (it logs CRITICAL).
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="ken-soak-") as tmp:
        root = Path(tmp)
        print(f"building a tiny BERT backbone and {args.tasks} tasks ...", flush=True)
        fixture = build_fixture(root, args.tasks, seed=args.seed)
        reports = [run_library_cycles(fixture, args.cycles, seed=args.seed)]
        print(format_reports(reports[-1:]), flush=True)
        references = reference_logits(fixture)
        for i, mode in enumerate(("batched", "swap-per-request")):
            share = args.engine_requests // 2 + (args.engine_requests % 2 if i == 0 else 0)
            report = run_engine_requests(
                fixture,
                share,
                root / f"store-{mode}",
                scheduling=mode,
                seed=args.seed + i,
                concurrency=args.concurrency,
                fault_rate=args.fault_rate,
                references=references,
            )
            reports.append(report)
            print(format_reports(reports[-1:]), flush=True)
    ok = all(report.ok for report in reports)
    print("RESULT:", "nothing lost, every check passed" if ok else "FAILED (see the tables)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
