"""The context: everything a handler may use besides the document itself.

A :class:`Context` is built by the worker for one delivery of one message: the envelope, the
handler's spec, the delivery count, a logger that names the batch and document, the store (for
step checkpoints) and ``ctx.llm``, the LLM client bound to this delivery
(:meth:`handlers.llm.LLMClient.bind`; an unbound client given to the constructor is bound on
the spot). ``await ctx.step(name, fn, ...)`` runs a checkpointed step (:mod:`handlers.steps`).
Neighbours: :mod:`handlers.document` (the document), :mod:`handlers.errors` (what to raise).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from docbus.envelope import Envelope
from docbus.records import CheckpointKey, input_hash
from docbus.store import Store
from handlers.decorator import HandlerSpec
from handlers.steps import current_step, run_step
from handlers.writes import PendingWrites

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["Context", "HandlerLogger"]


class HandlerLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the handler, batch and document it is about."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        prefix = f"[{extra.get('handler')} {extra.get('batch_id')}/{extra.get('doc_id')}]"
        kwargs.setdefault("extra", {}).update(extra)
        return f"{prefix} {msg}", kwargs


@dataclass
class Context:
    """One delivery of one message to one handler."""

    envelope: Envelope
    handler: HandlerSpec
    delivery_count: int = 1
    """How many times Service Bus has delivered this message (1 on the first delivery)."""
    store: Store | None = None
    """The Mongo store, for step checkpoints (``None`` in tests that need none)."""
    llm: Any = None
    """The LLM client bound to this delivery (a :class:`handlers.llm.BoundLLM`), attached by
    the worker: ``await ctx.llm.extract(Model, prompt)``, ``await ctx.llm.complete(prompt)``."""
    checkpoint_cache: dict[str, Any] | None = field(default=None, init=False, repr=False)
    """Step outputs stored for this document and handler version, read once per delivery."""
    checkpoints_read: Awaitable[dict[str, Any]] | None = field(
        default=None, repr=False, kw_only=True
    )
    """That read, if whoever runs the handler started it already (the worker does, as a
    message arrives, for handlers that use steps): the first step awaits it instead."""
    write_behind: bool = False
    """Let the handler go on while its audit rows and checkpoints are acknowledged; whoever
    runs it must then ``await ctx.writes.flush()`` before storing its result (the worker
    does). Off: every such write is acknowledged before the call that makes it returns."""
    step_runs: dict[str, asyncio.Future[Any]] = field(default_factory=dict, init=False, repr=False)
    """Steps run in this delivery, by checkpoint key: a repeat returns the first one's output."""
    writes: PendingWrites = field(init=False, repr=False)
    """This delivery's audit-row and checkpoint writes (:mod:`handlers.writes`)."""
    logger: HandlerLogger = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.writes = PendingWrites(behind=self.write_behind)
        bind = getattr(self.llm, "bind", None)
        if callable(bind):  # an LLMClient given as is: bind it to this delivery
            self.llm = bind(self)
        base = logging.getLogger(f"handlers.{self.handler.name}")
        self.logger = HandlerLogger(
            base,
            {
                "handler": self.handler.name,
                "batch_id": self.envelope.batch_id,
                "doc_id": self.envelope.doc_id,
            },
        )

    @property
    def batch_id(self) -> str:
        return self.envelope.batch_id

    @property
    def doc_id(self) -> str:
        return self.envelope.doc_id

    @property
    def handler_name(self) -> str:
        return self.handler.name

    @property
    def handler_version(self) -> str:
        return self.handler.version

    @property
    def message_id(self) -> str:
        return self.envelope.message_id

    @property
    def current_step(self) -> str | None:
        """The checkpointed step running now in this task, if any."""
        return current_step()

    async def step(
        self, name: str, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``await fn(*args, **kwargs)`` once per document, handler version, step name and
        input; on a redelivery or replay return its stored output instead (see
        :mod:`handlers.steps`)."""
        return await run_step(self, name, fn, *args, **kwargs)

    def checkpoint_key(self, step: str, step_input: Any) -> CheckpointKey:
        """The key under which a step's output for this document and input is checkpointed."""
        return CheckpointKey(
            doc_id=self.doc_id,
            handler=self.handler.name,
            handler_version=self.handler.version,
            step=step,
            input_hash=input_hash(step_input),
        )
