"""The round barrier of batch mode: a delivery parks once every running step waits for a batch.

In batch mode a ``ctx.llm`` call whose request is not answered yet cannot return: its answer
comes from a provider batch, minutes or hours later. It must not park the delivery at once
either, or a handler that runs steps concurrently (``asyncio.gather``) would park after its
first call and register one step's request per round. :class:`BatchRound` counts, per
delivery, the steps running (:mod:`handlers.steps` calls :meth:`~BatchRound.enter` and
:meth:`~BatchRound.exit`; only the innermost steps count, a step waiting for its own sub-steps
does not), the calls under way (:meth:`~BatchRound.calling`) and the calls waiting
(:meth:`~BatchRound.wait`). When every running step waits and every call under way waits — or
a call outside any step waits while nothing else runs — the round closes and every waiting call
raises :class:`~handlers.errors.AwaitingBatch` with all the keys registered, so the delivery
parks once with everything it waits for. No timers: a step that is still working (reading a
checkpoint, registering its request) holds the round open until it waits or ends.
:meth:`~BatchRound.ordinal` numbers identical calls within one step, so two same calls get two
requests. Pure bookkeeping over one event loop; neighbours: :mod:`handlers.llm.batch` (the
batch-mode exchange), :mod:`handlers.steps` (the step runner).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from handlers.errors import AwaitingBatch

if TYPE_CHECKING:
    from handlers.context import Context

__all__ = ["BatchRound", "StepRun", "round_of"]


@dataclass(eq=False)
class StepRun:
    """One running step of a delivery (for the round's count)."""

    parent: StepRun | None
    children: int = 0


_current_run: ContextVar[StepRun | None] = ContextVar("docbus_step_run", default=None)


@dataclass(eq=False)
class BatchRound:
    """The round state of one delivery (see the module docstring)."""

    leaves: int = 0
    """Running steps with no running sub-step: each can still make a call."""
    waiting: dict[str, None] = field(default_factory=dict)
    """Keys of the requests the delivery waits for, in registration order."""
    waiters: int = 0
    calls: int = 0
    """``ctx.llm`` calls under way (:meth:`calling`): one not yet waiting holds the round."""
    _gate: asyncio.Future[None] | None = None
    _ordinals: Counter[tuple[str, str]] = field(default_factory=Counter)

    def enter(self) -> StepRun:
        """A step starts (in the calling task's context)."""
        parent = _current_run.get()
        run = StepRun(parent)
        if parent is not None:
            parent.children += 1
            if parent.children == 1:
                self.leaves -= 1  # it waits for its sub-steps now
        self.leaves += 1
        _current_run.set(run)
        return run

    def exit(self, run: StepRun) -> None:
        """A step ended (returned, raised or was cancelled)."""
        if run.children == 0:
            self.leaves -= 1
        parent = run.parent
        if parent is not None:
            parent.children -= 1
            if parent.children == 0:
                self.leaves += 1
        _current_run.set(parent)
        self._check()

    def calling(self) -> _Call:
        """``with round.calling():`` around one ``ctx.llm`` call (live or batch)."""
        return _Call(self)

    def ordinal(self, step_id: str, body_key: str) -> int:
        """0 for the first call of ``step_id`` with this body in the delivery, then 1, 2..."""
        number = self._ordinals[(step_id, body_key)]
        self._ordinals[(step_id, body_key)] += 1
        return number

    async def wait(self, key: str) -> NoReturn:
        """Wait until the round closes, then raise :class:`AwaitingBatch` with every key."""
        self.waiting[key] = None
        if self._gate is None:
            self._gate = asyncio.get_running_loop().create_future()
        self.waiters += 1
        try:
            self._check()
            await asyncio.shield(self._gate)
        finally:
            self.waiters -= 1
        raise AwaitingBatch(list(self.waiting))

    def _check(self) -> None:
        gate = self._gate
        if gate is not None and not gate.done() and self.waiters >= max(1, self.leaves, self.calls):
            gate.set_result(None)


class _Call:
    """One ``ctx.llm`` call counted by its round while it runs."""

    __slots__ = ("_round",)

    def __init__(self, batch_round: BatchRound) -> None:
        self._round = batch_round

    def __enter__(self) -> None:
        self._round.calls += 1

    def __exit__(self, *exc: object) -> None:
        self._round.calls -= 1
        self._round._check()


def round_of(ctx: Context) -> BatchRound:
    """The round state of ``ctx``'s delivery (made on first use)."""
    found = ctx._batch_round
    if found is None:
        found = ctx._batch_round = BatchRound()
    return found
