"""Claims: one handler per subscription.

A subscription hands each message to one receiver. Two handlers on the same subscription would
split a batch between them: each stores results under its own name for the part it happens to
receive, and the other's share of the batch stays pending for ever — no result, no dead letter,
nothing left on the broker to finish it. Handlers of one process are checked as they are found
(:func:`handlers.discovery.check_clashes`, again by the worker); across processes a worker
refuses to start a handler on a subscription a live worker elsewhere runs under another
handler's name (:func:`rival_worker`, from the heartbeats every worker writes:
:mod:`subscriber.heartbeat`). Running the same handler in many
processes is what scaling out is, and stays allowed. No I/O here: the worker and the CLI ask.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from docbus.store import SubscriptionClaim, WorkerHeartbeat
from handlers.runtime import RegisteredHandler

__all__ = ["claims_of", "rival_worker"]

_FIX = "give each handler its own subscription (infra/topology.toml, `docbus topology`)"


def claims_of(handlers: Iterable[RegisteredHandler]) -> list[SubscriptionClaim]:
    """Which handler runs on which subscription."""
    return [
        SubscriptionClaim(topic=h.spec.topic, subscription=h.spec.subscription, handler=h.name)
        for h in handlers
    ]


def rival_worker(
    beats: Iterable[WorkerHeartbeat],
    handlers: Sequence[RegisteredHandler],
    *,
    now: datetime | None = None,
) -> str | None:
    """Why ``handlers`` must not start beside the live workers that wrote ``beats`` (one of
    them runs another handler on a subscription of ours), or None."""
    mine = {(c.topic, c.subscription): c.handler for c in claims_of(handlers)}
    for beat in beats:
        if beat.status(now) != "running":
            continue  # stopped, or silent long enough to be presumed dead
        for claim in beat.claims:
            ours = mine.get((claim.topic, claim.subscription))
            if ours is not None and ours != claim.handler:
                return (
                    f"subscription {claim.topic}/{claim.subscription} is already run by handler "
                    f"{claim.handler!r} in the worker {beat.host}:{beat.pid}; handler {ours!r} "
                    f"beside it would split batches between the two and leave each one's share "
                    f"pending for ever: stop that worker, or {_FIX}"
                )
    return None
