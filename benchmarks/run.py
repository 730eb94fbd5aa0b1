"""gpufsm's fleet-scale figures, each beside a baseline measured in the same run.

    python benchmarks/run.py                 # full run, writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick         # smoke test (< 60 s), writes RESULTS-quick.md
    python benchmarks/run.py --postgres URL  # also the PostgreSQL rows

Why ratios: absolute numbers on a shared 2-core machine say more about the neighbours
than about gpufsm. A ratio against the library or driver gpufsm is built on, measured in
the same process minutes apart (throughput: in alternating rounds), says what gpufsm's
own code costs. Memory and load are absolute targets and are printed as such.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from harness import Figure, Machine, Pair, Verdict, describe_machine, load_average
from rich.console import Console
from rich.table import Table

from gpufsm.adapters.lambda_cloud import LAMBDA_TERMINATE_BATCH_MAX

if TYPE_CHECKING:
    from bench_reconcile import PassResult

HERE = Path(__file__).resolve().parent
FULL_N = 100_000  # the fleet size the memory and load targets are stated for
MB = 1_000_000


@dataclass(frozen=True)
class Sizes:
    """How much work each row does. Quick mode shrinks everything and extrapolates."""

    engine_instances: int
    engine_seconds: float
    rounds: int
    memory_gpufsm: int
    memory_transitions: int
    load_rows: int
    load_runs: int
    persist_instances: int
    persist_seconds: float
    batch: int
    pass_http: int  # instances in the pass over the loopback emulator
    pass_sim: int  # instances in the pass over the in-process simulated cloud
    pass_rounds: int
    daemon_instances: int
    daemon_rounds: int
    placements: int  # concurrent placements per round (and plain launches beside them)
    placement_rounds: int


FULL = Sizes(engine_instances=1000, engine_seconds=0.3, rounds=9,
             memory_gpufsm=FULL_N, memory_transitions=10_000, load_rows=FULL_N, load_runs=3,
             persist_instances=1000, persist_seconds=0.6, batch=500,
             pass_http=10_000, pass_sim=FULL_N, pass_rounds=3,
             daemon_instances=240, daemon_rounds=3, placements=100, placement_rounds=3)
QUICK = Sizes(engine_instances=200, engine_seconds=0.15, rounds=3,
              memory_gpufsm=10_000, memory_transitions=1000, load_rows=10_000, load_runs=2,
              persist_instances=200, persist_seconds=0.2, batch=100,
              pass_http=10_000, pass_sim=10_000, pass_rounds=1,
              daemon_instances=120, daemon_rounds=1, placements=50, placement_rounds=1)

#: What each answer of the emulator waits in the daemons row, as a remote API would
#: (Lambda's answer in 0.2-0.5 s): daemons scale by overlapping these waits.
DAEMON_LATENCY = 0.02


# ---- formatting ----------------------------------------------------------------------------


def _rate(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.1f} k/s"
    return f"{value:,.0f} /s"


def _bytes(value: float) -> str:
    if value >= 1000 * MB:
        return f"{value / (1000 * MB):.2f} GB"
    return f"{value / MB:,.0f} MB"


def _at_least(ratio: float, floor: float) -> Verdict:
    return "PASS" if ratio >= floor else "FAIL"


def _pair_figure(section: str, name: str, pair: Pair, baseline_name: str, floor: float,
                 note: str = "") -> Figure:
    spread = pair.spread
    return Figure(
        section=section, name=name, value=_rate(pair.subject_rate),
        baseline_name=baseline_name, baseline=_rate(pair.baseline_rate),
        ratio=f"{pair.ratio:.2f}x", target=f"≥ {floor:g}x",
        verdict=_at_least(pair.ratio, floor),
        note=f"{note}; {spread}" if note else spread,
    )


def _skipped(section: str, name: str, baseline_name: str, target: str, reason: str,
             verdict: Verdict = "SKIP") -> Figure:
    return Figure(section, name, reason, baseline_name, "—", "—", target, verdict)


# ---- rows ----------------------------------------------------------------------------------


def engine_rows(sizes: Sizes) -> list[Figure]:
    from bench_engine import SLICES, run_engine

    section = "engine (in memory)"
    name = "engine commands/s in memory (guard + callback)"
    result = run_engine(instances=sizes.engine_instances, seconds=sizes.engine_seconds,
                        rounds=sizes.rounds)
    note = (f"check() with capability + policy guard; {result.instances} instances x "
            "5-event cycle (3 guarded commands, 2 observations); events per CPU-second; "
            f"each round in {SLICES} pieces per side, taken turn about")
    rows = [_pair_figure(section, name, result.vs_transitions,
                         "raw transitions, shared Machine(model=None)", 0.7, note)]
    if result.vs_statemachine is None:
        rows.append(_skipped(section, "same", "python-statemachine, one machine per instance",
                             "≥ 10x", result.statemachine_error or "not measured"))
    else:
        rows.append(_pair_figure(section, "same", result.vs_statemachine,
                                 "python-statemachine, one machine per instance", 10.0))
    return rows


def memory_rows(sizes: Sizes, load_db: Path) -> list[Figure]:
    from bench_memory import measure_gpufsm, measure_records, measure_transitions

    ours = measure_gpufsm(load_db)
    records = measure_records(load_db)
    theirs = measure_transitions(sizes.memory_transitions)
    ours_full, theirs_full = ours.extrapolated(FULL_N), theirs.extrapolated(FULL_N)
    scaled = ("" if ours.measured == FULL_N
              else f" (measured at {ours.measured:,}, x{FULL_N // ours.measured})")
    return [Figure(
        section="memory",
        name=f"memory for {FULL_N // 1000}k tracked instances",
        value=_bytes(ours_full) + " RSS",
        baseline_name=(f"transitions Machine per instance "
                       f"({theirs.measured // 1000}k, x{FULL_N // theirs.measured})"),
        baseline=_bytes(theirs_full),
        ratio=f"{ours_full / theirs_full:.3f}x",
        target="≤ 100 MB RSS",
        verdict="PASS" if ours_full <= 100 * MB else "FAIL",
        note=(f"what a reconcile pass holds: every live row from store.list_tracked() "
              f"(TrackedInstance), by id, in a fresh process{scaled}: "
              f"{ours.rss_delta / ours.measured:,.0f} B each; the same rows as full "
              f"InstanceRecords (store.list()): {records.rss_delta / records.measured:,.0f} "
              f"B each ({_bytes(records.extrapolated(FULL_N))}); baseline machines carry "
              f"no record data, {theirs.rss_delta / theirs.measured:,.0f} B each"),
    )]


def load_rows(sizes: Sizes, load_db: Path) -> list[Figure]:
    from bench_store import run_load

    result = run_load(load_db, rows=sizes.load_rows, runs=sizes.load_runs)
    factor = FULL_N / result.rows
    cpu, wall = result.cpu_seconds * factor, result.wall_seconds * factor
    raw, records = result.raw_cpu_seconds * factor, result.records_cpu_seconds * factor
    scaled = "" if factor == 1 else f" (measured at {result.rows:,}, x{factor:g})"
    return [Figure(
        section="load",
        name=f"load {FULL_N // 1000}k rows from SQLite into the engine",
        value=f"{cpu:.2f} s CPU",
        baseline_name="—", baseline="—", ratio="—", target="≤ 1 s",
        verdict="PASS" if cpu <= 1.0 else "FAIL",
        note=(f"SqlInstanceStore.list_tracked(every state but TERMINATED) → "
              f"TrackedInstances, what a pass loads, median of {result.runs}{scaled}; CPU "
              f"time (the file is in the page cache), wall time {wall:.2f} s; the same rows "
              f"as full InstanceRecords (store.list()): {records:.2f} s CPU; for scale, "
              f"SELECT * through sqlite3 fetchall(): {raw:.2f} s CPU"),
    )]


def persist_rows(section: str, backend: str, run: Callable[[], object] | None,
                 reason: str | None, raw: str, batch: int) -> list[Figure]:
    from bench_store import PersistResult

    one_name = f"persisted transitions/s, one transaction each (state + history), {backend}"
    many_name = f"persisted transitions/s, batched reconcile writes, {backend}"
    many_base = f"{raw} executemany, {batch} rows per transaction"
    if run is None:
        return [
            _skipped(section, one_name, f"{raw} UPDATE+INSERT per transaction", "≥ 0.25x",
                     reason or "skipped"),
            _skipped(section, many_name, many_base, "≥ 0.25x", reason or "skipped"),
        ]
    result = run()
    assert isinstance(result, PersistResult)
    return [
        _pair_figure(section, one_name, result.one_by_one,
                     f"{raw} UPDATE … RETURNING + INSERT per transaction", 0.25,
                     "SqlInstanceStore.transition()"),
        _pair_figure(section, many_name, result.batched, many_base, 0.25,
                     f"SqlInstanceStore.transition_many(), {batch} moves per call"),
    ]


#: What the rows-9-to-11 baseline does; README.md says what it leaves out.
RAW_HTTP = "raw pass: httpx GET + json.loads, one SELECT, dict diff, executemany"
RAW_SIM = "raw pass: in-process listing, one SELECT, dict diff, executemany"


def _within(ceilings: Sequence[tuple[float, float]]) -> Verdict:
    """PASS only when every (figure, ceiling) pair holds: a row with two targets
    passes on both or not at all."""
    return "PASS" if all(value <= ceiling for value, ceiling in ceilings) else "FAIL"


def _raw_note(result: PassResult, factor: float, listing: str) -> str:
    """How the raw pass's time splits, and how far the per-round ratios spread."""
    ratios = result.ratios
    written = result.raw[-1].written
    wrote = (f"{written} rows written by one executemany in one transaction" if written
             else "nothing to write")
    return (f"raw pass on the same world just before gpufsm's (its writes undone, "
            f"untimed, between): {listing} {result.raw_median('listing') * factor:.2f} s, "
            f"one SELECT of the live rows {result.raw_median('select') * factor:.2f} s, "
            f"dict diff {result.raw_median('diff') * factor:.2f} s, "
            f"{wrote} {result.raw_median('write') * factor:.2f} s; ratio "
            f"{min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} "
            f"round{'s' if len(ratios) > 1 else ''}")


def reconcile_rows(sizes: Sizes, work: Path) -> list[Figure]:
    from bench_reconcile import describe_calls, run_passes, total_calls

    section = "reconcile"
    http = run_passes(sizes.pass_http, workdir=work, http=True, rounds=sizes.pass_rounds)
    quiet = run_passes(sizes.pass_sim, workdir=work, http=False, rounds=sizes.pass_rounds,
                       dead_fraction=0, booted_fraction=0)
    sim = run_passes(sizes.pass_sim, workdir=work, http=False, rounds=sizes.pass_rounds)
    factor = FULL_N / sizes.pass_sim
    scaled = "" if factor == 1 else f"measured at {sizes.pass_sim:,}, x{factor:g}; "
    sim_wall, quiet_wall = sim.median_wall * factor, quiet.median_wall * factor
    sim_raw, quiet_raw = sim.raw_median() * factor, quiet.raw_median() * factor
    n_http = f"{sizes.pass_http // 1000}k"
    calls = total_calls(http.calls)
    actions = http.actions
    # the pass's terminates go out together, LAMBDA_TERMINATE_BATCH_MAX ids per request,
    # and the answer is their read-back: anything more (a GET per instance or per
    # terminate, a second page) would break this
    batches = -(-actions // LAMBDA_TERMINATE_BATCH_MAX)
    expected = http.calls["pages"] + batches
    naive = http.instances + 2 * actions
    serving = statistics.median(http.serving)
    listing = statistics.median(http.listing)
    parsing = statistics.median(http.parsing)
    return [
        Figure(section, f"reconcile pass, {n_http} instances, 1% drift, loopback HTTP "
               "emulator (Lambda)", f"{http.median_wall:.2f} s", RAW_HTTP,
               f"{http.raw_median():.2f} s", f"{http.ratio:.2f}x", "≤ 2.5x raw, ≤ 0.7 s",
               _within([(http.ratio, 2.5), (http.median_wall, 0.7)]),
               f"wall time of Reconciler.run_once, median {http.spread}; drift: "
               f"{http.drifted} rows (half finished booting, half died and are terminated); "
               f"of the pass, the listing (one GET of {n_http} instances) took "
               f"{listing:.2f} s, of which LambdaCloudAdapter validating its JSON (pydantic) "
               f"{parsing:.2f} s; the rest, gpufsm's engine and store with the "
               f"{http.actions} terminates, {http.median_wall - listing:.2f} s; the "
               f"emulator, in this process, spent {serving:.2f} s serving the pass's "
               f"requests; CPU {statistics.median(http.cpu):.2f} s; "
               + _raw_note(http, 1, f"GET of {n_http} instances + json.loads")),
        Figure(section, f"reconcile pass, {FULL_N // 1000}k instances, no drift, in-process "
               "simulated cloud", f"{quiet_wall:.2f} s", RAW_SIM, f"{quiet_raw:.2f} s",
               f"{quiet.ratio:.2f}x", "≤ 3x raw, ≤ 3 s",
               _within([(quiet.ratio, 3.0), (quiet_wall, 3.0)]),
               f"{scaled}wall time, median {quiet.spread}; every row agrees with the "
               f"provider: nothing written; the simulated cloud's listing took "
               f"{statistics.median(quiet.listing) * factor:.2f} s of it; "
               + _raw_note(quiet, factor, "the same listing")),
        Figure(section, f"reconcile pass, {FULL_N // 1000}k instances, 1% drift, in-process "
               "simulated cloud", f"{sim_wall:.2f} s", RAW_SIM, f"{sim_raw:.2f} s",
               f"{sim.ratio:.2f}x", "≤ 3x raw, ≤ 2 s",
               _within([(sim.ratio, 3.0), (sim_wall, 2.0)]),
               f"{scaled}wall time, median {sim.spread}; {sim.drifted} rows drifted: "
               f"{sim.drifted - sim.actions} transitions committed in one batch, and "
               f"{sim.actions} instances terminated by the step (their intents committed in "
               "one batch, then each called and read back, what the reads saw committed in "
               "one more batch); the "
               f"simulated cloud's listing took {statistics.median(sim.listing) * factor:.2f} "
               f"s of it; " + _raw_note(sim, factor, "the same listing")),
        Figure(section, "API calls per pass", f"{calls:,}", "one GET per instance "
               "(naive)", f"{naive:,}", f"{calls / naive:.3f}x",
               "= pages + terminate batches", "PASS" if calls == expected else "FAIL",
               f"the {n_http} pass over HTTP: {describe_calls(http.calls)} = "
               f"{http.calls['pages']} page + {batches} terminate request(s) for {actions} "
               f"instances (up to {LAMBDA_TERMINATE_BATCH_MAX} ids each, the answer is the "
               f"read-back); naive: {http.instances:,} GETs + a terminate and a GET per "
               f"instance"),
    ]


def daemon_rows(sizes: Sizes, pg_url: str | None, pg_reason: str | None) -> list[Figure]:
    section = "reconcile"
    name = (f"3 daemons on PostgreSQL vs 1: actions/s (provider answers in "
            f"{DAEMON_LATENCY * 1000:.0f} ms)")
    if pg_url is None:
        return [_skipped(section, name, "one daemon", "≥ 1.5x, 0 double actions",
                         pg_reason or "skipped")]
    from bench_reconcile import run_daemons

    lagged = run_daemons(pg_url, instances=sizes.daemon_instances, rounds=sizes.daemon_rounds,
                         latency=DAEMON_LATENCY)
    instant = run_daemons(pg_url, instances=sizes.daemon_instances, rounds=1, latency=0.0)
    batched = run_daemons(pg_url, instances=sizes.daemon_instances, rounds=1,
                          latency=DAEMON_LATENCY, batched=True)
    doubles = lagged.doubles + instant.doubles + batched.doubles
    ok = lagged.ratio >= 1.5 and doubles == 0
    return [Figure(
        section, name, f"{statistics.median(lagged.three):,.0f} /s", "one daemon",
        f"{statistics.median(lagged.one):,.0f} /s", f"{lagged.ratio:.2f}x",
        "≥ 1.5x, 0 double actions", "PASS" if ok else "FAIL",
        f"{doubles} double actions (a second terminate of one instance, counted by the "
        f"emulator, over every run); each terminate a request of its own, as on Vast.ai, "
        f"RunPod and Novita (no batched terminate); with Lambda's (100 ids a request) one "
        f"daemon alone did {statistics.median(batched.one):,.0f} /s and three "
        f"{statistics.median(batched.three):,.0f} /s ({batched.ratio:.2f}x): there one "
        f"pass is one request; each run: {lagged.instances} instances, "
        f"{lagged.actions} dead, one pass per daemon process at the same moment, leases "
        f"of {-(-lagged.instances // 3)} rows; ratio "
        f"{min(lagged.ratios):.2f}-{max(lagged.ratios):.2f} over {len(lagged.ratios)} "
        f"round(s); with answers at once ({statistics.median(instant.one):,.0f} vs "
        f"{statistics.median(instant.three):,.0f} /s, {instant.ratio:.2f}x) the daemons "
        f"share this host's {os.cpu_count()} cores with the emulator and PostgreSQL")]


def placement_rows(sizes: Sizes, work: Path, pg_url: str | None) -> list[Figure]:
    from bench_placement import (
        LAUNCH_REQUESTS,
        describe_burst,
        describe_ops,
        postgres_databases,
        run_api_calls,
        run_concurrent,
        sqlite_databases,
    )

    section = "placement"
    calls = run_api_calls(f"sqlite:///{work / 'placement-calls.db'}")
    per_attempt = ", ".join(f"{p} {n}" for p, n in sorted(LAUNCH_REQUESTS.items()))
    rows = [Figure(
        section, "API calls of one placement, 4 providers on loopback emulators, the 3 "
        "cheapest offers refusing", f"{calls.total}",
        "the same + one GET per matching offer (naive)", f"{calls.naive}",
        f"{calls.total / calls.naive:.2f}x", "≤ catalog + attempts + settlements, "
        "no GET per offer", "PASS" if calls.ok else "FAIL",
        f"catalog, read once: {describe_ops(calls.catalog)} = {calls.catalog_calls} "
        f"(RunPod's catalog is 2 requests: the v2 catalog and the GraphQL spot prices); "
        f"the placement: {describe_ops(calls.placement)}; attempts in order: "
        + "; ".join(f"{i}. {what}" for i, (_, what) in enumerate(calls.attempts, 1))
        + f"; refusals arranged: {' / '.join(calls.refused)}; bound = "
        f"{calls.catalog_calls} catalog + {calls.launch_requests} launch requests "
        f"({len(calls.attempts)} attempts; requests per launch: {per_attempt}) + "
        f"{calls.settlements} settlements = {calls.bound}; counting each attempt as one "
        f"request the bound would be {calls.strict_bound}; GETs of an offer or instance "
        f"and catalogs read again: {calls.gets}; {calls.matching} offers could be tried; "
        f"Lambda's are left out before any call (its adapter refuses a container image, "
        f"which the three container clouds require); the emulators answered "
        f"{sum(calls.answered.values())} requests, the adapters sent "
        f"{sum(calls.sent.values())}; placement wall time {calls.seconds * 1000:.0f} ms")]
    backend = "SQLite" if pg_url is None else "PostgreSQL"
    db = sqlite_databases(work) if pg_url is None else postgres_databases(pg_url)
    conc = run_concurrent(db, placements=sizes.placements, rounds=sizes.placement_rounds)
    place_rate = statistics.median(b.rate for b in conc.placements)
    plain_rate = statistics.median(b.rate for b in conc.launches)
    errors = conc.errors
    rows.append(Figure(
        section, f"{sizes.placements} concurrent placements ({conc.workers} threads, one "
        f"Fleet, {backend}), random refusals, then reconcile", f"{place_rate:,.1f} /s",
        "plain fleet.launch(spec) of the cheapest offer, same threads, no faults",
        f"{plain_rate:,.1f} /s", f"{conc.ratio:.2f}x", "0 double launches, 0 leaked "
        "machines", "PASS" if conc.ok else "FAIL",
        f"{conc.doubles} double launches (a request with two live machines once the "
        f"passes settled), {conc.leaked} leaked machines (live on an emulator, held by no "
        f"live billable row), {len(errors)} unexpected errors"
        + (f" (first: {errors[0]})" if errors else "")
        + f"; last round: {describe_burst(conc.placements[-1])}; "
        f"PlacementPolicy(block_for=0): a refusal is one request's, not the offer's for "
        f"the run; ratio {min(conc.ratios):.2f}-{max(conc.ratios):.2f} over "
        f"{len(conc.ratios)} round(s), wall time, each side on a fresh world"))
    return rows


# ---- report --------------------------------------------------------------------------------

_COLUMNS = ("#", "figure", "gpufsm", "baseline (same run)", "baseline", "ratio", "target",
            "result")


def _cells(i: int, f: Figure) -> tuple[str, ...]:
    return (str(i), f.name, f.value, f.baseline_name, f.baseline, f.ratio, f.target, f.verdict)


def print_table(console: Console, figures: Sequence[Figure], title: str) -> None:
    table = Table(title=title)
    for col in _COLUMNS:
        table.add_column(col, overflow="fold",
                         justify="right" if col in ("gpufsm", "baseline", "ratio") else "left")
    style = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow", "N/A": "dim"}
    for i, f in enumerate(figures, 1):
        cells = list(_cells(i, f))
        cells[-1] = f"[{style[f.verdict]}]{f.verdict}[/]"
        last = i == len(figures) or figures[i].section != f.section
        table.add_row(*cells, end_section=last)
    console.print(table)
    for i, f in enumerate(figures, 1):
        if f.note:
            console.print(f"  [dim]{i}. {f.note}[/]")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(figures: Sequence[Figure], machine: Machine, *, mode: str, argv: Sequence[str],
             seconds: float) -> str:
    lines = [
        "# gpufsm benchmark results",
        "",
        f"Generated by `python benchmarks/{' '.join(shlex.quote(a) for a in argv)}` "
        f"({mode} run) on {machine.date}; the run took {seconds:.0f} s.",
        "Every ratio is against a baseline measured in the same process in the same run",
        "(throughput: alternating rounds, median of per-round ratios). See README.md.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine.cpu}, {machine.cores} cores",
        f"- RAM: {machine.ram_gb:.1f} GiB",
        f"- Python: {machine.python} on {machine.platform}",
        "- Load average (1/5/15 min) before: "
        + " / ".join(f"{x:.2f}" for x in machine.load_before)
        + ", after: " + " / ".join(f"{x:.2f}" for x in machine.load_after),
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in machine.packages.items()),
        "",
        "## Results",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for i, f in enumerate(figures, 1):
        lines.append("| " + " | ".join(_md_escape(c) for c in _cells(i, f)) + " |")
    lines += ["", "## Notes", ""]
    lines += [f"{i}. {_md_escape(f.note)}" for i, f in enumerate(figures, 1) if f.note]
    return "\n".join(lines) + "\n"


# ---- main ----------------------------------------------------------------------------------


def _postgres(url: str | None) -> tuple[str | None, str | None]:
    """The URL to use, or why the PostgreSQL rows are skipped."""
    if not url:
        return None, "skipped: no --postgres URL and GPUFSM_TEST_POSTGRES is not set"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "skipped: psycopg is not installed (pip install gpufsm[postgres])"
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # any failure to reach it is a reason to skip, shown as such
        return None, f"skipped: cannot reach PostgreSQL ({type(exc).__name__})"
    finally:
        engine.dispose()
    return url, None


def _redacted(argv: Sequence[str]) -> list[str]:
    """The command line as typed, with any database password hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    out = []
    for arg in argv:
        try:
            out.append(make_url(arg).render_as_string(hide_password=True) if "://" in arg
                       else arg)
        except ArgumentError:
            out.append(arg)
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="gpufsm's fleet-scale figures beside same-run baselines.")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, extrapolated to 100k where a target needs it "
                             "(a smoke test, < 60 s)")
    parser.add_argument("--postgres", metavar="URL",
                        default=os.environ.get("GPUFSM_TEST_POSTGRES"),
                        help="SQLAlchemy URL of a PostgreSQL server (default: "
                             "$GPUFSM_TEST_POSTGRES); a fresh schema is made and dropped")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the Markdown table (default: RESULTS.md, "
                             "or RESULTS-quick.md with --quick, beside this script)")
    parser.add_argument("--tmpdir", type=Path, default=None,
                        help="where the SQLite files go (default: the system temp dir); "
                             "must be a real disk, or fsync-bound figures mean nothing")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a target is missed (default: report and exit 0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sizes = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    output: Path = args.output or HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    # a log or a pipe gets a wide table rather than rich's 80-column default
    console = Console() if sys.stdout.isatty() else Console(width=200)
    machine = describe_machine()
    pg_url, pg_reason = _postgres(args.postgres)
    started = time.perf_counter()

    figures: list[Figure] = []

    def step(label: str, rows: Callable[[], list[Figure]]) -> None:
        t = time.perf_counter()
        with console.status(f"{label} …"):
            figures.extend(rows())
        console.print(f"[dim]{label}: {time.perf_counter() - t:.1f} s[/]")

    from bench_store import make_records, run_persist_postgres, run_persist_sqlite, seed

    from gpufsm.store import SqlInstanceStore

    with tempfile.TemporaryDirectory(prefix="gpufsm-bench-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        load_db = work / "load.db"

        def seed_load() -> list[Figure]:
            store = SqlInstanceStore(f"sqlite:///{load_db}")
            try:
                seed(store, make_records(max(sizes.load_rows, sizes.memory_gpufsm)))
            finally:
                store.close()
            return []

        step("engine: check() vs transitions vs python-statemachine",
             lambda: engine_rows(sizes))
        step(f"seeding {max(sizes.load_rows, sizes.memory_gpufsm):,} rows", seed_load)
        step("memory (child processes)", lambda: memory_rows(sizes, load_db))
        step("load from SQLite", lambda: load_rows(sizes, load_db))
        step("persisted transitions, SQLite", lambda: persist_rows(
            "persisted (SQLite)", "SQLite", lambda: run_persist_sqlite(
                work / "persist.db", instances=sizes.persist_instances, batch=sizes.batch,
                seconds=sizes.persist_seconds, rounds=sizes.rounds),
            None, "raw sqlite3", sizes.batch))
        pg_run = None if pg_url is None else (lambda: run_persist_postgres(
            pg_url, instances=sizes.persist_instances, batch=sizes.batch,
            seconds=sizes.persist_seconds, rounds=sizes.rounds))
        step("persisted transitions, PostgreSQL", lambda: persist_rows(
            "persisted (PostgreSQL)", "PostgreSQL (loopback)", pg_run, pg_reason,
            "raw psycopg", sizes.batch))
        step("reconcile passes", lambda: reconcile_rows(sizes, work))
        step("daemons on PostgreSQL", lambda: daemon_rows(sizes, pg_url, pg_reason))
        step("placement", lambda: placement_rows(sizes, work, pg_url))

    took = time.perf_counter() - started
    machine = replace(machine, load_after=load_average())
    title = f"gpufsm benchmarks ({mode}) — {machine.cpu}, {machine.cores} cores, {machine.date}"
    print_table(console, figures, title)
    shown = ["run.py", *_redacted(sys.argv[1:] if argv is None else argv)]
    output.write_text(markdown(figures, machine, mode=mode, argv=shown, seconds=took),
                      encoding="utf-8")
    console.print(f"wrote {output} — whole run {took:.0f} s; load average before "
                  f"{machine.load_before[0]:.2f}, after {machine.load_after[0]:.2f}")
    missed = [f for f in figures if f.verdict == "FAIL"]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
