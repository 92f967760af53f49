"""Resumption: fetching parked messages back once their cause has cleared.

A worker's :class:`Resumption` looks at the ``parked`` records of its subscriptions — as soon as
a receiver opens, then every ``resume_interval``, when the circuit breaker closes and before an
idle exit — asks :func:`~subscriber.parking.may_resume` which may go (asking the
:class:`~subscriber.breaker.CircuitBreaker` whether the LLM endpoint works, the store whether a
batch is still over budget), fetches those back from deferral and hands them to the worker to
run as ordinary deliveries. A record whose message is gone is dropped.
:meth:`Resumption.left_parked` says what is left parked as the worker exits. One resumer at a
time: the probe and the periodic loop must not fetch the same deferred messages twice (the
second fetch finds them locked). Neighbours: :mod:`subscriber.parking` (records, the decision),
:mod:`subscriber.worker` (runs what is fetched back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from azure.servicebus import ServiceBusReceivedMessage

from docbus.servicebus import MessageNotFound, MessagingError
from docbus.store import ParkedGroup, Store, StoreError
from handlers.runtime import RegisteredHandler
from subscriber.breaker import CircuitBreaker
from subscriber.parking import (
    OVER_BUDGET,
    SYSTEMIC,
    ParkedMessage,
    may_resume,
    parked_messages,
    unpark,
)
from subscriber.receiver import Receiver

__all__ = ["Fetched", "Resumption", "parked_why"]

logger = logging.getLogger(__name__)

Fetched = list[tuple[ParkedMessage, ServiceBusReceivedMessage]]
"""Parked messages fetched back, each with its record, in the records' order."""


class Resumption:
    """Resumes the parked messages of a worker's handlers (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        handlers: Sequence[RegisteredHandler],
        *,
        breaker: CircuitBreaker,
        receivers: Mapping[str, Receiver],
        stopping: asyncio.Event,
        interval: float,
        run: Callable[[RegisteredHandler, Receiver, Fetched], Awaitable[int]],
    ) -> None:
        self.store = store
        self.handlers = handlers
        self.breaker = breaker
        self.receivers = receivers
        """The worker's open receivers by handler name: only those handlers are resumed."""
        self.interval = interval
        self._stopping = stopping
        self._run = run
        self._lock = asyncio.Lock()
        self.waiting: set[str] = set()
        """Ids of parked records fetched back whose handler has not started yet (the worker
        discards each as its delivery ends): not fetched a second time."""

    async def loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval)
            await self.resume()

    async def resume(self, only: RegisteredHandler | None = None) -> int:
        """Fetch back and start the parked messages of the worker's subscriptions (or of
        ``only``'s) that :func:`~subscriber.parking.may_resume`; returns how many started."""
        async with self._lock:
            started = 0
            for registered in self.handlers if only is None else [only]:
                spec = registered.spec
                receiver = self.receivers.get(spec.name)
                if receiver is None or self._stopping.is_set():
                    continue
                try:
                    parked = await parked_messages(self.store, spec.topic, spec.subscription)
                    ready = await self._ready(parked)
                except StoreError as exc:
                    logger.warning("cannot read parked messages: %s", exc)
                    return started
                if ready:
                    fetched = await self._fetch(receiver, ready)
                    if fetched:
                        logger.info("resuming %d parked messages of %s", len(fetched), spec.name)
                    started += await self._run(registered, receiver, fetched)
            return started

    async def unpark(self, parked: ParkedMessage) -> None:
        """Drop the record of a resumed message whose handler starts now."""
        try:
            await unpark(self.store, parked)
        except StoreError as exc:  # the record outlives the message: the next round drops it
            logger.warning("could not remove the parked record %s: %s", parked.id, exc)

    async def left_parked(self) -> list[ParkedGroup]:
        """What is left parked on the worker's (unordered) subscriptions, logged per group."""
        groups: list[ParkedGroup] = []
        for topic, subscription in dict.fromkeys(
            (h.spec.topic, h.spec.subscription) for h in self.handlers if not h.spec.ordered_by
        ):
            try:
                groups += await self.store.parked_groups(topic=topic, subscription=subscription)
            except StoreError as exc:
                logger.warning("cannot tell what is left parked on %s: %s", subscription, exc)
        for group in groups:
            logger.warning(
                "left parked: %d message(s) of %s (%s/%s), %s",
                group.count, group.handler or "?", group.topic, group.subscription,
                parked_why(group.reason, group.description),
            )  # fmt: skip
        return groups

    async def _ready(self, parked: list[ParkedMessage]) -> list[ParkedMessage]:
        candidates = [p for p in parked if p.id not in self.waiting]
        over_budget: dict[str, bool] = {}
        for batch_id in {p.batch_id for p in candidates if p.reason == OVER_BUDGET}:
            if batch_id is not None:
                batch = await self.store.get_batch(batch_id)
                over_budget[batch_id] = batch is not None and batch.over_budget
        breaker = self.breaker
        llm_works: bool | None = False if breaker.is_open else breaker.llm_works
        if breaker.llm is None:
            # Nothing to ask: try them (a handler that needs an LLM parks them again and
            # stops this worker, see CircuitBreaker.open).
            llm_works = not breaker.is_open
        elif llm_works is None and any(
            p.reason == SYSTEMIC and p.resume_requested_at is None for p in candidates
        ):
            llm_works = await breaker.probe()  # a new worker: does the key work now?
            if not llm_works:
                breaker.open()
        return [
            p
            for p in candidates
            if may_resume(p, llm_works=llm_works, over_budget=over_budget.get(p.batch_id or ""))
        ]

    async def _fetch(self, receiver: Receiver, parked: list[ParkedMessage]) -> Fetched:
        """The messages of ``parked`` fetched back from deferral, with their records; those
        not fetched this time keep their record for the next round, those gone lose it."""
        numbers = [p.sequence_number for p in parked]
        try:
            messages = await receiver.receive_deferred(numbers)
        except MessagingError as exc:
            logger.warning("cannot fetch %d parked messages: %s", len(numbers), exc)
            messages = []
            for p in parked:  # one by one: drop the records of messages that are gone
                try:
                    messages += await receiver.receive_deferred([p.sequence_number])
                except MessageNotFound:
                    await unpark(self.store, p)
                except MessagingError as one_exc:
                    logger.warning("parked message %s stays parked: %s", p.id, one_exc)
        by_number = {m.sequence_number: m for m in messages}
        fetched: Fetched = []
        for p in parked:
            message = by_number.pop(p.sequence_number, None)
            if message is not None:
                fetched.append((p, message))
        return fetched


def parked_why(reason: str, description: str) -> str:
    """Why messages are parked, on one line: the reason once, even when the description (an
    exception described as ``Type: message``) starts with it."""
    if not description:
        return reason
    return description if description.startswith(reason) else f"{reason}: {description}"
