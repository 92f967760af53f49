"""Parking: messages set aside without spending delivery attempts, and their resumption.

When a failure is not the message's fault — the LLM endpoint refuses our key, the quota is
gone (circuit breaker), or the batch has spent its budget — or the message waits for its
batch-mode LLM requests (``AwaitingBatch``, resumed once the submitter has every answer:
:meth:`~docbus.store.Store.request_resume_for_llm_requests`) — the worker defers the message
(Service Bus keeps it, never redelivers it on its own) and writes a ``parked`` record in Mongo
with the sequence number needed to fetch it back (:class:`~docbus.store.ParkedMessage`, kept by
the store). Once the condition clears — or an operator asks, ``docbus parked resume`` — any
worker resumes the parked messages of its subscriptions with ``receive_deferred_messages`` and
runs them as ordinary deliveries: at its start, as soon as its receiver is open, then every
``resume_interval``; :func:`may_resume` is that decision. The Mongo record is written before
the deferral, so a crash in between leaves at worst a record for a message that is still
active (harmless: resuming it finds nothing and drops the record). Neighbours:
:mod:`subscriber.processing` parks, :mod:`subscriber.worker` resumes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from docbus.store import ParkedMessage, Store

__all__ = [
    "ParkedMessage",
    "count_parked",
    "fetchable_parked",
    "mark_deferred",
    "mark_resumed",
    "may_resume",
    "park",
    "parked_messages",
    "unpark",
]

SYSTEMIC = "SystemicFailure"
OVER_BUDGET = "OverBudget"
AWAITING_BATCH = "AwaitingBatch"


async def park(store: Store, parked: ParkedMessage) -> None:
    await store.park(parked)
    if parked.llm_requests:
        # Its requests may have been answered while it was parking, after the submitter
        # looked for parked deliveries to resume: look once more, now that the record is in.
        await store.resume_parked_if_answered(parked)


async def mark_deferred(store: Store, parked: ParkedMessage) -> None:
    await store.mark_parked_deferred(parked)


async def parked_messages(
    store: Store,
    topic: str,
    subscription: str,
    *,
    reason: str | None = None,
    waiting: bool = True,
    confirmed: bool = True,
    after: int | None = None,
    limit: int = 100,
) -> list[ParkedMessage]:
    """Parked messages that can be fetched back: not in a worker's hands, and deferred or
    unconfirmed for a while (``confirmed`` False: whatever their deferral; ``waiting`` False:
    not those still awaiting their batch-mode answers), by sequence number, ``limit`` of them
    (0: all) from above ``after``."""
    return await store.parked(
        topic=topic,
        subscription=subscription,
        reason=reason,
        fetchable=True,
        confirmed=confirmed,
        waiting=waiting,
        after=after,
        limit=limit,
    )


async def fetchable_parked(store: Store, ids: Collection[str]) -> list[ParkedMessage]:
    """Of the records ``ids``, those a resumer may fetch back now (read just before it does:
    another worker may have taken some since they were listed), by sequence number."""
    return await store.fetchable_parked(ids)


async def unpark(store: Store, parked: ParkedMessage) -> None:
    await store.unpark(parked)


async def mark_resumed(store: Store, parked: Sequence[ParkedMessage]) -> None:
    await store.mark_parked_resumed(parked)


async def count_parked(store: Store, *, batch_id: str | None = None) -> int:
    return await store.count_parked(batch_id=batch_id)


def may_resume(
    parked: ParkedMessage, *, llm_works: bool | None, over_budget: bool | None = None
) -> bool:
    """Whether a worker should fetch ``parked`` back now (no I/O; the caller asks around):

        resume requested by an operator  -> yes
        SystemicFailure                  -> once the LLM endpoint works (``llm_works``)
        OverBudget                       -> once its batch is no longer over budget
        AwaitingBatch                    -> only when marked (its LLM requests are answered)
        anything else (given back, ...)  -> yes: nothing to wait for

    ``llm_works`` None: not known (not asked yet); ``over_budget`` None: no batch record.
    """
    if parked.resume_requested_at is not None:
        return True
    if parked.reason == SYSTEMIC:
        return bool(llm_works)
    if parked.reason == OVER_BUDGET:
        return not over_budget
    # AwaitingBatch: the submitter marks it (resume_requested_at) once all are answered
    return parked.reason != AWAITING_BATCH
