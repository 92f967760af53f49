"""The handler decorator: declare which topic and subscription a function serves.

``@handler(topic=..., subscription=...)`` attaches a frozen :class:`HandlerSpec` to the function
and returns the function itself, unchanged, so a handler stays a plain ``async def`` that a unit
test can call (or run with :func:`handlers.testing.run_handler`). Nothing is registered globally:
the worker is handed functions or a module, and :mod:`handlers.discovery` reads the specs.
A handler's ``timeout`` bounds one attempt: past it the worker cancels the handler and counts a
transient failure, :class:`HandlerTimeout` (retried with backoff up to the delivery limit).
``llm_mode="batch"`` sends its LLM calls through the provider's Batch API (not for ordered
handlers: they refuse it here).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = ["HandlerFunction", "HandlerSpec", "HandlerTimeout", "handler", "handler_spec"]

HandlerFunction = Callable[..., Awaitable[Any]]
"""``async def fn(doc: Document, ctx: Context) -> BaseModel | dict``."""

F = TypeVar("F", bound=HandlerFunction)

SPEC_ATTRIBUTE = "__docbus_handler__"

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """What the worker needs to know about a handler."""

    name: str
    """Names the handler's results, checkpoints and dead letters (default: the function name)."""
    topic: str
    subscription: str
    version: str = "1"
    """Bump it when the output changes meaning: results and checkpoints are kept per version."""
    ordered_by: str | None = None
    """Metadata field used as the session key: documents with the same value run in order, one
    at a time (the subscription must require sessions)."""
    timeout: float | None = None
    """Seconds one attempt of the handler may take; None: the worker's default
    (``DOCBUS_WORKER__HANDLER_TIMEOUT``). A handler that blocks the event loop cannot be
    interrupted: the timeout acts at its next ``await``."""
    llm_mode: Literal["live", "batch"] | None = None
    """How its ``ctx.llm`` calls go when the batch does not say (``publish --llm-mode``):
    ``live``, or ``batch`` through the provider's Batch API at half the price, one round per
    step. None: the settings' ``llm.mode``."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"handler name {self.name!r}: use up to 100 letters, digits, '_', '.' or '-'"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"handler {self.name!r}: timeout must be more than 0 seconds")
        if self.llm_mode not in (None, "live", "batch"):
            raise ValueError(f"handler {self.name!r}: llm_mode must be 'live' or 'batch'")
        if self.llm_mode == "batch" and self.ordered_by:
            raise ValueError(
                f"handler {self.name!r}: llm_mode='batch' cannot be used with ordered_by: an "
                "ordered handler cannot wait hours for a Batch-API round with its session "
                "held; drop ordered_by or use llm_mode='live'"
            )
        for field_name in ("topic", "subscription", "version"):
            if not getattr(self, field_name):
                raise ValueError(f"handler {self.name!r}: {field_name} must not be empty")


def handler(
    *,
    topic: str,
    subscription: str,
    version: str | int = "1",
    ordered_by: str | None = None,
    name: str | None = None,
    timeout: float | None = None,
    llm_mode: Literal["live", "batch"] | None = None,
) -> Callable[[F], F]:
    """Declare an ``async def fn(doc, ctx)`` as the handler of ``subscription`` on ``topic``;
    ``timeout`` bounds one attempt, in seconds (default: the worker's); ``llm_mode`` is how its
    LLM calls go unless its batch says (default: the settings' ``llm.mode``)."""

    def decorate(fn: F) -> F:
        original = fn  # iscoroutinefunction narrows fn's type; the decorator returns it as given
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@handler needs an async def function, got {fn!r}")
        spec = HandlerSpec(
            name=name or fn.__name__,
            topic=topic,
            subscription=subscription,
            version=str(version),
            ordered_by=ordered_by,
            timeout=timeout,
            llm_mode=llm_mode,
        )
        setattr(original, SPEC_ATTRIBUTE, spec)
        return original

    return decorate


class HandlerTimeout(Exception):
    """An attempt of a handler ran past its timeout and was cancelled: a transient failure,
    retried with backoff; on the last delivery the dead letter names the timeout."""

    def __init__(self, handler: str, seconds: float, step: str | None = None) -> None:
        where = f" (in step {step!r})" if step else ""
        super().__init__(
            f"handler {handler!r} ran longer than its {seconds:g}s timeout{where}; raise it "
            "with @handler(timeout=...) or DOCBUS_WORKER__HANDLER_TIMEOUT if it needs longer"
        )
        self.handler = handler
        self.seconds = seconds
        self.step = step


def handler_spec(fn: object) -> HandlerSpec | None:
    """The spec ``@handler`` attached to ``fn``, or None for any other object."""
    spec = getattr(fn, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, HandlerSpec) else None
