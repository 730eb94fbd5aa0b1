"""The engine rooms behind the ``Fleet`` façade: decide (pure), then apply.

``decide`` turns one observation of one row into a ``Decision`` (data); the observe
rooms commit decisions, one (``observe_one``) or a batch (``observe_batch``, one
transaction for the moves of the batch); commands, launch and adoption write their
intent first and call the provider after. Nothing here imports the façade, the
reconciler or the CLI (import-linter holds it).
"""

from gpufsm.engine._adoption import adopt
from gpufsm.engine._batch import Outcome, observe_batch
from gpufsm.engine._commands import (
    clock_event,
    command,
    confirm,
    refresh,
    send_terminate,
    terminate,
)
from gpufsm.engine._context import DEFAULT_VISIBILITY_WINDOW, Engine
from gpufsm.engine._decide import (
    Row,
    decide,
    inside_window,
    row_after,
    since_accepted,
    unchanged,
)
from gpufsm.engine._decision import Decision, Drift, Health, Need, Step
from gpufsm.engine._health import gate_health
from gpufsm.engine._launch import launch
from gpufsm.engine._observe import apply_one, observe_one
from gpufsm.engine._placement import PlacementPolicy, cancel, place
from gpufsm.engine._recovery import LOST_STATES, Driver, Launchable, Recovering, Recovery
from gpufsm.engine._session import session
from gpufsm.engine._surplus import sweep_surplus
from gpufsm.engine._terminate_batch import Ended, terminate_batch
from gpufsm.engine._waiting import ProgressCallback, wait_for

__all__ = [
    "DEFAULT_VISIBILITY_WINDOW",
    "LOST_STATES",
    "Decision",
    "Drift",
    "Driver",
    "Ended",
    "Engine",
    "Health",
    "Launchable",
    "Need",
    "Outcome",
    "PlacementPolicy",
    "ProgressCallback",
    "Recovering",
    "Recovery",
    "Row",
    "Step",
    "adopt",
    "apply_one",
    "cancel",
    "clock_event",
    "command",
    "confirm",
    "decide",
    "gate_health",
    "inside_window",
    "launch",
    "observe_batch",
    "observe_one",
    "place",
    "refresh",
    "row_after",
    "send_terminate",
    "session",
    "since_accepted",
    "sweep_surplus",
    "terminate",
    "terminate_batch",
    "unchanged",
    "wait_for",
]
