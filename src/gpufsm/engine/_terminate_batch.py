"""Many terminates at once, as a reconcile pass issues them: every intent committed in
one transaction, then the provider called for each, then every answer looked at.

``terminate`` (one row) commits its intent, calls, and looks; a pass with 500 rows to end
that way makes 500 commits before its last call. Here the TERMINATING rows and their
history rows go in together first, so the database is ahead of the provider for all of
them at once (a crash after that commit leaves TERMINATING rows the next pass re-issues),
and the confirming reads are committed as one batch of observations.

Where the adapter can (``BatchTerminate``: Lambda), the committed rows of one provider go
out in one request per ``terminate_batch_max`` ids, and what the provider answered for
each id is the look: applied through the same batch of observations a GET would be,
never read as "gone" by its absence. An id the answer leaves out, and every id of a call
that raised (a temporary error, or a refusal of the whole request such as Lambda's
not-found for one unknown id), is sent and looked at one by one, exactly as without the
capability, so one bad id never holds back the others and every row's history and
``last_error`` are what the one-by-one path leaves.

Except when a single call of that fallback is refused for the account rather than for
its instance (``AuthError``: a revoked key, an inactive account; ``InsufficientCredit``;
``QuotaExceeded``): every other call of the pass to that provider would be refused the
same way, so none is sent, neither the rest of the chunk nor the provider's later chunks
(a 250-row pass with a revoked key makes 2 requests, not 250). Each row left unsent gets
the same error, marked "not sent", through the single path's own error note, and stays
TERMINATING for the next pass to re-issue; nothing is ever concluded gone from it. A
not-found, an error about the instance (``InvalidRequest``) and a temporary error stop
nothing: they are about one id, or have their own retry rules.

Only the plain case is batched: a row with a provider id, not yet TERMINATED, whose lock
is free and whose version has not moved. Everything else is left out of the answer, and
the caller sends it through ``terminate``, which handles it one by one as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from gpufsm.adapters import BatchTerminate, Observation, ProviderInstance
from gpufsm.engine._batch import observe_batch, write_batch
from gpufsm.engine._commands import call_terminate, look
from gpufsm.engine._context import Engine
from gpufsm.engine._decide import row_after
from gpufsm.engine._locks import Held
from gpufsm.engine._observe import observe_one
from gpufsm.errors import (
    AuthError,
    GpufsmError,
    InsufficientCredit,
    PermanentProviderError,
    ProviderError,
    QuotaExceeded,
)
from gpufsm.machines import Event, InstanceState
from gpufsm.notify import TransitionEvent
from gpufsm.store import InstanceRecord, Move, RowWrite

__all__ = ["Ended", "terminate_batch"]

log = logging.getLogger("gpufsm.fleet")

S = InstanceState

#: Refusals about the account or its key, never about the one instance asked for: once
#: a call meets one, the provider's other calls of the pass would too.
_ACCOUNT_WIDE: tuple[type[PermanentProviderError], ...] = (
    AuthError, InsufficientCredit, QuotaExceeded)


@dataclass(frozen=True, slots=True)
class Ended:
    """One batched terminate: the row after it, the moves committed for it (the
    terminate, then what the look applied; when the look went through the single path
    its moves are not listed, and ``after.version`` says so), and the provider's error
    if the call failed, or was not sent after an account-wide refusal (the row then
    stays TERMINATING, for the next pass)."""

    after: InstanceRecord
    moves: tuple[Move, ...]
    error: ProviderError | None = None


def terminate_batch(engine: Engine, requests: Sequence[tuple[str, str | None]]
                    ) -> dict[str, Ended]:
    """Terminate each (instance id, reason); the ids batched, each with its outcome."""
    records = engine.store.get_many(i for i, _ in requests)
    now = engine.clock.now()  # one instant for the intents, their history and listeners
    held: list[Held] = []
    try:
        built = _intents(engine, requests, records, held, now)
        committed = _commit(engine, built, now)
        called = _send(engine, committed)
    finally:
        for lock in held:
            lock.release()
    return _looked_at(engine, called)


def _intents(engine: Engine, requests: Sequence[tuple[str, str | None]],
             records: Mapping[str, InstanceRecord], held: list[Held], now: datetime
             ) -> list[tuple[InstanceRecord, Move, TransitionEvent]]:
    """The terminate moves of the plain rows, checked by the machine and the guards, with
    each row's lock taken (``held`` collects them for the caller to release)."""
    built = []
    for instance_id, reason in requests:
        record = records.get(instance_id)
        if record is None or record.state is S.TERMINATED or record.provider_instance_id \
                is None:
            continue
        lock = engine._lock(instance_id)
        if not lock.try_acquire():
            continue  # a command under way: the single path waits its turn
        held.append(lock)
        try:
            move, heard = engine._move(record, Event.TERMINATE, at=now, reason=reason,
                                       adapter=engine._adapter(record.provider))
        except GpufsmError:
            continue  # refused: the single path raises it to the caller
        built.append((record, move, heard))
    return built


def _commit(engine: Engine, built: list[tuple[InstanceRecord, Move, TransitionEvent]],
            now: datetime) -> list[tuple[InstanceRecord, Move]]:
    """Every intent in one ``apply_batch``; the rows it moved to TERMINATING."""
    if not built:
        return []
    outcome = write_batch(engine, [RowWrite.of(m) for _, m, _ in built],
                          actor=engine.actor, at=now, what="terminates")
    if outcome is None:
        return []
    committed = []
    for record, move, heard in built:
        if move.instance_id in outcome.applied:
            engine._notify(heard)
            after = row_after(record, move, now)
            assert isinstance(after, InstanceRecord)
            committed.append((after, move))
    return committed


#: One committed terminate after its call: the row, its move, the call's error, and what
#: the provider's answer showed of it (None: to be looked at with a GET).
_Called = tuple[InstanceRecord, Move, ProviderError | None, Observation | None]


def _send(engine: Engine, committed: list[tuple[InstanceRecord, Move]]) -> list[_Called]:
    """Every committed terminate sent: in batches where the adapter can, else one by one."""
    called: list[_Called] = []
    for provider, rows in _by_provider(committed).items():
        adapter = engine._adapter(provider)
        if not isinstance(adapter, BatchTerminate):
            called.extend((r, m, _call(engine, r), None) for r, m in rows)
        else:
            called.extend(_send_batched(engine, adapter, provider, rows))
    return called


def _send_batched(engine: Engine, adapter: BatchTerminate, provider: str,
                  rows: list[tuple[InstanceRecord, Move]]) -> list[_Called]:
    """One provider's rows in chunks; a row the answer leaves out, or of a chunk whose
    call raised, sent alone, until a single call is refused for the whole account: from
    then on nothing more is sent to this provider in this pass (see the module doc)."""
    called: list[_Called] = []
    refused: tuple[PermanentProviderError, str] | None = None  # the error, and its id
    for chunk in _chunks(rows, max(1, adapter.terminate_batch_max)):
        answered: Mapping[str, ProviderInstance] = (
            {} if refused is not None else _terminate_many(adapter, provider, chunk))
        for record, move in chunk:
            pid = record.provider_instance_id
            assert pid is not None
            seen = answered.get(pid)
            if seen is not None:
                called.append((record, move, None, Observation.present(seen)))
            elif refused is not None:
                called.append((record, move, _not_sent(engine, record, *refused), None))
            else:  # not in the answer, or the call raised: one by one
                error = _call(engine, record)
                if isinstance(error, _ACCOUNT_WIDE):
                    refused = (error, pid)
                    log.warning("terminating on %s stopped for this pass: %s refused %s "
                                "for the whole account (%s)", provider,
                                type(error).__name__, pid, error)
                called.append((record, move, error, None))
    return called


def _terminate_many(adapter: BatchTerminate, provider: str,
                    chunk: Sequence[tuple[InstanceRecord, Move]]
                    ) -> Mapping[str, ProviderInstance]:
    """One batch call; what it answered per provider id, or nothing when it raised (each
    row is then sent alone, which records its own error as the single path does)."""
    pids = [r.provider_instance_id for r, _ in chunk if r.provider_instance_id is not None]
    try:
        return adapter.terminate_many(pids)
    except ProviderError as exc:
        log.info("terminating %d %s instances in one request failed (%s): one by one",
                 len(pids), provider, exc)
        return {}


def _by_provider(committed: list[tuple[InstanceRecord, Move]]
                 ) -> dict[str, list[tuple[InstanceRecord, Move]]]:
    grouped: dict[str, list[tuple[InstanceRecord, Move]]] = {}
    for record, move in committed:
        grouped.setdefault(record.provider, []).append((record, move))
    return grouped


def _chunks(rows: list[tuple[InstanceRecord, Move]], size: int
            ) -> Iterator[list[tuple[InstanceRecord, Move]]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _call(engine: Engine, record: InstanceRecord) -> ProviderError | None:
    """The provider call of one committed intent; its error, recorded on the row."""
    try:
        call_terminate(engine, record, engine._adapter(record.provider))
    except ProviderError as exc:
        return exc
    return None


def _not_sent(engine: Engine, record: InstanceRecord, error: PermanentProviderError,
              refused_pid: str) -> ProviderError:
    """The account-wide ``error`` as this unsent row's own: the same class (a caller
    reacts to ``InsufficientCredit`` by class), code and request, noted on the row as
    the single path notes a failed call, so its ``last_error`` names the error."""
    mine = type(error)(f"{error.message} (not sent: the same account-wide error "
                       f"refused {refused_pid})", provider=error.provider, code=error.code,
                       status_code=error.status_code, request_id=error.request_id)
    engine._note_error(record, mine)
    return mine


def _looked_at(engine: Engine, called: list[_Called]) -> dict[str, Ended]:
    """What the batch answer showed of each instance, else a direct GET of it, committed
    as one batch of observations (a failed GET changes nothing, as ``confirm`` does)."""
    looks = {record.id: look(engine._adapter(record.provider), record) if answer is None
             else answer for record, _, error, answer in called if error is None}
    items = [(record, looks[record.id]) for record, _, error, _ in called if error is None]
    seen = {record.id: outcome for (record, _), outcome
            in zip(items, observe_batch(engine, items, engine.actor), strict=True)}
    ended: dict[str, Ended] = {}
    for record, move, error, _ in called:
        if error is not None:
            ended[record.id] = Ended(engine.store.get(record.id), (move,), error)
        elif (outcome := seen[record.id]) is not None:
            ended[record.id] = Ended(outcome.after, (move, *outcome.moves))
        else:  # the batch could not write it: observed afresh on the single path
            after = observe_one(engine, record.id, looks[record.id], engine.actor)
            ended[record.id] = Ended(after, (move,))
    return ended
