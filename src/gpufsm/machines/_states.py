"""The nine lifecycle states, the events that move between them, and edge kinds."""

from __future__ import annotations

import enum

__all__ = ["EdgeKind", "Event", "InstanceState"]


class InstanceState(enum.StrEnum):
    """Where an instance is in its life, as far as gpufsm can prove.

    TERMINATING exists so that TERMINATED can mean *confirmed gone*: a row is never set
    TERMINATED on hope, because a wrong TERMINATED is an instance that bills unseen.
    """

    CREATING = "CREATING"  # row written; launch sent or about to be; provider id may be unknown
    CREATED = "CREATED"  # provider accepted and gave an id; not yet booting
    STARTING = "STARTING"  # booting, pulling the image, restarting
    RUNNING = "RUNNING"  # provider reports running (and the health gate, if any, passed)
    STOPPING = "STOPPING"  # stop requested or reported; still billing
    STOPPED = "STOPPED"  # stopped; storage may still bill
    TERMINATING = "TERMINATING"  # terminate requested; waiting for the provider to confirm
    FAILED = "FAILED"  # something went wrong; ``billable`` says if a resource may exist
    TERMINATED = "TERMINATED"  # the provider confirmed it is gone. Absorbing.


class Event(enum.StrEnum):
    """Commands are verbs a user or policy asks for; observations are what was seen."""

    # commands: each drives exactly one provider call
    LAUNCH = "launch"
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    TERMINATE = "terminate"
    # observations: what the provider reported
    OBSERVED_CREATED = "observed_created"
    LAUNCH_FAILED = "launch_failed"
    OBSERVED_STARTING = "observed_starting"
    OBSERVED_RUNNING = "observed_running"
    OBSERVED_STOPPING = "observed_stopping"
    OBSERVED_STOPPED = "observed_stopped"
    OBSERVED_FAILED = "observed_failed"
    OBSERVED_TERMINATING = "observed_terminating"
    OBSERVED_GONE = "observed_gone"
    # the clock
    TIMED_OUT = "timed_out"


class EdgeKind(enum.StrEnum):
    """Who causes an edge: it decides whether guards apply and whether a provider is called."""

    COMMAND = "command"  # guarded; one provider call; illegal → TransitionNotAllowed
    OBSERVATION = "observation"  # applied where an edge exists, else recorded as drift
    TIMEOUT = "timeout"  # the clock: a state lasted longer than its deadline
