"""The context: everything a handler may use besides the document itself.

A :class:`Context` is built by the worker for one delivery of one message: the envelope, the
handler's spec, the delivery count, a logger that names the batch and document, the store (for
step checkpoints) and ``ctx.llm``, the LLM client bound to this delivery — anything with the
:class:`LLM` methods, in the worker a :class:`handlers.llm.BoundLLM`
(:meth:`handlers.llm.LLMClient.bind`; an unbound client given to the constructor is bound on
the spot). ``await ctx.step(name, fn, ...)`` runs a checkpointed step (:mod:`handlers.steps`).
What the runtime keeps per delivery (pending writes, checkpoints read, steps run) is not on the
context but behind it (:mod:`handlers.delivery`).
Neighbours: :mod:`handlers.document` (the document), :mod:`handlers.errors` (what to raise).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

from pydantic import BaseModel

from docbus.envelope import Envelope
from docbus.records import CheckpointKey, input_hash
from docbus.store import Store
from handlers.decorator import HandlerSpec
from handlers.delivery import Delivery
from handlers.steps import current_step, run_step

P = ParamSpec("P")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

__all__ = ["LLM", "Context", "HandlerLogger", "PromptOrMessages"]

PromptOrMessages = str | Sequence[Mapping[str, Any]]
"""A user prompt, or OpenAI chat messages (``[{"role": "user", "content": "..."}]``)."""


class LLM(Protocol):
    """What a handler calls as ``ctx.llm`` (the worker's is a :class:`handlers.llm.BoundLLM`).

    Failures arrive as :class:`~handlers.errors.Retry`, :class:`~handlers.errors.DeadLetter`,
    :class:`~handlers.errors.SystemicFailure` or :class:`~handlers.errors.OverBudget`.
    """

    async def extract(
        self,
        model_cls: type[M],
        prompt_or_messages: PromptOrMessages,
        *,
        system: str | None = None,
        model: str | None = None,
        max_reasks: int = 2,
        temperature: float | None = 0.0,
        max_tokens: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> M:
        """An instance of ``model_cls`` read by the LLM, validated (re-asked when invalid)."""
        ...

    async def complete(
        self,
        prompt_or_messages: PromptOrMessages,
        *,
        system: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> str:
        """The LLM's free-text answer."""
        ...


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
    llm: LLM | None = None
    """The LLM client bound to this delivery, attached by the worker (``None`` when it has
    none): ``await ctx.llm.extract(Model, prompt)``, ``await ctx.llm.complete(prompt)``."""
    logger: HandlerLogger = field(init=False, repr=False)
    _delivery: Delivery = field(init=False, repr=False, compare=False)
    _batch_round: Any = field(init=False, default=None, repr=False, compare=False)
    """The delivery's batch-mode round (:mod:`handlers.batch_round`), made on first use."""

    def __post_init__(self) -> None:
        self._delivery = Delivery()
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
