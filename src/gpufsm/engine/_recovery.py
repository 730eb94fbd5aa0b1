"""Recovery from preemption and death: a run that outlives its machines.

SkyPilot's managed jobs are the model (``sky/jobs/recovery_strategy.py``): when the
job's machine is preempted or dies, launch a replacement and run the job again from the
start. The replacement goes through placement when the run was given requirements, so
a sold-out offer is simply passed over.

What gpufsm adds is the record of it. Every machine a run launches carries the run's id
and its generation (``RunLink``) in the row's own insert, committed before the provider
call. Ending the run ends every generation found in the *store*, not in this process's
memory, so a replacement whose launch was interrupted half-way is ended too (the leak
SkyPilot users report when recovery is cancelled, SkyPilot #4410).

"Lost" is concluded only on the provider's word: after the job fails, the row is
refreshed and must be in a state the machine does not come back from by itself
(stopped, failed, terminating, gone). A job that merely could not reach its machine
while the provider still calls it running is the job's failure, raised as it is: a
replacement would not fix the network, and terminating a machine the provider says is
running on an SSH timeout is exactly the "gone" that costs people their work.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from gpufsm.clock import Clock
from gpufsm.engine._waiting import ProgressCallback
from gpufsm.errors import GpufsmError, RecoveryExhausted, ValidationError
from gpufsm.machines import Event, InstanceState
from gpufsm.placement import Requirements
from gpufsm.specs import InstanceSpec
from gpufsm.store import InstanceRecord, InstanceStore, RunLink, TransitionRecord

__all__ = ["LOST_STATES", "Driver", "Launchable", "Recovering", "Recovery"]

log = logging.getLogger("gpufsm.fleet")

S = InstanceState
T = TypeVar("T")

#: States a machine does not leave for RUNNING by itself: a job that failed while its
#: machine is in one of these lost the machine, not its own way.
LOST_STATES = frozenset({S.STOPPING, S.STOPPED, S.FAILED, S.TERMINATING, S.TERMINATED})

Launchable = InstanceSpec | Mapping[str, Any] | Requirements


class Driver(Protocol):
    """What a recovering run needs of the façade (``Fleet`` is one): its commands are
    called through it, so a subclass's or a test double's overrides are honoured."""

    store: InstanceStore
    clock: Clock

    def launch(self, spec: Launchable, *, reason: str | None = ...,
               template: Mapping[str, Any] | None = ..., run: RunLink | None = ...
               ) -> InstanceRecord: ...

    def wait_for(self, instance_id: str, state: InstanceState, *, timeout: float,
                 poll_interval: float = ..., on_progress: ProgressCallback | None = ...
                 ) -> InstanceRecord: ...

    def refresh(self, instance_id: str, *, grace: bool = ...) -> InstanceRecord: ...

    def terminate(self, instance_id: str, *, reason: str | None = ...) -> InstanceRecord: ...

    def cancel_placement(self, placement_id: str, *, reason: str
                         ) -> Sequence[InstanceRecord]: ...


@dataclass(frozen=True, slots=True)
class Recovery:
    """How a run recovers: at most ``replacements`` machines after the first
    (``gpufsm run --recover N``), and for how long after a job failure the provider
    is given to report the machine lost (``settle`` seconds: a preempted machine can
    list as running for a while; 0 looks once)."""

    replacements: int
    settle: float = 0.0

    def __post_init__(self) -> None:
        if self.replacements < 0:
            raise ValidationError("recovery", "replacements is 0 or more",
                                  value=self.replacements)
        if self.settle < 0:
            raise ValidationError("recovery", "settle is 0 or more seconds", value=self.settle)


@dataclass
class Recovering:
    """One recovering run: its generations, the current machine, and how each ended.

    ``run(job)`` is the loop: wait for RUNNING, call ``job(record)``, and when it fails
    because the machine was lost, end that generation and launch the next. For callers
    that drive the steps themselves (``gpufsm run``), ``launch``, ``lost`` and
    ``replace`` are the same loop in pieces; ``end`` ends every generation.
    """

    driver: Driver
    what: Launchable
    recovery: Recovery
    template: Mapping[str, Any] | None = None
    reason: str | None = None
    timeout: float = 1800.0  # for each generation to be RUNNING
    poll_interval: float = 5.0
    on_progress: ProgressCallback | None = None
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: why each ended generation ended, in order (the current one is not in it)
    ends: list[str] = field(default_factory=list)
    record: InstanceRecord | None = None
    #: rows whose terminate the provider accepted here: ``end`` sends it no second time
    _sent: set[str] = field(default_factory=set, repr=False)

    @property
    def generation(self) -> int:
        """The current generation's number (1 for the first machine)."""
        return len(self.ends) + 1

    def generations(self) -> Sequence[InstanceRecord]:
        """Every row the run launched, placement attempts included, from the store."""
        return self.driver.store.generations(self.run_id)

    def launch(self) -> InstanceRecord:
        """Launch the current generation (its row carries the run's id first)."""
        n = self.generation
        why = f"run {self.run_id}, generation {n}"
        if self.ends:
            why += f" (generation {n - 1} {self.ends[-1]})"
        reason = f"{self.reason}; {why}" if self.reason else why
        self.record = self.driver.launch(self.what, template=self.template, reason=reason,
                                         run=RunLink(self.run_id, n))
        return self.record

    def lost(self, record: InstanceRecord, *, settle: float | None = None) -> str | None:
        """Why ``record``'s machine is lost, on the provider's word, or None (it is
        not, or the provider cannot say). Looks again for up to ``settle`` seconds.

        A machine someone terminated on purpose (a person, a budget policy, another
        process) is not lost: replacing it would undo their decision, and a budget
        would end each replacement in turn. That raises RecoveryExhausted, saying who.
        """
        clock = self.driver.clock
        wait = self.recovery.settle if settle is None else settle
        deadline = clock.monotonic() + wait
        while True:
            try:
                # no command grace: the job's failure is evidence of its own, so a
                # "preempted" just after the launch is believed, not waited out
                now = self.driver.refresh(record.id, grace=False)
            except GpufsmError as exc:
                log.warning("run %s: cannot look at %s (%s): not taken as lost",
                            self.run_id, record.id, exc)
                return None
            asked = self._terminate_asked(now)
            if asked is not None and asked.from_state not in LOST_STATES:
                raise RecoveryExhausted(self.run_id, (*self.ends, (
                    f"its machine {record.id[:8]} was terminated on purpose (by "
                    f"{asked.actor}: {asked.reason or 'no reason given'}): not replaced")))
            if asked is not None:  # lost first, then cleaned up (a reconciler ends FAILED)
                return (f"lost its machine {record.id[:8]} on {record.provider} "
                        f"({asked.from_state.value if asked.from_state else '?'}, then "
                        f"terminated by {asked.actor})")
            if now.state in LOST_STATES:
                said = (f", provider reports {now.last_raw_status!r}"
                        if now.last_raw_status else "")
                return (f"lost its machine {record.id[:8]} on {record.provider} "
                        f"({now.state.value}{said})")
            if clock.monotonic() >= deadline:
                return None
            clock.sleep(min(self.poll_interval, max(0.0, deadline - clock.monotonic())))

    def _terminate_asked(self, row: InstanceRecord) -> TransitionRecord | None:
        """The terminate command that took the machine, if one did (its first send, not
        a re-issue): from a state the machine does not leave by itself, it merely
        cleaned up a loss; from any other, someone decided to end it."""
        if not (row.state is S.TERMINATING or (row.state is S.TERMINATED
                                               and row.previous_state is S.TERMINATING)):
            return None
        return next((h for h in reversed(self.driver.store.history(row.id))
                     if h.event is Event.TERMINATE and h.from_state is not S.TERMINATING),
                    None)

    def replace(self, record: InstanceRecord, why: str) -> InstanceRecord:
        """End ``record``'s generation and launch the next; RecoveryExhausted when no
        replacement is left. A replacement whose launch fails uses one up too."""
        self._end_one(record, f"run {self.run_id}: generation {self.generation} {why}")
        self.ends.append(why)
        while True:
            if len(self.ends) > self.recovery.replacements:
                raise RecoveryExhausted(self.run_id, tuple(self.ends))
            log.info("run %s: generation %d %s; launching generation %d", self.run_id,
                     self.generation - 1, why, self.generation)
            try:
                return self.launch()
            except GpufsmError as exc:
                self.ends.append(f"could not be launched: {exc}")

    def run(self, job: Callable[[InstanceRecord], T]) -> T:
        """Run ``job`` on a RUNNING machine until it returns; when it raises and the
        machine was lost, again on a replacement. The job's own failure is raised."""
        record = self.record or self.launch()
        while True:
            try:
                running = self.driver.wait_for(record.id, S.RUNNING, timeout=self.timeout,
                                               poll_interval=self.poll_interval,
                                               on_progress=self.on_progress)
                return job(running)
            except Exception:
                why = self.lost(record)
                if why is None:
                    raise
            record = self.replace(record, why)

    def end(self, reason: str) -> list[InstanceRecord]:
        """Terminate every generation still billing (a placement cancelled whole, once);
        the rows after. A failed terminate is logged: that row is TERMINATING and the
        reconciler finishes it."""
        ended: list[InstanceRecord] = []
        placements: set[str] = set()
        for row in self.generations():
            if row.placement_id in placements or row.id in self._sent:
                continue
            if row.placement_id is not None:
                placements.add(row.placement_id)
            ended += self._end_one(row, reason)
        return ended

    def _end_one(self, row: InstanceRecord, reason: str) -> list[InstanceRecord]:
        """``row``'s machine ended: its whole placement cancelled, if it is an attempt
        of one (a surplus attempt must not outlive the generation either)."""
        try:
            if row.placement_id is not None:
                rows = list(self.driver.cancel_placement(row.placement_id, reason=reason))
            elif row.state is S.TERMINATED:
                return [row]
            else:
                rows = [self.driver.terminate(row.id, reason=reason)]
        except GpufsmError:
            log.exception("run %s: terminate of %s failed; the reconciler will retry",
                          self.run_id, row.id)
            return []
        # a row the terminate left TERMINATING had its call accepted (a failed call
        # raises, or is logged by cancel_placement and leaves last_error on the row)
        self._sent.update(r.id for r in rows if r.state in (S.TERMINATING, S.TERMINATED)
                          and r.last_error is None)
        return rows
