"""The handler decorator: declare which topic and subscription a function serves.

``@handler(topic=..., subscription=...)`` attaches a frozen :class:`HandlerSpec` to the function
and returns the function itself, unchanged, so a handler stays a plain ``async def`` that a unit
test can call (or run with :func:`handlers.testing.run_handler`). Nothing is registered globally:
the worker is handed functions or a module, and :mod:`handlers.discovery` reads the specs.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["HandlerFunction", "HandlerSpec", "handler", "handler_spec"]

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

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"handler name {self.name!r}: use up to 100 letters, digits, '_', '.' or '-'"
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
) -> Callable[[F], F]:
    """Declare an ``async def fn(doc, ctx)`` as the handler of ``subscription`` on ``topic``."""

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
        )
        setattr(original, SPEC_ATTRIBUTE, spec)
        return original

    return decorate


def handler_spec(fn: object) -> HandlerSpec | None:
    """The spec ``@handler`` attached to ``fn``, or None for any other object."""
    spec = getattr(fn, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, HandlerSpec) else None
