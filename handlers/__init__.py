"""handlers: the handler SDK — declare a handler, get a document and a context, decide by raising.

Write ``@handler(topic=..., subscription=...) async def fn(doc: Document, ctx: Context)``
returning a pydantic model or a dict; raise :class:`Retry` or :class:`DeadLetter` to steer the
worker (:class:`SystemicFailure` stops it, :class:`OverBudget` comes from the LLM client; see
:mod:`handlers.errors`). Checkpoint expensive work with ``await ctx.step(...)`` or :func:`step`
(:mod:`handlers.steps`); call the LLM through ``ctx.llm`` (an :class:`LLM`; the client is in
:mod:`handlers.llm`). Test with :func:`run_handler`. The worker's side — discovery, the
delivery state behind a context, output checks — is :mod:`handlers.runtime`. This package
imports from ``docbus`` and never from ``subscriber``; importing it does not import ``openai``.
"""

from __future__ import annotations

from handlers.context import LLM, Context
from handlers.decorator import handler
from handlers.document import Document
from handlers.errors import DeadLetter, OverBudget, Retry, SystemicFailure
from handlers.steps import step
from handlers.testing import run_handler

__all__ = [
    "LLM",
    "Context",
    "DeadLetter",
    "Document",
    "OverBudget",
    "Retry",
    "SystemicFailure",
    "handler",
    "run_handler",
    "step",
]
