"""Settlement: what to do with a message once its handler has finished or failed.

:func:`decide` is the one place that maps a handler's outcome onto a Service Bus operation, as
a plain function of the exception, the attempt number and the delivery limit, with no I/O::

    success                          -> COMPLETE   (after the result is durably written)
    DeadLetter / invalid envelope    -> DEAD_LETTER now, with the reason given
    SystemicFailure (bad key, quota) -> PARK       (defer; resumed when the circuit closes)
    OverBudget                       -> PARK       (defer; resumed when the budget allows)
    AwaitingBatch (batch-mode LLM)   -> PARK       (defer; resumed when its requests are answered)
    Retry / anything else            -> RETRY      (hold the lock for the backoff, then abandon)
                                        or DEAD_LETTER "RetriesExhausted" on the last delivery

and, from what else is known about the message: a PARK of an ordered handler's message becomes
a RETRY after the backoff cap, a DEAD_LETTER of a message whose result another delivery stored
becomes COMPLETE, and one whose ``dead_letters`` record Mongo refused becomes a RETRY. The
processor gathers those facts and carries the decision out; it never overrules it.

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
from handlers.errors import AwaitingBatch, DeadLetter, OverBudget, Retry, SystemicFailure

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
    llm_requests: tuple[str, ...] = ()
    """PARK for ``AwaitingBatch``: the keys of the LLM requests the message waits for."""


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
    ordered: bool = False,
    result_stored: bool = False,
    unrecordable: BaseException | None = None,
) -> Decision:
    """The settlement for a failed attempt; ``attempt`` counts deliveries from 1.

    The facts about the message beyond its error, each of which can change the verdict:

    ``ordered``
        its handler keeps a session's order: a parking becomes a RETRY after the backoff
        cap (a deferred session message would break the order; the held lock is renewed and
        the message given back in order);
    ``result_stored``
        another delivery of it stored a result already (a lost lock, a parallel delivery):
        a dead letter becomes COMPLETE, a document is never both done and dead;
    ``unrecordable``
        the error that refused its ``dead_letters`` record: a dead letter becomes a RETRY
        after the backoff base, since nothing is dead-lettered that Mongo does not record.
    """
    verdict = _verdict(exc, attempt=attempt, max_attempts=max_attempts, policy=policy, rng=rng)
    if verdict.action is Action.DEAD_LETTER:
        if result_stored:
            return COMPLETE
        if unrecordable is not None:
            return Decision(
                Action.RETRY,
                delay=policy.base,
                description=one_line(
                    f"its dead letter could not be recorded ({describe(unrecordable)}); "
                    f"it was: {verdict.reason}: {verdict.description}",
                    MAX_DESCRIPTION,
                ),
            )
    if verdict.action is Action.PARK and ordered:
        return Decision(
            Action.RETRY,
            delay=policy.cap,
            reason=verdict.reason,
            description=verdict.description,
        )
    return verdict


def _verdict(
    exc: BaseException,
    *,
    attempt: int,
    max_attempts: int,
    policy: BackoffPolicy,
    rng: random.Random | None,
) -> Decision:
    """What the error alone says."""
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
    if isinstance(exc, AwaitingBatch):
        return Decision(
            Action.PARK, reason="AwaitingBatch", description=describe(exc), llm_requests=exc.keys
        )
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
