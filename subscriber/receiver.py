"""The receiver: the worker's one adapter onto a Service Bus receiver link.

Everything the subscriber does with a subscription goes through a :class:`Receiver`: receive,
complete, abandon, defer, dead-letter, renew a message's or a session's lock, fetch deferred
messages back, peek. Each call translates the SDK's exceptions into docbus's own
(:func:`docbus.servicebus.translated`): :class:`~docbus.servicebus.MessageLockLost`,
:class:`~docbus.servicebus.MessageNotFound`, :class:`~docbus.servicebus.MessagingUnavailable`
(a connection or a link lost — the SDK says the latter with a ``ValueError``), ... so nothing
else in :mod:`subscriber` catches an azure exception. :func:`open_receiver` and
:func:`open_next_session` open and close links the same way.

Receives and settlements on one link take turns (:class:`Turns`). The SDK (pyamqp) has no task
reading its connection: every call that waits for an answer reads frames itself, one at a time,
with a 0.1 s socket timeout. A settlement waits for its outcome that way, and so does a receive
for its transfers, then for 0.2 s more after the first one arrives. Run at once on one link, they
read each other's frames: the receive finds its messages taken off the wire by a settlement's
read and sits out its own timeouts, and settlements queue behind it, leaving handler slots idle.
Completions that arrive together leave together (:meth:`Receiver.complete`): one task takes
the turn once for all of them and completes them back to back, each waiting only for its own
outcome, as a plain SDK loop does after a receive. Sent at once instead, each completion reads
frames for itself under the SDK's one socket lock, reads the others' outcomes and then waits out
a 0.1 s read timeout for an outcome already taken, with the socket locked: every completion on
the link, and the next receive, waits behind it (completions took 6-13 ms each against 0.2 ms).
:meth:`Receiver.release` gives a message no handler has seen back without counting a delivery.
Lock renewals and deferred fetches go over the management link and are rare: they take no turn,
so a renewal is never late. Neighbours: :mod:`subscriber.worker` opens receivers,
:mod:`subscriber.processing` settles through them, :mod:`subscriber.locks` renews.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import OperationTimeoutError

from docbus.servicebus import translated

__all__ = ["Receiver", "Turns", "open_next_session", "open_receiver"]

logger = logging.getLogger(__name__)


class Turns:
    """Exclusive turns for receives, shared turns for settlements on the same link.

    A readers-writer lock with the receive as the writer: settlements share a turn (they do not
    disturb each other), a receive waits for them to finish and has the link alone, and
    settlements arriving meanwhile wait for it — at most the receive's wait; by then their
    handler slot is free and the lock renewer still holds their lock. A waiting receive blocks
    new settlements, so a stream of them cannot starve it.
    """

    def __init__(self) -> None:
        self._sharing = 0
        self._receiving = False
        self._receive_waiting = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def receiving(self) -> AsyncIterator[None]:
        async with self._changed:
            self._receive_waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._receiving and self._sharing == 0)
            finally:
                self._receive_waiting -= 1
            self._receiving = True
        try:
            yield
        finally:
            async with self._changed:
                self._receiving = False
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def sharing(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._receiving and self._receive_waiting == 0)
            self._sharing += 1
        try:
            yield
        finally:
            async with self._changed:
                self._sharing -= 1
                if self._sharing == 0:
                    self._changed.notify_all()


class Receiver:
    """One open receiver link; every method raises only docbus's
    :class:`~docbus.servicebus.MessagingError` for what the broker or the connection did."""

    def __init__(self, link: ServiceBusReceiver, where: str, *, ranged: bool = True) -> None:
        self._link = link
        self.where = where
        """``topic/subscription`` (and sub-queue), for messages."""
        self.ranged = ranged
        """Whether completions of consecutive deliveries go as one ranged disposition."""
        self.turns = Turns()
        self._to_complete: list[tuple[ServiceBusReceivedMessage, asyncio.Future[None]]] = []
        self._completing: asyncio.Task[None] | None = None

    # --- receiving ------------------------------------------------------------------------
    async def receive(self, max_count: int, max_wait: float) -> list[ServiceBusReceivedMessage]:
        """Up to ``max_count`` messages, waiting at most ``max_wait`` s for the first."""
        async with self.turns.receiving():
            with translated(f"receive from {self.where}"):
                return await self._link.receive_messages(
                    max_message_count=max_count, max_wait_time=max_wait
                )

    async def receive_deferred(
        self, sequence_numbers: Sequence[int]
    ) -> list[ServiceBusReceivedMessage]:
        """Deferred messages fetched back by sequence number; :class:`MessageNotFound` if one
        of them is gone."""
        with translated(f"fetch deferred messages from {self.where}"):
            return await self._link.receive_deferred_messages(list(sequence_numbers))

    async def peek(self, count: int = 1, from_sequence: int = 1) -> list[ServiceBusReceivedMessage]:
        """Messages looked at without locking them (answers at once, even when empty)."""
        with translated(f"peek at {self.where}"):
            return await self._link.peek_messages(
                max_message_count=count, sequence_number=from_sequence
            )

    # --- settling -------------------------------------------------------------------------
    async def complete(self, message: ServiceBusReceivedMessage) -> None:
        """Complete ``message``, together with the completions waiting with it (see the
        module docstring); raises what completing this message met."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_complete.append((message, future))
        if self._completing is None:
            self._completing = asyncio.create_task(
                self._complete_waiting(), name=f"complete on {self.where}"
            )
        await future

    async def _complete_waiting(self) -> None:
        """Complete what waits, a group at a time, until nothing does."""
        group: list[tuple[ServiceBusReceivedMessage, asyncio.Future[None]]] = []
        try:
            while self._to_complete:
                group, self._to_complete = self._to_complete, []
                async with self.turns.sharing():
                    for run in _runs([(m, f) for m, f in group if not f.done()]):
                        if len(run) > 1 and self.ranged and await self._complete_run(run):
                            continue
                        for message, future in run:
                            await self._complete_one(message, future)
                group = []
        except BaseException:  # cancelled (the worker is torn down): nobody completes the rest
            for _, future in [*group, *self._to_complete]:
                future.cancel()  # (does nothing to one already answered)
            self._to_complete = []
            raise
        finally:
            self._completing = None

    async def _complete_one(
        self, message: ServiceBusReceivedMessage, future: asyncio.Future[None]
    ) -> None:
        try:
            with translated(f"complete {message.message_id} on {self.where}"):
                await self._link.complete_message(message)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(None)

    async def _complete_run(
        self, run: list[tuple[ServiceBusReceivedMessage, asyncio.Future[None]]]
    ) -> bool:
        """Complete messages of consecutive delivery ids with one disposition (first..last),
        awaiting every outcome, as the SDK awaits one; False if that failed (then each is
        completed on its own, which says whose lock is lost, or falls back to the
        management link as the SDK does)."""
        handler = getattr(self._link, "_handler", None)
        link = getattr(handler, "_link", None)
        tags = getattr(link, "_received_delivery_tags", None)
        if handler is None or not isinstance(tags, set):
            return False
        first, last = run[0][0], run[-1][0]
        try:
            await handler.settle_messages_async(
                (first._delivery_id, last._delivery_id),
                first._delivery_tag,
                "accepted",
                await_outcome=True,
                outcome_timeout=self._link._config.timeout,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("completing %d messages at once failed (%s): one by one", len(run), exc)
            return False
        for message, future in run:
            tags.discard(message._delivery_tag)  # (the SDK forgets the first one's itself)
            message._settled = True
            if not future.done():
                future.set_result(None)
        return True

    async def release(self, message: ServiceBusReceivedMessage) -> None:
        """Give back a message no handler has seen without counting a delivery (an AMQP
        ``released`` outcome, as the SDK releases messages it received unasked); its
        redelivery keeps its delivery count. Sent settled, so no outcome is awaited: were it
        lost, the lock would run out, which is what an abandon would have cost."""
        async with self.turns.sharing():
            with translated(f"release {message.message_id} on {self.where}"):
                handler = getattr(self._link, "_handler", None)
                if handler is None or getattr(message, "_is_deferred_message", False):
                    # (a deferred message is settled over the management link, which has
                    # no release: abandon it)
                    await self._link.abandon_message(message)
                    return
                await handler.settle_messages_async(
                    message._delivery_id,  # (what the SDK's own release sends)
                    message._delivery_tag,
                    "released",
                )
                message._settled = True  # as the SDK marks a message it settled

    async def abandon(self, message: ServiceBusReceivedMessage) -> None:
        async with self.turns.sharing():
            with translated(f"abandon {message.message_id} on {self.where}"):
                await self._link.abandon_message(message)

    async def defer(self, message: ServiceBusReceivedMessage) -> None:
        async with self.turns.sharing():
            with translated(f"defer {message.message_id} on {self.where}"):
                await self._link.defer_message(message)

    async def dead_letter(
        self, message: ServiceBusReceivedMessage, *, reason: str, description: str
    ) -> None:
        async with self.turns.sharing():
            with translated(f"dead-letter {message.message_id} on {self.where}"):
                await self._link.dead_letter_message(
                    message, reason=reason, error_description=description
                )

    @staticmethod
    def settled(message: ServiceBusReceivedMessage) -> bool:
        """Whether ``message`` has been completed, abandoned, deferred or dead-lettered (by
        this process; the SDK marks a message once its settlement is acknowledged)."""
        return bool(getattr(message, "_settled", False))

    # --- locks ----------------------------------------------------------------------------
    async def renew_lock(self, message: ServiceBusReceivedMessage) -> None:
        with translated(f"renew the lock of {message.message_id} on {self.where}"):
            await self._link.renew_message_lock(message)

    @property
    def session_id(self) -> str | None:
        """The locked session's id; None on a link without sessions."""
        session = self._link.session  # (None without sessions, whatever the SDK's hint says)
        return None if session is None else session.session_id

    @property
    def session_locked_until(self) -> datetime | None:
        """When the session's lock runs out; None on a link without sessions."""
        session = self._link.session
        return None if session is None else session.locked_until_utc

    async def renew_session_lock(self) -> None:
        with translated(f"renew the lock of session {self.session_id} on {self.where}"):
            await self._link.session.renew_lock()


def _runs(
    entries: list[tuple[ServiceBusReceivedMessage, asyncio.Future[None]]],
) -> list[list[tuple[ServiceBusReceivedMessage, asyncio.Future[None]]]]:
    """``entries`` by delivery id, cut into runs of consecutive ids that one disposition
    frame may settle: a disposition's range covers every id in it, so a run never spans an id
    that is not being completed here. A message the management link settles (a deferred one),
    one settled already or one whose lock ran out by the local clock stands alone (the SDK
    says what is wrong with it)."""
    alone: list[list[tuple[ServiceBusReceivedMessage, asyncio.Future[None]]]] = []
    ranged: list[tuple[int, ServiceBusReceivedMessage, asyncio.Future[None]]] = []
    for message, future in entries:
        delivery_id = getattr(message, "_delivery_id", None)
        if (
            not isinstance(delivery_id, int)
            or getattr(message, "_is_deferred_message", False)
            or Receiver.settled(message)
            or _lock_ran_out(message)
        ):
            alone.append([(message, future)])
        else:
            ranged.append((delivery_id, message, future))
    ranged.sort(key=lambda entry: entry[0])
    runs: list[list[tuple[ServiceBusReceivedMessage, asyncio.Future[None]]]] = []
    previous: int | None = None
    for delivery_id, message, future in ranged:
        if previous is None or delivery_id != previous + 1:
            runs.append([])
        runs[-1].append((message, future))
        previous = delivery_id
    return runs + alone


def _lock_ran_out(message: ServiceBusReceivedMessage) -> bool:
    """Whether the SDK holds ``message``'s lock for expired (never, for a session's message:
    the session's lock is the one that counts)."""
    try:
        return bool(getattr(message, "_lock_expired", False))
    except TypeError:  # "Session messages do not expire"
        return False


@contextlib.asynccontextmanager
async def open_receiver(
    client: ServiceBusClient,
    topic: str,
    subscription: str,
    *,
    prefetch: int = 0,
    dead_letters: bool = False,
    ranged: bool = True,
) -> AsyncIterator[Receiver]:
    """A peek-lock :class:`Receiver` on ``topic/subscription`` (its dead-letter queue with
    ``dead_letters``), closed on exit; ``ranged``: see :attr:`Receiver.ranged`."""
    where = f"{topic}/{subscription}" + ("/$DeadLetterQueue" if dead_letters else "")
    link = client.get_subscription_receiver(
        topic,
        subscription,
        prefetch_count=prefetch,
        sub_queue=ServiceBusSubQueue.DEAD_LETTER if dead_letters else None,
    )
    with translated(f"open a receiver on {where}"):
        await link.__aenter__()
    try:
        yield Receiver(link, where, ranged=ranged)
    finally:
        with translated(f"close the receiver on {where}"):
            await link.close()


@contextlib.asynccontextmanager
async def open_next_session(
    client: ServiceBusClient, topic: str, subscription: str, *, max_wait: float
) -> AsyncIterator[Receiver | None]:
    """A :class:`Receiver` holding the lock of the next session with messages on
    ``topic/subscription``, or None if none has any within ``max_wait`` s (the wait is also
    the receiver's default receive wait)."""
    where = f"{topic}/{subscription}"
    link = client.get_subscription_receiver(
        topic, subscription, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=max_wait
    )
    locked = True
    with translated(f"lock a session on {where}"):
        try:
            await link.__aenter__()
        except OperationTimeoutError:
            locked = False  # no session has messages right now
    if not locked:
        yield None
        return
    try:
        yield Receiver(link, where)
    finally:
        with translated(f"close the session receiver on {where}"):
            await link.close()
