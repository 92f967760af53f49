"""Errors: the one vocabulary a handler uses to say what should happen to its message.

A handler decides by returning or raising; the worker maps each outcome onto exactly one
Service Bus settlement::

    return value            -> success: the result is written to Mongo, then the message completed
    raise Retry(after=30)   -> try again later: after ``after`` seconds, or the worker's backoff
    raise DeadLetter(r, d)  -> poison: dead-letter now with reason r, description d; no more tries
    raise SystemicFailure   -> nothing is wrong with this message but the LLM endpoint is (bad key,
                               no quota, unknown model, unreachable): set it aside without spending
                               an attempt, pause consumption, probe before resuming
    raise OverBudget        -> the batch (or document) spent its budget: set the message aside,
                               not dead-lettered; it runs again once the budget is raised
    raise AwaitingBatch     -> (raised by ctx.llm in batch mode, not by handlers) its LLM calls
                               wait for a provider batch: set aside without spending an
                               attempt, resumed once every one of them is answered
    raise anything else     -> transient: retried with exponential backoff and jitter until the
                               subscription's MaxDeliveryCount, then dead-lettered with the error

Use ``DeadLetter`` for input that can never succeed (wrong document type, schema failure after
re-asks, a permanent 4xx); use ``Retry`` when you know when to come back (a rate limit's
Retry-After). The LLM client (:mod:`handlers.llm`) raises all four itself, translating the
``openai`` SDK's exceptions in one place. :class:`InvalidOutput` is the dead letter the SDK
raises itself when a handler returns something that cannot be stored. Neighbours:
:mod:`handlers.decorator` declares handlers, :mod:`handlers.context` is what they receive
besides the document.
"""

from __future__ import annotations

__all__ = [
    "AwaitingBatch",
    "DeadLetter",
    "HandlerOutcome",
    "InvalidOutput",
    "OverBudget",
    "Retry",
    "SystemicFailure",
]


class HandlerOutcome(Exception):
    """Base of the exceptions that tell the worker what to do with a message.

    ``step`` names the checkpointed step it was raised in (set by :mod:`handlers.steps`), so
    dead letters can say where a document failed.
    """

    step: str | None = None


class Retry(HandlerOutcome):
    """Process this message again later: after ``after`` seconds, or with the worker's backoff.

    Retries still count towards the subscription's delivery limit.
    """

    def __init__(self, after: float | None = None, reason: str = "Retry") -> None:
        if after is not None and after < 0:
            raise ValueError("Retry(after=...) must be zero or positive seconds")
        super().__init__(reason if after is None else f"{reason} (after {after:g} s)")
        self.after = after
        self.reason = reason


class DeadLetter(HandlerOutcome):
    """Dead-letter this message now: it can never succeed. ``reason`` is short and stable
    (operators filter and replay by it); ``description`` says what a person can do about it."""

    def __init__(self, reason: str, description: str = "") -> None:
        if not reason:
            raise ValueError("DeadLetter needs a reason")
        super().__init__(f"{reason}: {description}" if description else reason)
        self.reason = reason
        self.description = description


class InvalidOutput(DeadLetter):
    """A handler returned something that is not a pydantic model or a JSON-able dict."""

    def __init__(self, description: str) -> None:
        super().__init__("InvalidHandlerOutput", description)


class SystemicFailure(HandlerOutcome):
    """The LLM endpoint cannot serve anyone right now; this message is not at fault.

    ``reason`` is one of ``AuthenticationFailed``, ``PermissionDenied``, ``QuotaExhausted``,
    ``ModelNotFound``, ``EndpointNotFound`` or ``EndpointUnreachable``. The worker should give the
    message back without counting an attempt, pause consumption (circuit breaker), log one clear
    error and call :meth:`handlers.llm.LLMClient.probe` until it stops raising this.
    """

    def __init__(self, reason: str, description: str = "") -> None:
        if not reason:
            raise ValueError("SystemicFailure needs a reason")
        super().__init__(f"{reason}: {description}" if description else reason)
        self.reason = reason
        self.description = description


class OverBudget(HandlerOutcome):
    """A batch (``scope="batch"``) or one document (``scope="document"``) spent its LLM budget.

    Raised before an LLM call, so nothing more is spent. The worker should set the message aside
    (defer or reschedule it) without dead-lettering it; raising the budget
    (:meth:`docbus.store.Store.set_batch_budget`) lets it run again.
    """

    def __init__(
        self,
        batch_id: str,
        spent: float,
        budget: float,
        *,
        doc_id: str | None = None,
    ) -> None:
        scope = "batch" if doc_id is None else "document"
        what = f"batch {batch_id}" if doc_id is None else f"document {doc_id} of batch {batch_id}"
        super().__init__(f"{what} spent ${spent:.4f} of its ${budget:.4f} LLM budget")
        self.batch_id = batch_id
        self.doc_id = doc_id
        self.spent = spent
        self.budget = budget
        self.scope = scope


class AwaitingBatch(HandlerOutcome):
    """The delivery's LLM calls wait for the provider's Batch API (batch mode).

    Raised by ``ctx.llm`` once every running step of the delivery waits for a request
    registered for the next provider batch (``keys``: the requests' keys). The worker parks the
    message without spending a delivery attempt; once every key is answered (or failed) it is
    resumed, finished steps come from their checkpoints and answered calls return their stored
    answers. A handler should let it pass (do not catch it with ``except Exception``).
    """

    def __init__(self, keys: list[str] | tuple[str, ...]) -> None:
        self.keys = tuple(dict.fromkeys(keys))
        super().__init__(
            f"waiting for {len(self.keys)} LLM request(s) in a provider batch"
            + (f": {', '.join(k[:12] for k in self.keys[:5])}" if self.keys else "")
        )
