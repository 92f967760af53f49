"""Settlement: what to do with a message once its handler has finished or failed.

:func:`decide` is the one place that maps a handler's outcome onto a Service Bus operation, as
a plain function of the exception, the attempt number and the delivery limit, with no I/O::

    success                          -> COMPLETE   (after the result is durably written)
    DeadLetter / invalid envelope    -> DEAD_LETTER now, with the reason given
    SystemicFailure (bad key, quota) -> PARK       (defer; resumed when the circuit closes)
    OverBudget                       -> PARK       (defer; resumed when the budget allows)
    Retry / anything else            -> RETRY      (hold the lock for the backoff, then abandon)
                                        or DEAD_LETTER "RetriesExhausted" on the last delivery

Why hold-then-abandon: Service Bus redelivers an abandoned message at once, so abandoning on
failure would burn the whole delivery count in a hot loop. Holding the (renewed) lock for the
backoff delay and only then abandoning spaces the attempts out, keeps the broker's delivery
count as the durable attempt counter (a crashed worker's message comes back with its count
intact), and never sends copies that duplicate detection or other subscriptions would see. On
the subscription's last allowed delivery the worker dead-letters itself, so the dead letter
carries the real error instead of a bare ``MaxDeliveryCountExceeded``. Neighbours:
:mod:`docbus.backoff` (delays), :mod:`subscriber.processing` (carries decisions out).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from docbus.backoff import BackoffPolicy, backoff_delay
from docbus.envelope import InvalidEnvelope
from docbus.store import PayloadError
from docbus.text import one_line
from handlers.errors import DeadLetter, OverBudget, Retry, SystemicFailure

MAX_REASON = 120
MAX_DESCRIPTION = 1000


class Action(enum.Enum):
    COMPLETE = "completed"
    RETRY = "retrying"
    DEAD_LETTER = "dead-lettered"
    PARK = "parked"


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float = 0.0
    reason: str = ""
    description: str = ""


COMPLETE = Decision(Action.COMPLETE)


def describe(exc: BaseException) -> str:
    """``Type: message`` for an exception, on one line, trimmed."""
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return one_line(text, MAX_DESCRIPTION)


def decide(
    exc: BaseException,
    *,
    attempt: int,
    max_attempts: int,
    policy: BackoffPolicy,
    rng: random.Random | None = None,
) -> Decision:
    """The settlement for a failed attempt; ``attempt`` counts deliveries from 1."""
    if isinstance(exc, DeadLetter):
        return Decision(
            Action.DEAD_LETTER,
            reason=one_line(exc.reason, MAX_REASON),
            description=one_line(exc.description or str(exc), MAX_DESCRIPTION),
        )
    if isinstance(exc, InvalidEnvelope):
        return Decision(Action.DEAD_LETTER, reason="InvalidEnvelope", description=describe(exc))
    if isinstance(exc, PayloadError):
        return Decision(Action.DEAD_LETTER, reason="ClaimCheckFailed", description=describe(exc))
    if isinstance(exc, OverBudget) and exc.scope == "document":
        # Only a restart with a larger per-document budget could help: say so, do not wait.
        return Decision(Action.DEAD_LETTER, reason="DocumentOverBudget", description=describe(exc))
    parked = _parking_reason(exc)
    if parked is not None:
        return Decision(Action.PARK, reason=parked, description=describe(exc))
    if attempt >= max_attempts:
        return Decision(
            Action.DEAD_LETTER,
            reason="RetriesExhausted",
            description=one_line(
                f"failed on all {max_attempts} deliveries; last error: {describe(exc)}",
                MAX_DESCRIPTION,
            ),
        )
    retry_after = exc.after if isinstance(exc, Retry) else None
    delay = backoff_delay(attempt, policy, retry_after=retry_after, rng=rng)
    return Decision(Action.RETRY, delay=delay, description=describe(exc))


def _parking_reason(exc: BaseException) -> str | None:
    if isinstance(exc, SystemicFailure | OverBudget):
        return type(exc).__name__
    return None
