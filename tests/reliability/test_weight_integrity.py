"""Weight integrity under random apply/revert cycles and injected faults (the CI-sized run of bench/soak.py).

The library run cycles several tasks' deltas on one backbone (apply, A→B switches, passes
interrupted at a random write, exceptions inside the forward pass) and compares the whole buffer with the
pristine copy; the engine runs send requests through the service's engine in both scheduling modes
with exceptions mid-swap and mid-forward, timeouts, cancellations, store overwrites and cache
evictions, and compare every answer with the serial reference. ``python -m bench.soak`` is the
100,000-cycle version (figures in docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import soak

LIBRARY_CYCLES = 5_000
ENGINE_REQUESTS = 300  # per scheduling mode


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> soak.Fixture:
    return soak.build_fixture(tmp_path_factory.mktemp("soak"), tasks=5)


def show(report: soak.Report) -> None:
    print("\n" + soak.format_reports([report]))


def test_library_cycles_leave_every_weight_bit_identical(fixture: soak.Fixture) -> None:
    report = soak.run_library_cycles(fixture, LIBRARY_CYCLES, seed=1)
    show(report)
    assert report.operations["swap-fault"] > 100 and report.operations["forward-fault"] > 100
    assert report.operations["swap-fault"] // 3 < report.faults["exception mid-swap"] <= report.operations["swap-fault"]
    assert report.operations["forward"] > 300  # answers compared bit for bit with the serial reference
    assert report.mismatches == 0
    assert report.buffer_compares >= LIBRARY_CYCLES // 1000 and report.buffer_mismatches == 0
    assert report.integrity_checks > LIBRARY_CYCLES and report.integrity_failures == 0
    assert report.final_intact


@pytest.mark.parametrize("scheduling", ["batched", "swap-per-request"])
def test_engine_requests_with_faults_lose_nothing(fixture: soak.Fixture, tmp_path: Path, scheduling: str) -> None:
    report = soak.run_engine_requests(
        fixture, ENGINE_REQUESTS, tmp_path, scheduling=scheduling, seed=2, fault_rate=0.05, deadline=30
    )
    show(report)
    assert report.faults["exception mid-swap"] > 0 and report.faults["exception mid-forward"] > 0
    assert report.faults["request cancelled"] > 0 and report.faults["request timed out"] > 0
    assert report.outcomes["answered"] > ENGINE_REQUESTS // 2
    assert report.lost == 0 and report.mismatches == 0
    assert report.integrity_checks > 0 and report.integrity_failures == 0
    assert report.final_intact
