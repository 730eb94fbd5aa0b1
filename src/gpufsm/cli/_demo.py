"""``gpufsm demo``: a small fleet's whole life on the simulated cloud, with faults.

It uses the same pieces a user would (SqlInstanceStore on SQLite, Fleet, the simulated
cloud) and ends with the two checks that matter: every invariant holds, and nothing of
ours is left running on the cloud. Either failing makes the exit status non-zero.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gpufsm.config import default_database_url
from gpufsm.errors import GpufsmError, InsufficientCapacity
from gpufsm.fleet import Fleet
from gpufsm.machines import InstanceState
from gpufsm.store import InstanceRecord, SqlInstanceStore, TransitionRecord
from gpufsm.testing import FakeClock, SimulatedCloud, check_invariants

__all__ = ["demo_database_url", "history_lines", "run_demo"]

S = InstanceState


def demo_database_url() -> str:
    """A fresh SQLite file beside the embedded default, so real rows are never touched."""
    default = Path(default_database_url().removeprefix("sqlite:///"))
    return f"sqlite:///{default.with_name('gpufsm-demo.db')}"


def _fresh(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


def history_lines(rows: list[TransitionRecord]) -> list[str]:
    """One line per transition: narrow enough for an 80-column terminal."""
    out = []
    for h in rows:
        moved = f"{h.from_state.value if h.from_state else '(new)'} → {h.to_state.value}"
        raw = f" raw={h.raw_status}" if h.raw_status else ""
        why = f" — {h.reason}" if h.reason else ""
        out.append(f"  v{h.version:<2} {h.at:%H:%M:%S} {moved:<24} {h.event.value} "
                   f"({h.kind.value}){raw}{why}")
    return out


class _Demo:
    """The demo's phases; each prints what it did unless quiet."""

    def __init__(self, instances: int, seed: int, url: str, console: Console,
                 quiet: bool) -> None:
        self.n = instances
        self.url = url
        self.console = console
        self.quiet = quiet
        self.clock = FakeClock()
        self.cloud = SimulatedCloud("sim", clock=self.clock, seed=seed)
        self.store = SqlInstanceStore(url)
        self.fleet = Fleet(self.store, [self.cloud], clock=self.clock, actor="demo")
        self.faults: Counter[str] = Counter()
        self.ids: list[str] = []

    def say(self, *things: object, highlight: bool = True, soft_wrap: bool = False) -> None:
        if not self.quiet:
            self.console.print(*things, highlight=highlight, soft_wrap=soft_wrap)

    def table(self, title: str) -> None:
        table = Table("instance", "name", "state", "provider id", "ip", "billable",
                      title=title)
        for r in (self.store.get(i) for i in self.ids):
            table.add_row(r.id[:8], r.name or "", r.state.value, r.provider_instance_id or "-",
                          r.ip or "-", "yes" if r.billable else "no")
        self.say(table)

    def launch(self) -> list[str]:
        """Launch the fleet; the 2nd launch meets no capacity, the 3rd times out *after*
        the cloud created the machine (the case that leaks money if handled naively)."""
        for n in range(self.n):
            if n == 1:
                self.cloud.fail_next("launch", "capacity")
            if n == 2:
                self.cloud.fail_next("launch", "timeout", after_work=True)
            spec = {"provider": "sim", "instance_type": "gpu_1x_a10", "name": f"worker-{n}"}
            try:
                record = self.fleet.launch(spec)
            except InsufficientCapacity as exc:
                self.faults["capacity error at launch"] += 1
                self.say(f"  launch worker-{n}: [yellow]{exc}[/yellow] → FAILED, not billable")
                if exc.instance_id is not None:
                    self.ids.append(exc.instance_id)
                continue
            if n == 2:
                self.faults["launch timed out after doing the work (adopted by tag)"] += 1
            self.ids.append(record.id)
        self.table("after launch")
        return [i for i in self.ids if self.store.get(i).state is not S.FAILED]

    def exercise(self, launched: list[str]) -> None:
        for i in launched:
            self.fleet.wait_for(i, S.RUNNING, timeout=900, poll_interval=5)
        self.table(f"all running after {self.clock.monotonic():.0f}s (simulated)")
        if launched:
            first = launched[0]
            self.fleet.stop(first, reason="demo: stop")
            self.fleet.wait_for(first, S.STOPPED, timeout=600, poll_interval=5)
            self.fleet.start(first, reason="demo: start again")
            self.fleet.wait_for(first, S.RUNNING, timeout=600, poll_interval=5)
            self.say(f"  stop → STOPPED → start → RUNNING on {first[:8]}")
        if len(launched) >= 2:
            victim = launched[-1]
            self.cloud.kill(self.store.get(victim).provider_instance_id or "")
            self.faults["instance died (unhealthy)"] += 1
            dead = self.fleet.refresh(victim)
            self.say(f"  {victim[:8]} died: provider says {dead.last_raw_status!r} → "
                     f"{dead.state}")
            self.fleet.restart(victim, reason="demo: restart the unhealthy instance")
            self.fleet.wait_for(victim, S.RUNNING, timeout=600, poll_interval=5)
            self.say(f"  restart → RUNNING on {victim[:8]}")

    def clean_up(self) -> list[InstanceRecord]:
        for i in self.ids:
            self.fleet.terminate(i, reason="demo: clean up")
        for i in self.ids:
            self.fleet.wait_for(i, S.TERMINATED, timeout=600, poll_interval=5)
        self.cloud.settle()
        self.table("after terminate")
        final = [self.store.get(i) for i in self.ids]
        for r in final:
            self.say(f"[bold]history of {r.id}[/bold] ({r.name})")
            for line in history_lines(list(self.store.history(r.id))):
                self.say(line, highlight=False, soft_wrap=True)
        return final

    def summary(self) -> bool:
        problems = check_invariants(self.store, self.ids)
        leaked = self.cloud.live_instances()
        summary = Table("figure", "value", title="demo summary")
        summary.add_row("instances", str(len(self.ids)))
        summary.add_row("transitions persisted",
                        str(sum(len(self.store.history(i)) for i in self.ids)))
        summary.add_row("faults survived", str(sum(self.faults.values())))
        for name, count in sorted(self.faults.items()):
            summary.add_row(f"  {name}", str(count))
        summary.add_row("provider calls", str(sum(self.cloud.calls.values())))
        summary.add_row("simulated time", f"{self.clock.monotonic():.0f}s")
        summary.add_row("invariants broken", str(len(problems)))
        summary.add_row("instances left on the cloud", str(len(leaked)))
        self.console.print(summary)
        for p in problems:
            self.console.print(f"[red]invariant broken:[/red] {p}")
        for inst in leaked:
            self.console.print(f"[red]leaked:[/red] {inst.id} ({inst.phase})")
        ok = not problems and not leaked
        self.console.print("[green]OK[/green]" if ok else "[red]FAILED[/red]")
        return ok


def run_demo(*, instances: int, seed: int, database_url: str | None, console: Console,
             quiet: bool = False) -> bool:
    """Run the demo; True when every invariant held and nothing leaked."""
    url = database_url or demo_database_url()
    if database_url is None:
        _fresh(url)
    demo = _Demo(instances, seed, url, console, quiet)
    try:
        demo.say(f"[bold]gpufsm demo[/bold]: {instances} instances on the simulated cloud, "
                 f"database {url}")
        demo.exercise(demo.launch())
        demo.clean_up()
        return demo.summary()
    except GpufsmError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return False
    finally:
        demo.store.close()
