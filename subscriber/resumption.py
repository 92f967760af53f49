"""Resumption: fetching parked messages back once their cause has cleared.

A worker's :class:`Resumption` looks at the ``parked`` records of its subscriptions — as soon as
a receiver opens, then every ``resume_interval``, when the circuit breaker closes and before an
idle exit — asks :func:`~subscriber.parking.may_resume` which may go (asking the
:class:`~subscriber.breaker.CircuitBreaker` whether the LLM endpoint works, the store whether a
batch is still over budget), fetches those back from deferral and hands them to the worker to
run as ordinary deliveries, page after page (:data:`PAGE`) until all that may go are fetched: a
batch round's answered deliveries come back in one look, not one page per
``resume_interval``. A record whose message is gone is dropped. :meth:`Resumption.wake`
makes it look at once (batch mode's submitter marked deliveries whose requests are answered);
a marked record whose deferral is not confirmed yet is looked at again within :data:`SOON`.
:meth:`Resumption.left_parked` says what is left parked as the worker exits. One resumer at a
time: the probe and the periodic loop must not fetch the same deferred messages twice (the
second fetch finds them locked). Neighbours: :mod:`subscriber.parking` (records, the decision),
:mod:`subscriber.worker` (runs what is fetched back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from azure.servicebus import ServiceBusReceivedMessage

from docbus.servicebus import MessageNotFound, MessagingError
from docbus.store import ParkedGroup, Store, StoreError
from handlers.runtime import RegisteredHandler
from subscriber.breaker import CircuitBreaker
from subscriber.parking import (
    OVER_BUDGET,
    SYSTEMIC,
    ParkedMessage,
    fetchable_parked,
    mark_resumed,
    may_resume,
    parked_messages,
    unpark,
)
from subscriber.receiver import Receiver
from subscriber.settlement import Action

__all__ = ["Fetched", "Resumption", "parked_why"]

logger = logging.getLogger(__name__)

PAGE = 100
"""Parked messages fetched back at once (their records read again just before); a look goes
on page after page until every resumable one is fetched, so a whole batch round comes back in
one look."""

CANDIDATES = 5000
"""Parked records a look reads at once to learn which may go. One query for them all, then
the pages by id: a query per page over the subscription's records made a look's cost grow with
the square of a round (SecantusDB reads a query's whole index range, whatever its limit)."""

SOON = 0.5
"""Seconds before looking again at records marked for resumption whose deferral the parking
worker has not confirmed yet (a batch round answered while its deliveries were parking)."""

HELD_FOR = 60.0
"""Seconds a parked message another receiver held at a fetch is left alone (Service Bus says
"not found" of it, and the SDK retries that: each fetch costs seconds)."""

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
        self._woken = asyncio.Event()
        self._soon = False
        """A record marked for resumption waits for its deferral's confirmation: look again
        in :data:`SOON` seconds rather than at the next interval."""
        self._held: dict[str, float] = {}
        """Ids of parked records whose message another receiver held at a fetch, until when
        (loop time) they are left alone: each fetch of one costs the SDK's retries."""
        self.waiting: set[str] = set()
        """Ids of parked records fetched back whose handler has not started yet (the worker
        discards each as its delivery ends): not fetched a second time."""

    async def loop(self) -> None:
        while not self._stopping.is_set():
            stopping = asyncio.ensure_future(self._stopping.wait())
            woken = asyncio.ensure_future(self._woken.wait())
            try:
                await asyncio.wait(
                    {stopping, woken},
                    timeout=SOON if self._soon else self.interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                stopping.cancel()
                woken.cancel()
            self._woken.clear()
            await self.resume()

    def wake(self) -> None:
        """Look at the parked records now rather than at the next interval (parked deliveries
        were just marked for resumption: their batch-mode requests are answered)."""
        self._woken.set()

    async def resume(self, only: RegisteredHandler | None = None) -> int:
        """Fetch back and start the parked messages of the worker's subscriptions (or of
        ``only``'s) that :func:`~subscriber.parking.may_resume`; returns how many started."""
        async with self._lock:
            started = 0
            self._soon = False
            for registered in self.handlers if only is None else [only]:
                spec = registered.spec
                receiver = self.receivers.get(spec.name)
                if receiver is None or self._stopping.is_set():
                    continue
                after: int | None = None
                while not self._stopping.is_set():
                    try:
                        # whatever their deferral: an unconfirmed one marked for resumption
                        # is a reason to look again soon
                        candidates = await parked_messages(
                            self.store, spec.topic, spec.subscription, waiting=False,
                            confirmed=False, after=after, limit=CANDIDATES,
                        )  # fmt: skip
                    except StoreError as exc:
                        logger.warning("cannot read parked messages: %s", exc)
                        return started
                    now = datetime.now(UTC)
                    settled = [p.id for p in candidates if p.deferral_settled(now)]
                    self._soon = self._soon or any(
                        p.resume_requested_at is not None and not p.deferral_settled(now)
                        for p in candidates
                    )
                    for part in (settled[i : i + PAGE] for i in range(0, len(settled), PAGE)):
                        if self._stopping.is_set():
                            break
                        try:
                            # read again just before fetching: another worker may have them now
                            page = await fetchable_parked(self.store, part)
                            ready = await self._ready(page)
                        except StoreError as exc:
                            logger.warning("cannot read parked messages: %s", exc)
                            return started
                        if ready:
                            fetched = await self._fetch(receiver, ready)
                            if fetched:
                                logger.info(
                                    "resuming %d parked messages of %s", len(fetched), spec.name
                                )
                                await self._taken(fetched)
                            started += await self._run(registered, receiver, fetched)
                    if len(candidates) < CANDIDATES:
                        break
                    after = candidates[-1].sequence_number
            return started

    async def _taken(self, fetched: Fetched) -> None:
        """Messages fetched back are this worker's now: their records stay, marked, until each
        delivery settles (:meth:`settled`), so no other resumer fetches them meanwhile and a
        worker dying strands nothing (the records are fetchable again once the locks have
        surely expired). One update per page, not one per delivery as its handler starts: a
        batch round resumes thousands, and each waited for its own write."""
        try:
            await mark_resumed(self.store, [parked for parked, _ in fetched])
        except StoreError as exc:  # unmarked: a resumer may try to fetch them, and find them locked
            logger.warning("could not mark %d parked records resumed: %s", len(fetched), exc)

    async def settled(self, parked: ParkedMessage, action: Action) -> None:
        """A resumed message's delivery settled: a completed or dead-lettered one loses its
        record (a parked or given-back one has a new one already)."""
        if action not in (Action.COMPLETE, Action.DEAD_LETTER):
            return
        try:
            await unpark(self.store, parked)
        except StoreError as exc:  # the record outlives the message: a later round drops it
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
        now = asyncio.get_running_loop().time()
        self._held = {key: until for key, until in self._held.items() if until > now}
        candidates = [p for p in parked if p.id not in self.waiting and p.id not in self._held]
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
                except MessageNotFound as one_exc:
                    if await _gone(receiver, p.sequence_number):
                        await unpark(self.store, p)
                    else:
                        logger.warning(
                            "parked message %s is held by another receiver: it stays parked, "
                            "looked at again in %.0fs (%s)", p.id, HELD_FOR, one_exc,
                        )  # fmt: skip
                        self._held[p.id] = asyncio.get_running_loop().time() + HELD_FOR
                except MessagingError as one_exc:
                    logger.warning("parked message %s stays parked: %s", p.id, one_exc)
        by_number = {m.sequence_number: m for m in messages}
        fetched: Fetched = []
        for p in parked:
            message = by_number.pop(p.sequence_number, None)
            if message is not None:
                fetched.append((p, message))
        return fetched


async def _gone(receiver: Receiver, sequence_number: int) -> bool:
    """Whether the message a fetch found "not found" is really gone: Service Bus says so too
    of a deferred message another receiver has locked, whose record must stay (a peek, which
    locks nothing, still sees that one). Unsure — the peek failed — is not gone."""
    try:
        peeked = await receiver.peek(1, from_sequence=sequence_number)
    except MessagingError:
        return False
    return not peeked or peeked[0].sequence_number != sequence_number


def parked_why(reason: str, description: str) -> str:
    """Why messages are parked, on one line: the reason once, even when the description (an
    exception described as ``Type: message``) starts with it."""
    if not description:
        return reason
    return description if description.startswith(reason) else f"{reason}: {description}"
