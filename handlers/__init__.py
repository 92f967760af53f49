"""handlers: the handler SDK — declare a handler, get a document and a context, decide by raising.

Write ``@handler(topic=..., subscription=...) async def fn(doc: Document, ctx: Context)``
returning a pydantic model or a dict; raise :class:`Retry` or :class:`DeadLetter` to steer the
worker (see :mod:`handlers.errors`). Checkpoint expensive work with ``await ctx.step(...)`` or
:func:`step` (:mod:`handlers.steps`); call the LLM through ``ctx.llm`` (:mod:`handlers.llm`).
Test with :func:`run_handler`; the worker finds handlers with :func:`discover_handlers`. This
package imports from ``docbus`` and never from ``subscriber``.
"""

from __future__ import annotations

from handlers.context import Context, HandlerLogger
from handlers.decorator import HandlerFunction, HandlerSpec, HandlerTimeout, handler, handler_spec
from handlers.discovery import HandlerDiscoveryError, RegisteredHandler, discover_handlers
from handlers.document import Document, resolve_document
from handlers.errors import (
    DeadLetter,
    HandlerOutcome,
    InvalidOutput,
    OverBudget,
    Retry,
    SystemicFailure,
)
from handlers.output import serialize_output
from handlers.steps import step
from handlers.testing import run_handler

__all__ = [
    "Context",
    "DeadLetter",
    "Document",
    "HandlerDiscoveryError",
    "HandlerFunction",
    "HandlerLogger",
    "HandlerOutcome",
    "HandlerSpec",
    "HandlerTimeout",
    "InvalidOutput",
    "OverBudget",
    "RegisteredHandler",
    "Retry",
    "SystemicFailure",
    "discover_handlers",
    "handler",
    "handler_spec",
    "resolve_document",
    "run_handler",
    "serialize_output",
    "step",
]
