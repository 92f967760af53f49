"""Sessions of a session-enabled queue or subscription: exclusive locks and FIFO per session id.

A :class:`SessionTable` belongs to one :class:`~docbus.local.emulator.entity.MessageEntity` whose
``requires_session`` is set. It keeps, per session id, the heap of that session's available
messages, the consumer holding the session lock and its deadline, and the session state; it answers
named and next-available accepts (waiting for a session to become available, up to a timeout),
dispatches each session's messages only to its holder, in sequence order, and ends session locks
(on expiry, which tells the consumer ``session_lost``, or when the consumer detaches). A session
message's lock is the session's lock: when the session lock ends, the unsettled messages count a
failed delivery, as any lost lock does. The entity owns the messages and the message locks; this
table only routes them.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .alarms import TOLERANCE, Alarm
from .errors import NotAllowed, OperationTimeout, SessionCannotBeLocked, SessionLockLost
from .message import BrokeredMessage

if TYPE_CHECKING:
    import uuid

    from .entity import Consumer, MessageEntity

logger = logging.getLogger(__name__)

__all__ = ["MessageSession", "SessionTable"]


class MessageSession:
    """One session id of one entity (a Service Bus message session, not an AMQP session)."""

    __slots__ = ("alarm", "held", "id", "locked", "locked_until", "owner", "ready", "ready_count",
                 "state")  # fmt: skip

    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.ready: list[int] = []  # heap of available sequence numbers (lazily deleted)
        self.ready_count = 0  # how many of them are really available
        self.held = 0  # messages of this session the entity holds, in any state
        self.owner: Consumer | None = None
        self.locked_until = 0.0
        self.alarm: Alarm | None = None
        self.state: bytes | None = None
        self.locked: set[uuid.UUID] = set()  # message lock tokens tied to the session lock

    def __repr__(self) -> str:
        return (
            f"<MessageSession {self.id!r} held={self.held} ready={self.ready_count} "
            f"owner={self.owner}>"
        )


class SessionTable:
    """The sessions of one session-enabled entity."""

    def __init__(self, entity: MessageEntity, clock: Callable[[], float]) -> None:
        self._entity = entity
        self._clock = clock
        self._sessions: dict[str, MessageSession] = {}
        self._free: dict[str, None] = {}  # unlocked sessions with available messages, oldest first
        self._dirty: dict[str, None] = {}  # locked sessions with something to dispatch
        self._waiters: deque[tuple[asyncio.Future[str], Consumer]] = deque()

    def of(self, message: BrokeredMessage) -> MessageSession | None:
        return self._sessions.get(message.session_id) if message.session_id is not None else None

    def get(self, session_id: str) -> MessageSession | None:
        return self._sessions.get(session_id)

    def _get_or_create(self, session_id: str) -> MessageSession:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = MessageSession(session_id)
        return session

    # --- message bookkeeping (called by the entity) -----------------------------------------

    def message_added(self, message: BrokeredMessage) -> None:
        assert message.session_id is not None
        self._get_or_create(message.session_id).held += 1

    def message_removed(self, message: BrokeredMessage) -> None:
        session = self.of(message)
        if session is not None:
            session.held -= 1
            self._changed(session)

    def message_ready(self, message: BrokeredMessage) -> None:
        assert message.session_id is not None
        session = self._get_or_create(message.session_id)
        heapq.heappush(session.ready, message.sequence_number)
        session.ready_count += 1
        self._changed(session)

    def message_unready(self, message: BrokeredMessage) -> None:
        session = self.of(message)
        if session is not None:
            session.ready_count -= 1
            self._changed(session)

    def _changed(self, session: MessageSession) -> None:
        """Keep the free index, the waiters and the dispatch list true to one session."""
        if session.owner is not None:
            if session.ready_count > 0:
                self._dirty[session.id] = None
            return
        if session.ready_count > 0:
            if not self._hand_to_waiter(session):
                self._free[session.id] = None
            return
        self._free.pop(session.id, None)
        if session.held == 0 and session.state is None and not session.locked:
            del self._sessions[session.id]  # forget empty sessions, or ids pile up forever

    # --- accepting and releasing ------------------------------------------------------------

    async def accept(
        self,
        consumer: Consumer,
        session_id: str | None,
        timeout: float,  # noqa: ASYNC109 - a wait for a session, with its own error
    ) -> str:
        if session_id is not None:
            session = self._get_or_create(session_id)
            if session.owner is not None and session.owner is not consumer:
                raise SessionCannotBeLocked(
                    f"The requested session '{session_id}' cannot be accepted. It may be locked "
                    "by another receiver."
                )
            if session.owner is None:
                self._lock(session, consumer)
            self._entity.dispatch()
            return session_id

        free = self._next_free()
        if free is not None:
            self._lock(free, consumer)
            self._entity.dispatch()
            return free.id
        if timeout <= 0:
            raise OperationTimeout(self._timeout_text(timeout))

        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        waiter = (future, consumer)
        self._waiters.append(waiter)

        def expire() -> None:
            if not future.done():
                future.set_exception(OperationTimeout(self._timeout_text(timeout)))

        timer = loop.call_later(timeout, expire)
        try:
            return await future
        except asyncio.CancelledError:
            # The session may have been locked for us just before the cancellation landed.
            if future.done() and not future.cancelled() and future.exception() is None:
                locked = self._sessions.get(future.result())
                if locked is not None and locked.owner is consumer:
                    self.release(locked, lost=False)
            raise
        finally:
            timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    @staticmethod
    def _timeout_text(timeout: float) -> str:
        return (
            f"No unlocked session with available messages became available within "
            f"{timeout:g} seconds."
        )

    def _next_free(self) -> MessageSession | None:
        free = self._free
        while free:
            session_id = next(iter(free))
            session = self._sessions.get(session_id)
            if session is not None and session.owner is None and session.ready_count > 0:
                return session
            del free[session_id]
        return None

    def _hand_to_waiter(self, session: MessageSession) -> bool:
        while self._waiters:
            future, consumer = self._waiters.popleft()
            if future.done():
                continue
            self._lock(session, consumer)
            future.set_result(session.id)
            return True
        return False

    def _lock(self, session: MessageSession, consumer: Consumer) -> None:
        session.owner = consumer
        session.locked_until = self._clock() + self._entity.properties.lock_duration
        if session.alarm is None:
            session.alarm = Alarm(self._clock, lambda: self._on_alarm(session))
        session.alarm.at(session.locked_until)
        consumer.session_id = session.id
        self._free.pop(session.id, None)
        self._entity.register_consumer(consumer)
        if session.ready_count > 0:
            self._dirty[session.id] = None
        logger.debug("%s: session %r locked", self._entity.name, session.id)

    def _on_alarm(self, session: MessageSession) -> None:
        if session.owner is None:
            return
        if session.locked_until > self._clock() + TOLERANCE:
            assert session.alarm is not None
            session.alarm.at(session.locked_until)  # renewed since the timer was set
            return
        self.release(session, lost=True)

    def release(self, session: MessageSession, *, lost: bool) -> None:
        """End a session lock; its unsettled messages count a failed delivery."""
        owner = session.owner
        if owner is None:
            return
        session.owner = None
        if session.alarm is not None:
            session.alarm.cancel()
        self._dirty.pop(session.id, None)
        self._entity.unregister_consumer(owner)
        tokens = list(session.locked)
        session.locked.clear()
        for token in tokens:
            message = self._entity.message_for_lock(token)
            if message is not None:
                self._entity.lock_lost(message)
        self._changed(session)
        logger.debug(
            "%s: session %r %s", self._entity.name, session.id, "lock lost" if lost else "released"
        )
        if lost:
            try:
                owner.session_lost()
            except Exception:
                logger.exception("%s: session_lost callback failed", self._entity.name)
        self._entity.dispatch()

    def require_locked(self, session_id: str) -> MessageSession:
        """The session, if its lock is held and not expired; else SessionLockLost."""
        session = self._sessions.get(session_id)
        if session is None or session.owner is None:
            raise SessionLockLost(
                f"The session lock for session '{session_id}' is not held: it expired or the "
                "session was closed. Accept the session again."
            )
        if session.locked_until <= self._clock():
            self.release(session, lost=True)
            raise SessionLockLost(
                f"The session lock has expired on session '{session_id}'. Accept the session again."
            )
        return session

    def renew(self, session_id: str) -> float:
        session = self.require_locked(session_id)
        session.locked_until = self._clock() + self._entity.properties.lock_duration
        for token in session.locked:
            message = self._entity.message_for_lock(token)
            if message is not None:
                message.locked_until = session.locked_until
        return session.locked_until

    # --- consumers --------------------------------------------------------------------------

    def check_consumer(self, consumer: Consumer) -> None:
        """A consumer added directly must come with a session id: lock it as a named accept."""
        session_id = consumer.session_id
        if session_id is None:
            raise NotAllowed(
                f"The entity '{self._entity.name}' requires sessions; open a session receiver "
                "(a session id or the next available session)."
            )
        session = self._get_or_create(session_id)
        if session.owner is None:
            self._lock(session, consumer)
        elif session.owner is not consumer:
            raise SessionCannotBeLocked(
                f"The requested session '{session_id}' cannot be accepted. It may be locked by "
                "another receiver."
            )

    def consumer_removed(self, consumer: Consumer) -> None:
        for future, waiting in self._waiters:
            if waiting is consumer and not future.done():
                future.set_exception(OperationTimeout("The receiver closed while waiting."))
        if consumer.session_id is not None:
            session = self._sessions.get(consumer.session_id)
            if session is not None and session.owner is consumer:
                self.release(session, lost=False)

    def credit_available(self, consumer: Consumer) -> None:
        if consumer.session_id is None:
            return
        session = self._sessions.get(consumer.session_id)
        if session is not None and session.owner is consumer and session.ready_count > 0:
            self._dirty[session.id] = None

    def dispatch(self) -> None:
        entity = self._entity
        dirty = self._dirty
        while dirty:
            session_id = next(iter(dirty))
            del dirty[session_id]
            session = self._sessions.get(session_id)
            if session is None or session.owner is None:
                continue
            consumer = session.owner
            while session.owner is consumer and consumer.credit > 0:
                message = entity.pop_ready(session.ready, session)
                if message is None or not entity.deliver(consumer, message):
                    break

    # --- state, listing, lifecycle ----------------------------------------------------------

    def listed(self, skip: int, top: int) -> list[str]:
        ids = [s.id for s in self._sessions.values() if s.held > 0 or s.state is not None]
        return ids[max(skip, 0) : max(skip, 0) + max(top, 0)]

    def restore_state(self, session_id: str, state: bytes | None) -> None:
        if state is not None:
            self._get_or_create(session_id).state = state

    def close(self) -> None:
        for session in self._sessions.values():
            if session.alarm is not None:
                session.alarm.cancel()
        while self._waiters:
            future, _ = self._waiters.popleft()
            if not future.done():
                future.set_exception(OperationTimeout("The broker is shutting down."))
