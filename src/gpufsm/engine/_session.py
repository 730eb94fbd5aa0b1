"""Sessions: a machine (or a recovering run's machines) for the length of a ``with``.

The one promise is the ``finally``: whatever ends the block (its return, its error,
Ctrl-C), every machine the session launched is terminated, each placement's attempts
included, found in the store. A failed terminate is logged, not raised over the
block's own error: the row is TERMINATING and the reconciler finishes the job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from gpufsm.engine._recovery import Driver, Launchable, Recovering, Recovery
from gpufsm.engine._waiting import ProgressCallback
from gpufsm.machines import InstanceState

__all__ = ["session"]


@contextmanager
def session(driver: Driver, what: Launchable, *, template: Mapping[str, Any] | None,
            timeout: float, poll_interval: float, on_progress: ProgressCallback | None,
            recovery: Recovery | int | None) -> Iterator[Any]:
    """See ``Fleet.session``: yields the RUNNING record, or with ``recovery`` the
    ``Recovering`` run (its first machine launched; ``run(job)`` waits and runs).

    A plain session is a run allowed no replacement: its machine carries a run id too,
    so the ``finally`` finds it in the store even when Ctrl-C lands inside the launch
    call, after the row was committed and before the call returned.
    """
    plan = Recovery(0) if recovery is None else (
        recovery if isinstance(recovery, Recovery) else Recovery(recovery))
    run = Recovering(driver, what, plan, template=template, timeout=timeout,
                     poll_interval=poll_interval, on_progress=on_progress)
    try:
        record = run.launch()
        if recovery is None:
            yield driver.wait_for(record.id, InstanceState.RUNNING, timeout=timeout,
                                  poll_interval=poll_interval, on_progress=on_progress)
        else:
            yield run
    finally:
        run.end("session ended")
