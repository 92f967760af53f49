"""Errors: the one vocabulary a handler uses to say what should happen to its message.

A handler decides by returning or raising; the worker maps each outcome onto exactly one
Service Bus settlement::

    return value            -> success: the result is written to Mongo, then the message completed
    raise Retry(after=30)   -> try again later: after ``after`` seconds, or the worker's backoff
    raise DeadLetter(r, d)  -> poison: dead-letter now with reason r, description d; no more tries
    raise anything else     -> transient: retried with exponential backoff and jitter until the
                               subscription's MaxDeliveryCount, then dead-lettered with the error

Use ``DeadLetter`` for input that can never succeed (wrong document type, schema failure after
re-asks, a permanent 4xx); use ``Retry`` when you know when to come back (a rate limit's
Retry-After). :class:`InvalidOutput` is the dead letter the SDK raises itself when a handler returns
something that cannot be stored. Neighbours: :mod:`handlers.decorator` declares handlers,
:mod:`handlers.context` is what they receive besides the document.
"""

from __future__ import annotations

__all__ = ["DeadLetter", "HandlerOutcome", "InvalidOutput", "Retry"]


class HandlerOutcome(Exception):
    """Base of the exceptions that tell the worker what to do with a message."""


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
