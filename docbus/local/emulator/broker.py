"""The emulator's broker: the namespace of queues, topics and subscriptions, with no AMQP in it.

:class:`Broker` builds the entities of a :class:`~docbus.local.emulator.config.NamespaceConfig` and
resolves the addresses the SDK attaches to (``q``, ``q/$DeadLetterQueue``, ``t/Subscriptions/s``,
``t/Subscriptions/s/$DeadLetterQueue``; case-insensitive). :class:`Queue` and :class:`Subscription`
are :class:`~docbus.local.emulator.entity.MessageEntity` objects (receive-side semantics, sessions
in :mod:`docbus.local.emulator.sessions`); a queue adds duplicate detection on send. :class:`Topic`
holds no messages of its own except scheduled ones: it de-duplicates, assigns the sequence number
and fans a copy out to every subscription whose rules (:mod:`docbus.local.emulator.rules`) match.
The AMQP layer (:mod:`docbus.local.emulator.connection`) calls this API; an optional store
(:mod:`docbus.local.emulator.persistence`) keeps the state across restarts. This module re-exports
the names the wire layer needs, so ``from docbus.local.emulator.broker import ...`` is the one
import.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .alarms import TOLERANCE, Alarm
from .config import EntityProperties, NamespaceConfig, RuleConfig
from .entity import SESSION_ID_NULL_REASON, Consumer, MessageEntity
from .errors import EntityNotFound, MessageNotFound, NotAllowed, QuotaExceeded
from .message import BrokeredMessage, MessageState, ReceiveMode
from .rules import CorrelationFilter, Rule

if TYPE_CHECKING:
    from .persistence import EntitySnapshot, Journal, SqliteStore

logger = logging.getLogger(__name__)

__all__ = [
    "Broker",
    "BrokeredMessage",
    "Consumer",
    "CorrelationFilter",
    "EntityProperties",
    "MessageEntity",
    "MessageState",
    "Queue",
    "ReceiveMode",
    "Rule",
    "Subscription",
    "Topic",
]

DEAD_LETTER_SUFFIX = "$DeadLetterQueue"
TRANSFER_SUFFIX = "$Transfer"


class DuplicateDetector:
    """Remembers message ids for a time window; a repeated id inside it is a duplicate."""

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self._window = window
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # message_id -> (first seen, sequence number)
        self._order: deque[tuple[float, str]] = deque()

    def check(self, message_id: str) -> int | None:
        """The sequence number of the earlier message with this id, if still remembered."""
        now = self._clock()
        horizon = now - self._window
        order, seen = self._order, self._seen
        while order and order[0][0] <= horizon:
            when, old_id = order.popleft()
            entry = seen.get(old_id)
            if entry is not None and entry[0] == when:
                del seen[old_id]
        entry = seen.get(message_id)
        return entry[1] if entry is not None else None

    def record(self, message_id: str, sequence_number: int) -> None:
        now = self._clock()
        self._seen[message_id] = (now, sequence_number)
        self._order.append((now, message_id))


def _dead_letter_queue(
    name: str, properties: EntityProperties, clock: Callable[[], float], journal: Journal | None
) -> MessageEntity:
    # The sub-queue keeps the parent's lock settings but never sessions, expiry or size limits.
    props = EntityProperties(
        lock_duration=properties.lock_duration,
        max_delivery_count=properties.max_delivery_count,
        max_message_size=properties.max_message_size,
        max_size_bytes=properties.max_size_bytes,
    )
    return MessageEntity(f"{name}/{DEAD_LETTER_SUFFIX}", props, clock=clock, journal=journal)


class Queue(MessageEntity):
    """A queue: a message entity with duplicate detection on send."""

    def __init__(
        self,
        name: str,
        properties: EntityProperties | None = None,
        *,
        clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        properties = properties or EntityProperties()
        dlq = _dead_letter_queue(name, properties, clock, journal)
        super().__init__(name, properties, dead_letter_queue=dlq, clock=clock, journal=journal)
        self.transfer_dead_letter_queue = MessageEntity(
            f"{name}/{TRANSFER_SUFFIX}/{DEAD_LETTER_SUFFIX}", clock=clock
        )  # always empty: the emulator does not forward
        self._duplicates = (
            DuplicateDetector(properties.duplicate_detection_window, clock)
            if properties.requires_duplicate_detection
            else None
        )

    def enqueue(self, message: BrokeredMessage) -> int:
        """As :meth:`MessageEntity.enqueue`; a duplicate message_id is accepted and dropped."""
        duplicates = self._duplicates
        if duplicates is not None and message.message_id is not None:
            earlier = duplicates.check(message.message_id)
            if earlier is not None:
                logger.debug("%s: duplicate message id %r dropped", self.name, message.message_id)
                return earlier
            seq = super().enqueue(message)
            duplicates.record(message.message_id, seq)
            return seq
        return super().enqueue(message)


class Subscription(MessageEntity):
    """A topic subscription: a message entity fed by its topic through its rules."""

    def __init__(
        self,
        topic: Topic,
        name: str,
        properties: EntityProperties | None = None,
        rules: Iterable[Rule] = (),
        *,
        clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        properties = properties or EntityProperties()
        path = f"{topic.name}/Subscriptions/{name}"
        dlq = _dead_letter_queue(path, properties, clock, journal)
        super().__init__(path, properties, dead_letter_queue=dlq, clock=clock, journal=journal)
        self.topic = topic
        self.subscription_name = name
        self.rules: list[Rule] = list(rules)
        self.transfer_dead_letter_queue = MessageEntity(
            f"{path}/{TRANSFER_SUFFIX}/{DEAD_LETTER_SUFFIX}", clock=clock
        )

    def matches(self, message: BrokeredMessage) -> bool:
        """No rules: everything; else any rule matching."""
        return not self.rules or any(rule.matches(message) for rule in self.rules)

    def accept_from_topic(self, message: BrokeredMessage, seq: int, ttl_cap: float | None) -> None:
        """Take a fanned-out copy under the topic's sequence number."""
        self._ensure_alarms()
        if seq > self._last_seq:
            self._last_seq = seq
        if self.sessions is not None and message.session_id is None:
            # The topic accepted it for the other subscriptions, so Service Bus dead-letters
            # it here instead of rejecting the send.
            assert self.dead_letter_queue is not None
            message.sequence_number = seq
            message.enqueued_time = self._clock()
            message.dead_letter_reason = SESSION_ID_NULL_REASON
            message.dead_letter_description = (
                f"The subscription '{self.name}' requires sessions and the message has none."
            )
            self.dead_letter_queue.accept_dead_letter(message)
            return
        self._accept(message, seq, ttl_cap)
        self.dispatch()


class Topic:
    """A topic: de-duplicates, sequences, holds scheduled messages and fans out to subscriptions."""

    def __init__(
        self,
        name: str,
        properties: EntityProperties | None = None,
        *,
        clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        self.name = name
        self.properties = properties or EntityProperties()
        self.subscriptions: dict[str, Subscription] = {}  # lower-cased names
        self._clock = clock
        self._journal = journal
        self._last_seq = 0
        self._scheduled: dict[int, BrokeredMessage] = {}
        self._schedule_heap: list[tuple[float, int]] = []
        self._schedule_alarm = Alarm(clock, self._on_schedule_alarm)
        self._duplicates = (
            DuplicateDetector(self.properties.duplicate_detection_window, clock)
            if self.properties.requires_duplicate_detection
            else None
        )

    def __repr__(self) -> str:
        return f"<Topic {self.name!r} subscriptions={list(self.subscriptions)}>"

    def enqueue(self, message: BrokeredMessage) -> int:
        """Accept a sent message; returns the topic's sequence number for it.

        A message_id seen inside the duplicate-detection window is accepted and dropped, as
        Service Bus does. A message no subscription matches is accepted and dropped too.
        """
        self._schedule_alarm.ensure()
        duplicates = self._duplicates
        if duplicates is not None and message.message_id is not None:
            earlier = duplicates.check(message.message_id)
            if earlier is not None:
                logger.debug("%s: duplicate message id %r dropped", self.name, message.message_id)
                return earlier
        self._check_quota(message.size)
        self._last_seq += 1
        seq = self._last_seq
        if self._journal is not None:
            self._journal.sequence_advanced(self.name, seq)
        when = message.scheduled_enqueue_time
        if when is not None and when > self._clock():
            message.sequence_number = seq
            message.state = MessageState.SCHEDULED
            message.enqueued_time = when
            self._scheduled[seq] = message
            heapq.heappush(self._schedule_heap, (when, seq))
            self._schedule_alarm.at(when)
            if self._journal is not None:
                self._journal.message_added(self.name, message)
        else:
            self._fan_out(message, seq)
        if duplicates is not None and message.message_id is not None:
            duplicates.record(message.message_id, seq)
        return seq

    def schedule(self, messages: list[BrokeredMessage]) -> list[int]:
        """Enqueue messages whose ``scheduled_enqueue_time`` is set; returns sequence numbers."""
        self._check_quota(sum(m.size for m in messages))
        return [self.enqueue(message) for message in messages]

    def cancel_scheduled(self, sequence_numbers: list[int]) -> None:
        for seq in sequence_numbers:
            if seq not in self._scheduled:
                raise MessageNotFound(
                    f"The scheduled message with sequence number {seq} was not found in "
                    f"'{self.name}'."
                )
        for seq in sequence_numbers:
            del self._scheduled[seq]
            if self._journal is not None:
                self._journal.message_removed(self.name, seq)

    def scheduled_messages(self) -> list[BrokeredMessage]:
        return [self._scheduled[seq] for seq in sorted(self._scheduled)]

    def size_bytes(self) -> int:
        held = sum(sub.size_bytes for sub in self.subscriptions.values())
        return held + sum(m.size for m in self._scheduled.values())

    def _check_quota(self, size: int) -> None:
        used = self.size_bytes()
        if used + size > self.properties.max_size_bytes:
            raise QuotaExceeded(
                f"The maximum entity size has been reached or exceeded for Topic: '{self.name}'. "
                f"Size of entity in bytes: {used}, max entity size in bytes: "
                f"{self.properties.max_size_bytes}."
            )

    def _fan_out(self, message: BrokeredMessage, seq: int) -> None:
        delivered = 0
        for subscription in self.subscriptions.values():
            if subscription.matches(message):
                subscription.accept_from_topic(
                    message.copy(), seq, self.properties.default_message_ttl
                )
                delivered += 1
        if not delivered:
            logger.debug("%s: message %s matched no subscription", self.name, seq)

    def _on_schedule_alarm(self) -> None:
        heap = self._schedule_heap
        now = self._clock() + TOLERANCE
        while heap and heap[0][0] <= now:
            _, seq = heapq.heappop(heap)
            message = self._scheduled.pop(seq, None)
            if message is None:
                continue  # cancelled
            if self._journal is not None:
                self._journal.message_removed(self.name, seq)
            self._fan_out(message, seq)
        if heap:
            self._schedule_alarm.at(heap[0][0])

    def restore(self, snapshot: EntitySnapshot) -> None:
        """Load the persisted sequence counter and scheduled messages."""
        self._last_seq = max(self._last_seq, snapshot.last_sequence_number)
        for message in snapshot.messages:
            self._last_seq = max(self._last_seq, message.sequence_number)
            self._scheduled[message.sequence_number] = message
            heapq.heappush(self._schedule_heap, (message.enqueued_time, message.sequence_number))
            self._schedule_alarm.at(message.enqueued_time)

    def close(self) -> None:
        self._schedule_alarm.cancel()
        for subscription in self.subscriptions.values():
            subscription.close()
            if subscription.dead_letter_queue is not None:
                subscription.dead_letter_queue.close()


class Broker:
    """All entities of one namespace, addressed by path."""

    def __init__(
        self,
        config: NamespaceConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        store: SqliteStore | None = None,
    ) -> None:
        """Build the configured entities; with a store, load what it kept (create inside the loop
        so that restored timers arm at once)."""
        self._clock = clock
        self._store = store
        self.endpoint = "sb://localhost"  # used in not-found messages; the server may set it
        self.queues: dict[str, Queue] = {}
        self.topics: dict[str, Topic] = {}
        config = config or NamespaceConfig()
        self.namespace = config.name
        for queue in config.queues:
            self.add_queue(queue.name, queue.properties)
        for topic in config.topics:
            self.add_topic(topic.name, topic.properties)
            for sub in topic.subscriptions:
                self.add_subscription(topic.name, sub.name, sub.properties, sub.rules)

    # --- building ---------------------------------------------------------------------------

    def add_queue(self, name: str, properties: EntityProperties | None = None) -> Queue:
        self._check_new_name(name)
        queue = Queue(name, properties, clock=self._clock, journal=self._store)
        self.queues[name.lower()] = queue
        if self._store is not None:
            assert queue.dead_letter_queue is not None
            queue.dead_letter_queue.restore(self._store.load(queue.dead_letter_queue.name))
            queue.restore(self._store.load(queue.name))
        return queue

    def add_topic(self, name: str, properties: EntityProperties | None = None) -> Topic:
        self._check_new_name(name)
        topic = Topic(name, properties, clock=self._clock, journal=self._store)
        self.topics[name.lower()] = topic
        if self._store is not None:
            topic.restore(self._store.load(topic.name))
        return topic

    def add_subscription(
        self,
        topic: str,
        name: str,
        properties: EntityProperties | None = None,
        rules: Iterable[Rule | RuleConfig] = (),
    ) -> Subscription:
        parent = self.topics.get(topic.lower())
        if parent is None:
            raise ValueError(f"topic {topic!r} does not exist")
        if name.lower() in parent.subscriptions:
            raise ValueError(f"subscription {name!r} already exists in topic {topic!r}")
        compiled = [r if isinstance(r, Rule) else Rule.from_config(r) for r in rules]
        subscription = Subscription(
            parent, name, properties, compiled, clock=self._clock, journal=self._store
        )
        parent.subscriptions[name.lower()] = subscription
        if self._store is not None:
            assert subscription.dead_letter_queue is not None
            dlq = subscription.dead_letter_queue
            dlq.restore(self._store.load(dlq.name))
            subscription.restore(self._store.load(subscription.name))
        return subscription

    def _check_new_name(self, name: str) -> None:
        if not name or "$" in name:
            raise ValueError(f"{name!r} is not a valid entity name")
        if name.lower() in self.queues or name.lower() in self.topics:
            raise ValueError(f"an entity named {name!r} already exists")

    # --- addressing -------------------------------------------------------------------------

    def resolve_target(self, path: str) -> Queue | Topic:
        """The queue or topic a sender attaches to."""
        clean = _clean_path(path)
        key = clean.lower()
        entity: Queue | Topic | None = self.queues.get(key) or self.topics.get(key)
        if entity is not None:
            return entity
        parts = clean.split("/")
        if parts[-1].lower() == DEAD_LETTER_SUFFIX.lower() or (
            len(parts) == 3 and parts[1].lower() == "subscriptions"
        ):
            self.resolve_source(clean)  # not-found for unknown paths, before the real reason
            raise NotAllowed(
                f"Cannot send to '{clean}': messages are sent to queues and topics only."
            )
        raise self._not_found(clean)

    def resolve_source(self, path: str) -> MessageEntity:
        """The queue, subscription or dead-letter sub-queue a receiver attaches to."""
        clean = _clean_path(path)
        parts = clean.split("/")
        sub_queue: str | None = None
        if len(parts) >= 2 and parts[-1].lower() == DEAD_LETTER_SUFFIX.lower():
            parts.pop()
            sub_queue = "dead-letter"
            if parts and parts[-1].lower() == TRANSFER_SUFFIX.lower():
                parts.pop()
                sub_queue = "transfer"
        entity: Queue | Subscription | None = None
        if len(parts) == 1:
            entity = self.queues.get(parts[0].lower())
            if entity is None and parts[0].lower() in self.topics:
                raise NotAllowed(
                    f"Cannot receive from topic '{parts[0]}': receive from one of its "
                    "subscriptions, '<topic>/Subscriptions/<name>'."
                )
        elif len(parts) == 3 and parts[1].lower() == "subscriptions":
            topic = self.topics.get(parts[0].lower())
            if topic is not None:
                entity = topic.subscriptions.get(parts[2].lower())
        if entity is None:
            raise self._not_found(clean)
        if sub_queue == "dead-letter":
            assert entity.dead_letter_queue is not None
            return entity.dead_letter_queue
        if sub_queue == "transfer":
            return entity.transfer_dead_letter_queue
        return entity

    def _not_found(self, path: str) -> EntityNotFound:
        return EntityNotFound(f"The messaging entity '{self.endpoint}/{path}' could not be found.")

    # --- lifecycle --------------------------------------------------------------------------

    def entities(self) -> list[MessageEntity]:
        """Every message entity (queues, subscriptions and their dead-letter queues)."""
        found: list[MessageEntity] = []
        for queue in self.queues.values():
            found.append(queue)
            if queue.dead_letter_queue is not None:
                found.append(queue.dead_letter_queue)
        for topic in self.topics.values():
            for sub in topic.subscriptions.values():
                found.append(sub)
                if sub.dead_letter_queue is not None:
                    found.append(sub.dead_letter_queue)
        return found

    def flush(self) -> None:
        """Write pending changes to the store now (no-op without a store)."""
        if self._store is not None:
            self._store.flush()

    def close(self) -> None:
        """Cancel all timers; flush and close the store, if any."""
        for entity in self.entities():
            entity.close()
        for topic in self.topics.values():
            topic.close()
        if self._store is not None:
            self._store.close()


def _clean_path(path: str) -> str:
    """``amqps://host:port/q/`` → ``q``; management suffixes are the caller's business."""
    if "://" in path:
        path = path.split("://", 1)[1]
        path = path.split("/", 1)[1] if "/" in path else ""
    return path.strip("/")
