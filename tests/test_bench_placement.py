"""The placement rows of the benchmarks (``benchmarks/bench_placement.py``), run at a tiny
size so CI proves they keep working: the API-call count of one placement with three
refusals, and a handful of concurrent placements with lost answers settled by the
reconciler. The figures themselves come from ``python benchmarks/run.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_placement

        yield bench_placement
    finally:
        sys.path.remove(str(BENCH))


def test_one_placement_costs_the_catalog_and_its_attempts_and_no_get_per_offer(
        bench: ModuleType, tmp_path: Path) -> None:
    result = bench.run_api_calls(f"sqlite:///{tmp_path / 'calls.db'}")
    # every provider's catalog read once; RunPod's takes the catalog and the spot query
    assert {p: sum(c.values()) for p, c in result.catalog.items()} == {
        "lambda": 1, "novita": 1, "runpod": 2, "vastai": 1}
    assert result.tried_as_arranged, result.attempts
    assert len(result.attempts) == 4 and result.attempts[-1][1].endswith("placed")
    assert result.settlements == 0
    assert result.gets == 0
    assert result.total <= result.bound < result.naive
    assert result.answered == result.sent  # the emulators saw what the adapters sent
    assert result.ok


def test_concurrent_placements_leave_one_machine_each_and_nothing_leaked(
        bench: ModuleType, tmp_path: Path) -> None:
    result = bench.run_concurrent(bench.sqlite_databases(tmp_path), placements=6, rounds=1,
                                  workers=3, lost=0.5)
    ours, plain = result.placements[0], result.launches[0]
    assert ours.errors == [] and plain.errors == []
    assert ours.done + ours.failed == 6 and plain.done == 6
    assert ours.faults["lost"] >= 1  # a machine the tag search could not see was made
    assert ours.attempts > 6  # refused and lost requests made more attempt rows
    assert ours.settled and plain.settled
    assert result.doubles == 0 and result.leaked == 0
    assert result.ok and result.ratio > 0


def test_the_rows_are_registered_and_pass_at_a_tiny_size(bench: ModuleType,
                                                         tmp_path: Path) -> None:
    import run

    sizes = replace(run.QUICK, placements=4, placement_rounds=1)
    rows = run.placement_rows(sizes, tmp_path, None)
    assert [r.section for r in rows] == ["placement", "placement"]
    assert [r.verdict for r in rows] == ["PASS", "PASS"], [r.note for r in rows]
    assert "0 double launches" in rows[1].note and "0 leaked machines" in rows[1].note
