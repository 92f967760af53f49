"""Message entities: the queue-like core shared by queues, subscriptions and dead-letter sub-queues.

A :class:`MessageEntity` holds the messages of one entity and implements Service Bus's receive-side
semantics without any AMQP in it: sequence numbers, dispatch to receiving links (:class:`Consumer`,
implemented by :mod:`docbus.local.emulator.connection`) round-robin by credit, peek-lock locks and
their expiry, settlement by lock token, delivery counting and the ``$DeadLetterQueue``,
time-to-live, scheduled and deferred messages, and peeking. Sessions are a separate concept
(:mod:`docbus.local.emulator.sessions`) that this class drives for session-enabled entities. Queues,
topics and subscriptions (:mod:`docbus.local.emulator.broker`) build on it; an optional journal
(:mod:`docbus.local.emulator.persistence`) is told of every change.

Everything runs on one asyncio loop. Deliver and settle are O(log n): the messages sit in a dict by
sequence number, locks in a dict by token, available messages in heaps of sequence numbers (with
lazy deletion), and each kind of deadline (lock expiry, TTL, scheduled time) in one heap watched by
one :class:`~docbus.local.emulator.alarms.Alarm`, rather than a loop timer per message.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from .alarms import TOLERANCE, Alarm
from .config import EntityProperties
from .errors import MessageLockLost, MessageNotFound, NotAllowed, QuotaExceeded, SessionLockLost
from .message import BrokeredMessage, MessageState, ReceiveMode
from .sessions import MessageSession, SessionTable

if TYPE_CHECKING:
    from .persistence import EntitySnapshot, Journal

logger = logging.getLogger(__name__)

__all__ = ["Consumer", "MessageEntity"]

LOCK_LOST = (
    "The lock supplied is invalid. Either the lock expired, or the message has already been "
    "removed from the queue, or was received by a different receiver instance."
)
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"
TTL_REASON = "TTLExpiredException"
TTL_DESCRIPTION = "The message expired and was dead lettered."
SESSION_ID_NULL_REASON = "Session ID is null"


class Consumer(Protocol):
    """A receiving link, implemented by the wire layer. Compared and hashed by identity."""

    receive_mode: ReceiveMode
    session_id: str | None  # set by the entity once a session is locked for it

    @property
    def credit(self) -> int:
        """How many more messages the link takes now."""
        ...

    def deliver(self, message: BrokeredMessage) -> None:
        """Send the message now (synchronously encoded) and lower the credit by one."""
        ...

    def session_lost(self) -> None:
        """The session lock expired: detach with ``com.microsoft:session-lock-lost``."""
        ...


class MessageEntity:
    """A queue, a subscription, or a dead-letter sub-queue (``dead_letter_queue`` is None there)."""

    def __init__(
        self,
        name: str,
        properties: EntityProperties | None = None,
        *,
        dead_letter_queue: MessageEntity | None = None,
        clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        self.name = name
        self.properties = properties or EntityProperties()
        self.dead_letter_queue = dead_letter_queue
        self._clock = clock
        self._journal = journal
        self._messages: dict[int, BrokeredMessage] = {}
        self._in_order = True  # dict order == sequence order, so peek needs no sort
        self._size = 0
        self._last_seq = 0
        self._ready: set[int] = set()  # active, unlocked, waiting in a heap
        self._heap: list[int] = []  # non-session messages ready for delivery
        self._locks: dict[uuid.UUID, BrokeredMessage] = {}
        self._lock_heap: list[tuple[float, uuid.UUID]] = []  # non-session lock deadlines
        self._expiry_heap: list[tuple[float, int]] = []
        self._schedule_heap: list[tuple[float, int]] = []
        self._lock_alarm = Alarm(clock, self._on_lock_alarm)
        self._expiry_alarm = Alarm(clock, self._on_expiry_alarm)
        self._schedule_alarm = Alarm(clock, self._on_schedule_alarm)
        self._consumers: dict[Consumer, None] = {}
        self._hungry: dict[Consumer, None] = {}  # consumers with credit, in round-robin order
        self._dispatching = False
        self._dispatch_again = False
        self.sessions: SessionTable | None = (
            SessionTable(self, clock) if self.properties.requires_session else None
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} messages={len(self._messages)}>"

    @property
    def is_dead_letter_queue(self) -> bool:
        return self.dead_letter_queue is None

    # --- sending ----------------------------------------------------------------------------

    def enqueue(self, message: BrokeredMessage) -> int:
        """Accept a sent message; returns its sequence number. Dispatches at once."""
        self._ensure_alarms()
        self._check_session_id(message)
        self._check_quota(message.size)
        seq = self._next_sequence_number()
        self._accept(message, seq)
        self.dispatch()
        return seq

    def schedule(self, messages: list[BrokeredMessage]) -> list[int]:
        """Enqueue messages whose ``scheduled_enqueue_time`` is set; returns sequence numbers."""
        for message in messages:
            self._check_session_id(message)
        self._check_quota(sum(m.size for m in messages))
        return [self.enqueue(message) for message in messages]

    def cancel_scheduled(self, sequence_numbers: list[int]) -> None:
        for seq in sequence_numbers:
            message = self._messages.get(seq)
            if message is None or message.state != MessageState.SCHEDULED:
                raise MessageNotFound(
                    f"The scheduled message with sequence number {seq} was not found in "
                    f"'{self.name}'."
                )
        for seq in sequence_numbers:
            self._remove(self._messages[seq])

    def _check_session_id(self, message: BrokeredMessage) -> None:
        if self.sessions is not None and message.session_id is None:
            raise NotAllowed(
                f"{SESSION_ID_NULL_REASON}: the entity '{self.name}' requires sessions, so every "
                "message sent to it must have a session_id."
            )

    def _check_quota(self, size: int) -> None:
        if self._size + size > self.properties.max_size_bytes:
            raise QuotaExceeded(
                f"The maximum entity size has been reached or exceeded for '{self.name}'. "
                f"Size of entity in bytes: {self._size}, max entity size in bytes: "
                f"{self.properties.max_size_bytes}."
            )

    def _next_sequence_number(self) -> int:
        self._last_seq += 1
        if self._journal is not None:
            self._journal.sequence_advanced(self.name, self._last_seq)
        return self._last_seq

    def effective_ttl(self, message: BrokeredMessage, cap: float | None = None) -> float | None:
        """The lower of the message's TTL and the entity defaults, as Service Bus applies it."""
        candidates = [t for t in (message.ttl, self.properties.default_message_ttl, cap) if t]
        candidates = [t for t in candidates if t > 0]
        return min(candidates) if candidates else None

    def _accept(self, message: BrokeredMessage, seq: int, ttl_cap: float | None = None) -> None:
        now = self._clock()
        ttl = self.effective_ttl(message, ttl_cap)
        when = message.scheduled_enqueue_time
        message.sequence_number = seq
        message.delivery_count = 0
        message.lock_token = message.locked_until = None
        if when is not None and when > now:
            message.state = MessageState.SCHEDULED
            message.enqueued_time = when
            message.expires_at = when + ttl if ttl is not None else None
            self._insert(message)
            heapq.heappush(self._schedule_heap, (when, seq))
            self._schedule_alarm.at(when)
        else:
            message.state = MessageState.ACTIVE
            message.enqueued_time = now
            message.expires_at = now + ttl if ttl is not None else None
            self._insert(message)
            self._watch_expiry(message)
            self._make_ready(message)
        if self._journal is not None:
            self._journal.message_added(self.name, message)

    def _insert(self, message: BrokeredMessage) -> None:
        seq = message.sequence_number
        if self._messages and seq < next(reversed(self._messages)):
            self._in_order = False
        self._messages[seq] = message
        self._size += message.size
        if self.sessions is not None:
            self.sessions.message_added(message)

    def _watch_expiry(self, message: BrokeredMessage) -> None:
        if message.expires_at is not None and not self.is_dead_letter_queue:
            heapq.heappush(self._expiry_heap, (message.expires_at, message.sequence_number))
            self._expiry_alarm.at(message.expires_at)

    # --- consumers and dispatch -------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        """Attach a receiving link; session entities take only consumers of an accepted session."""
        self._ensure_alarms()
        if self.sessions is not None:
            self.sessions.check_consumer(consumer)
        self._consumers[consumer] = None
        self.credit_available(consumer)

    def remove_consumer(self, consumer: Consumer) -> None:
        """Detach a link. Its non-session locks stay until they expire; its session is released."""
        self._consumers.pop(consumer, None)
        self._hungry.pop(consumer, None)
        if self.sessions is not None:
            self.sessions.consumer_removed(consumer)

    def register_consumer(self, consumer: Consumer) -> None:
        self._consumers[consumer] = None

    def unregister_consumer(self, consumer: Consumer) -> None:
        self._consumers.pop(consumer, None)
        self._hungry.pop(consumer, None)

    def message_for_lock(self, lock_token: uuid.UUID) -> BrokeredMessage | None:
        return self._locks.get(lock_token)

    def credit_available(self, consumer: Consumer) -> None:
        """The link got more credit: deliver what is available."""
        if consumer not in self._consumers:
            return
        self._ensure_alarms()
        if self.sessions is not None:
            self.sessions.credit_available(consumer)
        elif consumer.credit > 0 and consumer not in self._hungry:
            self._hungry[consumer] = None
        self.dispatch()

    def dispatch(self) -> None:
        """Deliver available messages to consumers with credit (safe to call at any time)."""
        # deliver() may re-enter (a consumer settling synchronously): the outer loop repeats.
        if self._dispatching:
            self._dispatch_again = True
            return
        self._dispatching = True
        try:
            while True:
                self._dispatch_again = False
                if self.sessions is not None:
                    self.sessions.dispatch()
                else:
                    self._dispatch_plain()
                if not self._dispatch_again:
                    break
        finally:
            self._dispatching = False

    def _dispatch_plain(self) -> None:
        hungry = self._hungry
        while hungry and self._ready:
            consumer = next(iter(hungry))
            del hungry[consumer]
            if consumer.credit <= 0:
                continue
            message = self.pop_ready(self._heap)
            if message is None:
                hungry[consumer] = None
                return
            if self.deliver(consumer, message) and consumer.credit > 0:
                hungry[consumer] = None  # to the back of the line: round-robin

    def pop_ready(
        self, heap: list[int], session: MessageSession | None = None
    ) -> BrokeredMessage | None:
        """The next deliverable message of a heap in sequence order; expired ones go on the way."""
        ready = self._ready
        now = None
        while heap:
            seq = heapq.heappop(heap)
            if seq not in ready:
                continue  # lazily deleted: delivered, expired, cancelled or queued twice
            ready.discard(seq)
            if session is not None:
                session.ready_count -= 1
            message = self._messages[seq]
            expires_at = message.expires_at
            if expires_at is not None and not self.is_dead_letter_queue:
                now = self._clock() if now is None else now
                if expires_at <= now:
                    self._expire(message)
                    continue
            return message
        return None

    def deliver(self, consumer: Consumer, message: BrokeredMessage) -> bool:
        """Hand one popped message to a consumer; False if the consumer failed."""
        delete = consumer.receive_mode == ReceiveMode.RECEIVE_AND_DELETE
        if not delete:
            self._lock(message, self.sessions.of(message) if self.sessions is not None else None)
        try:
            consumer.deliver(message)
        except Exception:
            logger.exception(
                "%s: delivery of message %s failed", self.name, message.sequence_number
            )
            self._hungry.pop(consumer, None)
            self._unlock(message)
            self._requeue(message)  # nothing was sent: not a delivery attempt
            return False
        if delete:
            self._remove(message)
        return True

    # --- locks ------------------------------------------------------------------------------

    def _lock(self, message: BrokeredMessage, session: MessageSession | None) -> None:
        token = uuid.uuid4()
        message.lock_token = token
        self._locks[token] = message
        if session is not None and session.owner is not None:
            # A session message's lock is the session's lock: it has no deadline of its own.
            message.locked_until = session.locked_until
            session.locked.add(token)
        else:
            until = self._clock() + self.properties.lock_duration
            message.locked_until = until
            heapq.heappush(self._lock_heap, (until, token))
            self._lock_alarm.at(until)
        if self._journal is not None:
            self._journal.message_changed(self.name, message)

    def _unlock(self, message: BrokeredMessage) -> None:
        token = message.lock_token
        if token is not None:
            self._locks.pop(token, None)
            if self.sessions is not None:
                session = self.sessions.of(message)
                if session is not None:
                    session.locked.discard(token)
        message.lock_token = message.locked_until = None

    def _take_lock(self, lock_token: uuid.UUID) -> BrokeredMessage:
        """The message locked by this token, or MessageLockLost (processing an overdue expiry)."""
        message = self._locks.get(lock_token)
        if message is None:
            raise MessageLockLost(LOCK_LOST)
        now = self._clock()
        session = self.sessions.of(message) if self.sessions is not None else None
        if session is not None and lock_token in session.locked:
            if session.locked_until <= now:
                assert self.sessions is not None
                self.sessions.release(session, lost=True)
                raise SessionLockLost(
                    f"The session lock has expired on session '{session.id}'. Accept a new session."
                )
            return message
        if message.locked_until is not None and message.locked_until <= now:
            self.lock_lost(message)
            self.dispatch()
            raise MessageLockLost(LOCK_LOST)
        return message

    def lock_lost(self, message: BrokeredMessage) -> None:
        """The lock ended without settlement: count the delivery, then DLQ or redeliver."""
        self._unlock(message)
        message.delivery_count += 1
        self._after_failed_delivery(message)

    def _after_failed_delivery(self, message: BrokeredMessage) -> None:
        limit = self.properties.max_delivery_count
        if not self.is_dead_letter_queue and message.delivery_count >= limit:
            self._dead_letter(
                message,
                MAX_DELIVERY_REASON,
                f"Message could not be consumed after {limit} delivery attempts.",
            )
        else:
            self._requeue(message)

    def _requeue(self, message: BrokeredMessage) -> None:
        """An unlocked message goes back: deferred stays aside, expired expires, else ready."""
        if message.state == MessageState.ACTIVE:
            expires_at = message.expires_at
            if (
                expires_at is not None
                and not self.is_dead_letter_queue
                and expires_at <= self._clock()
            ):
                self._expire(message)
                return
            self._make_ready(message)
        if self._journal is not None:
            self._journal.message_changed(self.name, message)

    def _make_ready(self, message: BrokeredMessage) -> None:
        seq = message.sequence_number
        if seq in self._ready:
            return
        self._ready.add(seq)
        if self.sessions is not None:
            self.sessions.message_ready(message)
        else:
            heapq.heappush(self._heap, seq)

    def _unready(self, message: BrokeredMessage) -> None:
        seq = message.sequence_number
        if seq in self._ready:
            self._ready.discard(seq)  # its heap entry is skipped when popped
            if self.sessions is not None:
                self.sessions.message_unready(message)

    def _on_lock_alarm(self) -> None:
        heap = self._lock_heap
        now = self._clock() + TOLERANCE
        while heap and heap[0][0] <= now:
            until, token = heapq.heappop(heap)
            message = self._locks.get(token)
            if message is not None and message.locked_until == until:
                logger.debug("%s: lock on message %s expired", self.name, message.sequence_number)
                self.lock_lost(message)
        if heap:
            self._lock_alarm.at(heap[0][0])
        self.dispatch()

    # --- settlement -------------------------------------------------------------------------

    def complete(self, lock_token: uuid.UUID) -> None:
        message = self._take_lock(lock_token)
        self._unlock(message)
        self._remove(message)

    def abandon(self, lock_token: uuid.UUID) -> None:
        """Unlock with delivery_count + 1: DLQ at the maximum, else redeliver."""
        self.lock_lost(self._take_lock(lock_token))
        self.dispatch()

    def release(self, lock_token: uuid.UUID) -> None:
        """Unlock without counting a delivery (the SDK releases prefetched messages on close)."""
        message = self._take_lock(lock_token)
        self._unlock(message)
        self._requeue(message)
        self.dispatch()

    def defer(self, lock_token: uuid.UUID) -> None:
        """Set aside: delivered again only by :meth:`receive_deferred`."""
        message = self._take_lock(lock_token)
        self._unlock(message)
        message.state = MessageState.DEFERRED
        if self._journal is not None:
            self._journal.message_changed(self.name, message)

    def dead_letter(
        self, lock_token: uuid.UUID, reason: str | None, description: str | None
    ) -> None:
        message = self._take_lock(lock_token)
        self._unlock(message)
        self._dead_letter(message, reason, description)
        self.dispatch()

    def renew_lock(self, lock_token: uuid.UUID) -> float:
        """Extend a lock by the lock duration; returns the new locked_until."""
        message = self._take_lock(lock_token)
        session = self.sessions.of(message) if self.sessions is not None else None
        if session is not None and lock_token in session.locked:
            return session.locked_until  # held by the session lock; renew that instead
        until = self._clock() + self.properties.lock_duration
        message.locked_until = until
        heapq.heappush(self._lock_heap, (until, lock_token))
        self._lock_alarm.at(until)
        return until

    # --- dead-lettering, expiry, removal ----------------------------------------------------

    def _dead_letter(
        self, message: BrokeredMessage, reason: str | None, description: str | None
    ) -> None:
        """Move an unlocked message of this entity to the dead-letter sub-queue."""
        message.dead_letter_reason = reason
        message.dead_letter_description = description
        dlq = self.dead_letter_queue
        if dlq is None:
            # Already in a dead-letter queue: there is no further queue, so it stays here.
            self._requeue(message)
            return
        self._remove(message)
        logger.info("%s: message %s dead-lettered (%s)", self.name, message.sequence_number, reason)
        dlq.accept_dead_letter(message)

    def accept_dead_letter(self, message: BrokeredMessage) -> None:
        """Take a message from the parent entity, keeping its sequence number."""
        self._ensure_alarms()
        seq = message.sequence_number
        if seq <= 0 or seq in self._messages:
            seq = self._last_seq + 1
        if seq > self._last_seq:
            self._last_seq = seq
            if self._journal is not None:
                self._journal.sequence_advanced(self.name, seq)
        message.sequence_number = seq
        message.lock_token = message.locked_until = None
        message.state = MessageState.ACTIVE
        self._insert(message)
        self._make_ready(message)
        if self._journal is not None:
            self._journal.message_added(self.name, message)
        self.dispatch()

    def _expire(self, message: BrokeredMessage) -> None:
        if self.properties.dead_lettering_on_message_expiration:
            self._dead_letter(message, TTL_REASON, TTL_DESCRIPTION)
        else:
            logger.debug("%s: message %s expired", self.name, message.sequence_number)
            self._remove(message)

    def _remove(self, message: BrokeredMessage) -> None:
        self._unready(message)
        seq = message.sequence_number
        if self._messages.pop(seq, None) is None:
            return
        self._size -= message.size
        if self.sessions is not None:
            self.sessions.message_removed(message)
        if self._journal is not None:
            self._journal.message_removed(self.name, seq)

    def _on_expiry_alarm(self) -> None:
        heap = self._expiry_heap
        now = self._clock() + TOLERANCE
        while heap and heap[0][0] <= now:
            when, seq = heapq.heappop(heap)
            message = self._messages.get(seq)
            # Locked messages expire when unlocked; deferred ones when someone asks for them.
            if (
                message is not None
                and message.expires_at == when
                and message.state == MessageState.ACTIVE
                and message.lock_token is None
            ):
                self._expire(message)
        if heap:
            self._expiry_alarm.at(heap[0][0])
        self.dispatch()

    def _on_schedule_alarm(self) -> None:
        heap = self._schedule_heap
        now = self._clock() + TOLERANCE
        while heap and heap[0][0] <= now:
            _, seq = heapq.heappop(heap)
            message = self._messages.get(seq)
            if message is None or message.state != MessageState.SCHEDULED:
                continue  # cancelled
            message.state = MessageState.ACTIVE
            self._watch_expiry(message)
            self._make_ready(message)
            if self._journal is not None:
                self._journal.message_changed(self.name, message)
        if heap:
            self._schedule_alarm.at(heap[0][0])
        self.dispatch()

    def _ensure_alarms(self) -> None:
        self._lock_alarm.ensure()
        self._expiry_alarm.ensure()
        self._schedule_alarm.ensure()

    # --- management -------------------------------------------------------------------------

    def peek(
        self, from_sequence_number: int, count: int, session_id: str | None = None
    ) -> list[BrokeredMessage]:
        """Active, deferred and scheduled messages from a sequence number on; nothing is locked."""
        self._ensure_alarms()
        result: list[BrokeredMessage] = []
        expired: list[BrokeredMessage] = []
        now = self._clock()
        for seq in self._sequence_numbers_from(from_sequence_number):
            if len(result) >= count:
                break
            message = self._messages[seq]
            if session_id is not None and message.session_id != session_id:
                continue
            if (
                message.expires_at is not None
                and message.expires_at <= now
                and message.state == MessageState.ACTIVE
                and message.lock_token is None
                and not self.is_dead_letter_queue
            ):
                expired.append(message)
                continue
            result.append(message)
        for message in expired:
            self._expire(message)
        return result

    def _sequence_numbers_from(self, start: int) -> Iterable[int]:
        if self._in_order:
            return (seq for seq in list(self._messages) if seq >= start)
        return sorted(seq for seq in self._messages if seq >= start)

    def receive_deferred(
        self,
        sequence_numbers: list[int],
        mode: ReceiveMode,
        session_id: str | None = None,
    ) -> list[BrokeredMessage]:
        """Lock (peek-lock) or remove (receive-and-delete) deferred messages by sequence number."""
        self._ensure_alarms()
        found: list[BrokeredMessage] = []
        for seq in sequence_numbers:
            message = self._messages.get(seq)
            if (
                message is None
                or message.state != MessageState.DEFERRED
                or (session_id is not None and message.session_id != session_id)
            ):
                raise MessageNotFound(
                    f"Failed to lock one or more specified messages. The deferred message with "
                    f"sequence number {seq} was not found in '{self.name}'."
                )
            if message.lock_token is not None:
                raise MessageNotFound(
                    f"The deferred message with sequence number {seq} is locked by another "
                    "receiver."
                )
            found.append(message)
        now = self._clock()
        # Deferred messages expire only when asked for, as in Service Bus.
        expired = [
            m
            for m in found
            if m.expires_at is not None and m.expires_at <= now and not self.is_dead_letter_queue
        ]
        if expired:
            for message in expired:
                self._expire(message)
            raise MessageNotFound(
                f"The deferred message with sequence number {expired[0].sequence_number} has "
                "expired."
            )
        session = None
        if self.sessions is not None and session_id is not None:
            session = self.sessions.require_locked(session_id)
        for message in found:
            if mode == ReceiveMode.RECEIVE_AND_DELETE:
                self._remove(message)
            else:
                self._lock(message, session)
        return found

    # --- introspection ----------------------------------------------------------------------

    def message_count(self) -> int:
        """Active, deferred and scheduled messages held (the DLQ is counted on its own)."""
        return len(self._messages)

    def messages(self) -> list[BrokeredMessage]:
        return [self._messages[seq] for seq in sorted(self._messages)]

    def get(self, sequence_number: int) -> BrokeredMessage | None:
        return self._messages.get(sequence_number)

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def last_sequence_number(self) -> int:
        return self._last_seq

    def close(self) -> None:
        """Cancel this entity's timers (and its session timers and waiters)."""
        self._lock_alarm.cancel()
        self._expiry_alarm.cancel()
        self._schedule_alarm.cancel()
        if self.sessions is not None:
            self.sessions.close()

    # --- sessions (requires_session entities) -----------------------------------------------

    async def accept_session(
        self,
        consumer: Consumer,
        session_id: str | None,
        timeout: float,  # noqa: ASYNC109 - the wire layer's attach timeout, not a cancel scope
    ) -> str:
        """Lock a named session, or the next one with available messages (None), for a consumer."""
        self._ensure_alarms()
        if self.sessions is None:
            raise NotAllowed(
                f"The entity '{self.name}' does not require sessions; open a receiver without "
                "a session id."
            )
        return await self.sessions.accept(consumer, session_id, timeout)

    def session_locked_until(self, session_id: str) -> float:
        return self._session_table().require_locked(session_id).locked_until

    def renew_session_lock(self, session_id: str) -> float:
        return self._session_table().renew(session_id)

    def get_session_state(self, session_id: str) -> bytes | None:
        return self._session_table().require_locked(session_id).state

    def set_session_state(self, session_id: str, state: bytes | None) -> None:
        session = self._session_table().require_locked(session_id)
        session.state = state
        if self._journal is not None:
            self._journal.session_state_changed(self.name, session_id, state)

    def list_sessions(self, skip: int, top: int) -> list[str]:
        """Sessions that hold messages or state, in the order they appeared."""
        if self.sessions is None:
            return []
        return self.sessions.listed(skip, top)

    def _session_table(self) -> SessionTable:
        if self.sessions is None:
            raise NotAllowed(f"The entity '{self.name}' does not require sessions.")
        return self.sessions

    # --- persistence ------------------------------------------------------------------------

    def restore(self, snapshot: EntitySnapshot) -> None:
        """Load persisted messages; those that were locked come back as if their lock was lost."""
        self._last_seq = max(self._last_seq, snapshot.last_sequence_number)
        relocked: list[BrokeredMessage] = []
        for message in sorted(snapshot.messages, key=lambda m: m.sequence_number):
            message.lock_token = message.locked_until = None
            self._last_seq = max(self._last_seq, message.sequence_number)
            if self.sessions is not None and message.session_id is None:
                self._restore_without_session(message)  # kept before sessions were required
                continue
            self._insert(message)
            if message.sequence_number in snapshot.locked:
                message.delivery_count += 1
                relocked.append(message)
            elif message.state == MessageState.SCHEDULED:
                when = message.enqueued_time
                heapq.heappush(self._schedule_heap, (when, message.sequence_number))
                self._schedule_alarm.at(when)
            elif message.state == MessageState.ACTIVE:
                self._watch_expiry(message)
                self._make_ready(message)
        if self.sessions is not None:
            for session_id, state in snapshot.session_states.items():
                self.sessions.restore_state(session_id, state)
        for message in relocked:
            if message.state == MessageState.ACTIVE:
                self._watch_expiry(message)
            if self._journal is not None:
                self._journal.message_changed(self.name, message)
            self._after_failed_delivery(message)

    def _restore_without_session(self, message: BrokeredMessage) -> None:
        if self._journal is not None:
            self._journal.message_removed(self.name, message.sequence_number)
        message.dead_letter_reason = SESSION_ID_NULL_REASON
        message.dead_letter_description = (
            f"The entity '{self.name}' now requires sessions and the message has none."
        )
        if self.dead_letter_queue is not None:
            self.dead_letter_queue.accept_dead_letter(message)
