"""Delivery state: the runtime's bookkeeping for one delivery, kept off the handler's context.

A :class:`~handlers.context.Context` is what a handler author sees; behind it, the runtime keeps
a :class:`Delivery`: the delivery's pending audit-row and checkpoint writes
(:class:`~handlers.writes.PendingWrites`), the step checkpoints read for it and the steps run in
it (:mod:`handlers.steps`). :func:`open_context` builds a context the way a worker does
(writes behind the handler, a checkpoint read already started); :func:`delivery_of` gives the
runtime the state back. Neighbours: :mod:`handlers.runtime` (what the worker imports).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from docbus.envelope import Envelope
from docbus.store import Store
from handlers.decorator import HandlerSpec
from handlers.writes import PendingWrites

if TYPE_CHECKING:
    from handlers.context import LLM, Context

__all__ = ["Delivery", "delivery_of", "open_context"]


@dataclass
class Delivery:
    """What the runtime keeps for one delivery of one message to one handler."""

    writes: PendingWrites = field(default_factory=PendingWrites)
    """This delivery's audit-row and checkpoint writes (:mod:`handlers.writes`). Written
    behind the handler, whoever runs it must ``await writes.flush()`` before storing its
    result (the worker does); otherwise every such write is acknowledged before the call that
    makes it returns."""
    checkpoint_cache: dict[str, Any] | None = None
    """Step outputs stored for this document and handler version, read once per delivery
    (``None`` until a step needed them: the handler used no step so far)."""
    checkpoints_read: Awaitable[dict[str, Any]] | None = None
    """That read, if whoever runs the handler started it already (the worker does, as a
    message arrives, for handlers that use steps): the first step awaits it instead."""
    step_runs: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    """Steps run in this delivery, by checkpoint key: a repeat returns the first one's output."""


def delivery_of(ctx: Context) -> Delivery:
    """The runtime's state behind ``ctx``."""
    return ctx._delivery


def open_context(
    envelope: Envelope,
    spec: HandlerSpec,
    *,
    delivery_count: int = 1,
    store: Store | None = None,
    llm: LLM | None = None,
    write_behind: bool = False,
    checkpoints_read: Awaitable[dict[str, Any]] | None = None,
) -> Context:
    """A context for one delivery; ``write_behind`` lets the handler go on while its audit rows
    and checkpoints are acknowledged (then flush :attr:`Delivery.writes` before storing its
    result), ``checkpoints_read`` is a checkpoint read already started for it."""
    from handlers.context import Context  # a runtime import: context imports this module

    ctx = Context(envelope, spec, delivery_count=delivery_count, store=store, llm=llm)
    ctx._delivery = Delivery(
        writes=PendingWrites(behind=write_behind), checkpoints_read=checkpoints_read
    )
    return ctx
