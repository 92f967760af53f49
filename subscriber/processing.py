"""Processing: one delivery of one message through one handler, up to its settlement.

:class:`Processor` reads the envelope, resolves a claim-check, builds the handler's
:class:`~handlers.context.Context`, runs the handler, writes the result durably and only then
completes the message. A failure becomes a :class:`~subscriber.settlement.Decision`
(:func:`~subscriber.settlement.decide`, given the facts gathered here: whether the handler keeps
an order, whether another delivery stored a result, whether the dead letter could be recorded),
which is carried out here, never overruled: hold-then-abandon for retries, a Mongo
``dead_letters`` record before every broker dead-letter, a ``parked`` record before every
deferral. What happened becomes a :class:`DeliveryOutcome`. Neighbours:
:mod:`subscriber.worker` receives and schedules, :mod:`subscriber.settlement` decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from azure.servicebus import ServiceBusMessageState, ServiceBusReceivedMessage

from docbus.backoff import BackoffPolicy
from docbus.envelope import Envelope, InvalidEnvelope
from docbus.records import DeadLetterRecord
from docbus.servicebus import MessagingError
from docbus.store import Store, StoreError
from handlers import Context
from handlers.runtime import (
    HandlerOutcome,
    HandlerTimeout,
    RegisteredHandler,
    declared_output,
    delivery_of,
    open_context,
    resolve_document,
    serialize_output,
)
from subscriber.parking import ParkedMessage, mark_deferred, park
from subscriber.received import dead_letter_record, read_envelope, record_dead_letter, storable_text
from subscriber.receiver import Receiver
from subscriber.settlement import COMPLETE, Action, Decision, decide, describe

logger = logging.getLogger(__name__)


@dataclass
class DeliveryOutcome:
    """What happened to one delivery, for the worker's report and log line."""

    handler: str
    action: Action
    attempt: int
    seconds: float
    reason: str = ""
    batch_id: str | None = None
    doc_id: str | None = None


class Processor:
    """Runs handlers on messages and settles them; one per worker, shared by its receivers."""

    def __init__(
        self,
        store: Store,
        *,
        backoff: BackoffPolicy,
        max_attempts: Callable[[RegisteredHandler], int],
        llm: Any = None,
        stopping: asyncio.Event | None = None,
        rng: random.Random | None = None,
        handler_timeout: float | None = None,
    ) -> None:
        self.store = store
        self.handler_timeout = handler_timeout
        """Seconds an attempt may take when its handler sets no ``timeout``; None: no limit."""
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.llm = llm
        self.stopping = stopping or asyncio.Event()
        self.rng = rng or random.Random()
        self._stepping: set[str] = set()
        """Handlers whose deliveries read their checkpoints: worth reading ahead for."""
        self._running: Counter[tuple[str, str]] = Counter()
        """Deliveries in :meth:`process` by (document, handler)."""

    def read_ahead(
        self, registered: RegisteredHandler, message: ServiceBusReceivedMessage
    ) -> asyncio.Task[dict[str, Any]] | None:
        """Start reading the checkpoints ``message``'s handler run will look up first, if its
        handler is one that uses steps; None otherwise (or if the body is no envelope: the
        delivery will say why). Pass the task to :meth:`process`; whoever started it settles it
        afterwards with :func:`cancel_unawaited` (the handler may never have asked)."""
        spec = registered.spec
        if spec.name not in self._stepping:
            return None
        try:
            envelope = read_envelope(message)
        except Exception:
            return None
        if self._running[(envelope.doc_id, spec.name)]:
            return None  # another delivery of it may store checkpoints before this one starts
        return asyncio.create_task(
            self.store.checkpoints_of(envelope.doc_id, spec.name, spec.version)
        )

    async def process(
        self,
        registered: RegisteredHandler,
        receiver: Receiver,
        message: ServiceBusReceivedMessage,
        *,
        handler_returned: Callable[[], Awaitable[None]] | None = None,
        checkpoints: asyncio.Task[dict[str, Any]] | None = None,
    ) -> DeliveryOutcome:
        """Run the handler on ``message`` and settle it.

        ``handler_returned`` is awaited (at most once) when the handler has returned its
        output, or failed in a way that parks the message: the worker hands the handler's slot
        on to the next message there. What is left — acknowledging its audit rows and
        checkpoints, storing the result and completing the message, or parking it — is
        bookkeeping that needs no handler slot (a failure in it is settled as any other).
        ``checkpoints`` is the read :meth:`read_ahead` started for this message.
        """
        started = time.monotonic()
        hand_on = _once(handler_returned)
        attempt = (message.delivery_count or 0) + 1
        envelope: Envelope | None = None
        ctx: Context | None = None
        running: tuple[str, str] | None = None
        try:
            envelope = read_envelope(message)
            running = (envelope.doc_id, registered.spec.name)
            self._running[running] += 1
            if checkpoints is not None and self._running[running] > 1:
                checkpoints = None  # read before a delivery of the same document began: stale
            if attempt > 1 and await self._done_before(registered, envelope):
                raise _AlreadyDone
            document = await resolve_document(envelope, self.store)
            ctx = open_context(
                envelope,
                registered.spec,
                delivery_count=attempt,
                store=self.store,
                write_behind=True,
                checkpoints_read=checkpoints,
            )
            if self.llm is not None:
                ctx.llm = self.llm.bind(ctx)
            try:
                returned = await self._call(registered, document, ctx)
                output = serialize_output(returned, declared_output(registered.fn))
            finally:
                if delivery_of(ctx).checkpoint_cache is not None:
                    self._stepping.add(registered.spec.name)
            await hand_on()
            # Audit rows and checkpoints the handler did not wait for: stored before its result.
            await delivery_of(ctx).writes.flush()
            await self.store.write_result(
                doc_id=envelope.doc_id,
                handler=registered.spec.name,
                handler_version=registered.spec.version,
                batch_id=envelope.batch_id,
                message_id=envelope.message_id,
                output=output,
                generation=envelope.generation,
                delivery_count=attempt,
                run_id=envelope.run,
                issued_at=envelope.issued_at,
            )
            decision: Decision = COMPLETE
            error: BaseException | None = None
        except _AlreadyDone:
            decision, error = COMPLETE, None
        except asyncio.CancelledError:
            # Shutdown past its grace period: give the message back for another worker, then
            # see the writes already sent acknowledged.
            await asyncio.shield(self.give_back(registered, receiver, message, envelope))
            if ctx is not None:
                await asyncio.shield(self._flush_quietly(ctx))
            raise
        except Exception as exc:
            error = exc
            if ctx is not None:
                # The failed delivery's audit rows go in before its retry or dead letter.
                await self._flush_quietly(ctx)
            decision = self._decide(registered, exc, attempt)
            if decision.action is Action.PARK:
                # Parking (record, defer, confirm) is bookkeeping too, as completing is: in
                # batch mode every delivery of a round parks, and held the slot through it.
                await hand_on()
        finally:
            if running is not None:
                self._running[running] -= 1
                if not self._running[running]:
                    del self._running[running]
        if (
            decision.action is Action.DEAD_LETTER
            and error is not None
            and await self._done_before(registered, envelope)
        ):
            decision = self._decide(registered, error, attempt, result_stored=True)
        step = getattr(ctx, "current_step", None) or getattr(error, "step", None)
        action = await self._settle(
            registered, receiver, message, decision, error, envelope, attempt, step
        )
        outcome = DeliveryOutcome(
            handler=registered.spec.name,
            action=action,
            attempt=attempt,
            seconds=time.monotonic() - started,
            reason=decision.reason,
            batch_id=envelope.batch_id if envelope else None,
            doc_id=envelope.doc_id if envelope else None,
        )
        log = logger.warning if action is Action.DEAD_LETTER else logger.info
        log(
            "%s %s %s/%s attempt=%d %.2fs%s",
            action.value,
            outcome.handler,
            outcome.batch_id or "?",
            outcome.doc_id or "?",
            attempt,
            outcome.seconds,
            f" {decision.reason}: {decision.description}" if decision.reason else "",
        )
        if action is Action.RETRY and error is not None:
            logger.info(
                "will retry %s after %.1fs: %s", outcome.doc_id, decision.delay, describe(error)
            )
        return outcome

    @staticmethod
    async def _flush_quietly(ctx: Context) -> None:
        """Wait for a failed delivery's pending writes; their own failure changes nothing of
        what happens to the message, so it is only logged."""
        try:
            # the failed handler still holds its slot
            await delivery_of(ctx).writes.flush(hurry=True)
        except Exception as exc:
            logger.warning("%s/%s: a pending write failed: %s", ctx.batch_id, ctx.doc_id, exc)

    # --- carrying decisions out ---------------------------------------------------------
    async def _settle(
        self,
        registered: RegisteredHandler,
        receiver: Receiver,
        message: ServiceBusReceivedMessage,
        decision: Decision,
        error: BaseException | None,
        envelope: Envelope | None,
        attempt: int,
        step: str | None,
    ) -> Action:
        try:
            if decision.action is Action.COMPLETE:
                await self._complete(registered, receiver, message, envelope, attempt)
            elif decision.action is Action.RETRY:
                await self._note_retry(registered, envelope, attempt, decision)
                if not is_deferred(message):  # a resumed parked one waits in its park instead
                    await self._hold(decision.delay)
                await self.give_back(registered, receiver, message, envelope, decision)
            elif decision.action is Action.DEAD_LETTER:
                assert error is not None  # (only a failure is dead-lettered)
                record = self._dead_letter_record(
                    registered, message, decision, error, envelope, attempt, step
                )
                try:
                    await record_dead_letter(self.store, record)
                except StoreError as exc:
                    logger.error("cannot record dead letter, retrying later: %s", exc)
                    retry = self._decide(registered, error, attempt, unrecordable=exc)
                    return await self._settle(
                        registered, receiver, message, retry, error, envelope, attempt, step
                    )
                await receiver.dead_letter(
                    message,
                    reason=storable_text(decision.reason),
                    description=storable_text(decision.description),
                )
            elif decision.action is Action.PARK:
                await self._park(registered, receiver, message, decision, envelope)
        except MessagingError as exc:
            # Lock lost or connection gone: the broker redelivers; the result (if any) is
            # already written and the rewrite is idempotent.
            logger.warning(
                "could not settle %s (%s): %s", message.message_id, decision.action.value, exc
            )
            return Action.RETRY  # it comes back: its next delivery is the one that counts
        except Exception as exc:
            # Whatever went wrong, the message must not sit locked and unsettled until its
            # lock runs out (and the worker wait for it): give it back now.
            logger.error(
                "could not %s %s (%s): giving it back",
                decision.action.name.lower().replace("_", "-"),
                message.message_id,
                describe(exc),
                exc_info=not isinstance(exc, StoreError),
            )
            await self.give_back(registered, receiver, message, envelope)
            return Action.RETRY
        return decision.action

    def _decide(
        self,
        registered: RegisteredHandler,
        error: BaseException,
        attempt: int,
        *,
        result_stored: bool = False,
        unrecordable: BaseException | None = None,
    ) -> Decision:
        """:func:`~subscriber.settlement.decide` with what this processor knows of the
        handler (its delivery limit, whether it keeps an order) and of the message."""
        return decide(
            error,
            attempt=attempt,
            max_attempts=self.max_attempts(registered),
            policy=self.backoff,
            rng=self.rng,
            ordered=bool(registered.spec.ordered_by),
            result_stored=result_stored,
            unrecordable=unrecordable,
        )

    async def _call(self, registered: RegisteredHandler, document: Any, ctx: Context) -> Any:
        """The handler's output, or :class:`HandlerTimeout` once it has run past its timeout."""
        seconds = registered.spec.timeout or self.handler_timeout
        if seconds is None:
            return await registered.fn(document, ctx)
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await registered.fn(document, ctx)
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the handler's own TimeoutError (an I/O timeout of its own)
            # (the cancellation that stopped it says in which step: handlers.steps marks it)
            step = getattr(exc.__context__, "step", None)
            raise HandlerTimeout(registered.spec.name, seconds, step) from None

    # --- done or dead, never both -------------------------------------------------------
    async def _done_before(self, registered: RegisteredHandler, envelope: Envelope | None) -> bool:
        """Whether another delivery of this message stored its result already (its lock was
        lost, or this is a parallel delivery): then this one completes, it neither runs the
        handler again nor dead-letters a document that is done."""
        if envelope is None:
            return False
        try:
            done = await self.store.has_result(registered.spec.name, envelope.message_id)
        except StoreError as exc:
            logger.warning("cannot tell whether %s is done: %s", envelope.doc_id, exc)
            return False
        if done:
            logger.info(
                "%s %s/%s: a result is stored already (an earlier delivery lost its lock): "
                "completing", registered.spec.name, envelope.batch_id, envelope.doc_id,
            )  # fmt: skip
        return done

    async def _complete(
        self,
        registered: RegisteredHandler,
        receiver: Receiver,
        message: ServiceBusReceivedMessage,
        envelope: Envelope | None,
        attempt: int,
    ) -> None:
        """Complete a message whose result is stored. A dead letter of the same message — a
        delivery before this one (or beside it, once this one's lock is lost) that gave up —
        is resolved by that result: only a redelivery, or a lost lock, can have one."""
        try:
            await receiver.complete(message)
        except Exception:  # (settled by the caller as any failed settlement)
            await self._resolve_dead_letters(registered, envelope)
            raise
        if attempt > 1:
            await self._resolve_dead_letters(registered, envelope)

    async def _resolve_dead_letters(
        self, registered: RegisteredHandler, envelope: Envelope | None
    ) -> None:
        if envelope is None:
            return
        try:
            resolved = await self.store.resolve_dead_letters(
                handler=registered.spec.name,
                batch_id=envelope.batch_id,
                doc_id=envelope.doc_id,
                generation=envelope.generation,
            )
        except StoreError as exc:  # status counts by result already; the record says less
            logger.warning("could not resolve dead letters of %s: %s", envelope.doc_id, exc)
            return
        if resolved:
            logger.info(
                "%s %s/%s: %d dead letter(s) resolved by its result",
                registered.spec.name, envelope.batch_id, envelope.doc_id, resolved,
            )  # fmt: skip

    async def _note_retry(
        self,
        registered: RegisteredHandler,
        envelope: Envelope | None,
        attempt: int,
        decision: Decision,
    ) -> None:
        """Say in Mongo that this document is being retried (``docbus status`` counts it)."""
        if envelope is None:
            return
        try:
            await self.store.note_retry(
                handler=registered.spec.name,
                message_id=envelope.message_id,
                batch_id=envelope.batch_id,
                doc_id=envelope.doc_id,
                attempt=attempt,
                error=decision.description,
                delay=decision.delay,
            )
        except StoreError as exc:  # a status hint only: never a reason to lose the retry
            logger.warning("could not note the retry of %s: %s", envelope.doc_id, exc)

    async def _hold(self, seconds: float) -> None:
        """Wait out a backoff while the lock is renewed; shutdown cuts the wait short."""
        if seconds <= 0 or self.stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def give_back(
        self,
        registered: RegisteredHandler,
        receiver: Receiver,
        message: ServiceBusReceivedMessage,
        envelope: Envelope | None = None,
        decision: Decision | None = None,
    ) -> None:
        """Abandon ``message`` for any worker to take again; a failure is only logged (the
        lock then expires, with the same effect, later).

        A resumed parked message is still deferred, and abandoning leaves it so: only its
        ``parked`` record brings it back, so that record is written again once it is
        abandoned (:meth:`_repark`; kept as it is if the message was given back before its
        handler started).
        """
        if is_deferred(message):
            reason = decision.reason if decision is not None and decision.reason else "GivenBack"
            description = (
                decision.description
                if decision is not None
                else "given back unprocessed (the worker stopped); resumed again later"
            )
            parked = self._parked(registered, message, reason, description, envelope)
            try:
                await self._repark(receiver.abandon, message, parked)
            except MessagingError as exc:
                logger.warning("could not abandon %s: %s", message.message_id, exc)
            except StoreError as exc:
                logger.error(
                    "a deferred message has no parked record (%s): %s", message.sequence_number, exc
                )
            return
        try:
            await receiver.abandon(message)
        except MessagingError as exc:
            logger.warning("could not abandon %s: %s", message.message_id, exc)

    async def give_back_unseen(
        self,
        registered: RegisteredHandler,
        receiver: Receiver,
        message: ServiceBusReceivedMessage,
    ) -> None:
        """Give back a message no handler has seen (received ahead, the worker stopping):
        released, so its next delivery does not count this one — a worker stopped again and
        again does not push a message it never ran towards its delivery limit. A resumed
        parked message goes back to its park instead (:meth:`give_back`)."""
        if is_deferred(message):
            await self.give_back(registered, receiver, message)
            return
        try:
            await receiver.release(message)
        except MessagingError as exc:
            logger.warning("could not give back %s: %s", message.message_id, exc)

    @staticmethod
    def _parked(
        registered: RegisteredHandler,
        message: ServiceBusReceivedMessage,
        reason: str,
        description: str,
        envelope: Envelope | None,
        *,
        deferred: bool = False,
    ) -> ParkedMessage:
        spec = registered.spec
        return ParkedMessage(
            topic=spec.topic,
            subscription=spec.subscription,
            sequence_number=int(message.sequence_number or 0),
            reason=reason,
            description=description,
            batch_id=envelope.batch_id if envelope else None,
            doc_id=envelope.doc_id if envelope else None,
            message_id=str(message.message_id),
            handler=spec.name,
            deferred=deferred,
        )

    async def _park(
        self,
        registered: RegisteredHandler,
        receiver: Receiver,
        message: ServiceBusReceivedMessage,
        decision: Decision,
        envelope: Envelope | None,
    ) -> None:
        parked = self._parked(registered, message, decision.reason, decision.description, envelope)
        if decision.llm_requests:  # batch mode: what it waits for
            parked = parked.model_copy(update={"llm_requests": list(decision.llm_requests)})
        if is_deferred(message):
            await self._repark(receiver.defer, message, parked)
            return
        # Record first, so a deferred message is never without its record; then confirm, so
        # no resumer fetches it before Service Bus has deferred it.
        await park(self.store, parked)
        await receiver.defer(message)
        await mark_deferred(self.store, parked)

    async def _repark(
        self,
        settle: Callable[[ServiceBusReceivedMessage], Awaitable[None]],
        message: ServiceBusReceivedMessage,
        parked: ParkedMessage,
    ) -> None:
        """Park a resumed message again: ``settle`` it (defer or abandon), then write its
        record, confirmed as it is written — it was deferred before and stays so, whatever
        happens to it now.

        Settled first: until then its record still says a worker has it (resumed), so no
        resumer reaches for it while it is locked (it would find it "not found" and drop the
        record, leaving a deferred message nothing fetches back), and a crash in between
        leaves that record, fetchable again once stale. One write per round instead of a
        record and its confirmation. If settling fails, the record is left as it is (the
        lock lapses; the record goes stale and brings it back)."""
        await settle(message)
        await park(self.store, parked.model_copy(update={"deferred": True}))

    @staticmethod
    def _dead_letter_record(
        registered: RegisteredHandler,
        message: ServiceBusReceivedMessage,
        decision: Decision,
        error: BaseException | None,
        envelope: Envelope | None,
        attempt: int,
        step: str | None,
    ) -> DeadLetterRecord:
        spec = registered.spec
        return dead_letter_record(
            message,
            topic=spec.topic,
            subscription=spec.subscription,
            reason=decision.reason,
            description=decision.description,
            handler=spec.name,
            handler_version=spec.version,
            envelope=envelope,
            error=error,
            with_traceback=error is not None and not _is_expected(error),
            step=step,
            delivery_count=attempt,
        )


class _AlreadyDone(Exception):
    """An earlier delivery of the message stored its result: complete it, nothing more."""


def _is_expected(error: BaseException) -> bool:
    """Outcomes a handler chose (DeadLetter, Retry) and unreadable messages carry no traceback
    worth keeping."""
    return isinstance(error, HandlerOutcome | InvalidEnvelope)


def cancel_unawaited(read: asyncio.Task[Any]) -> None:
    """Cancel a read no one awaits any more, or take its error: it is no one's to raise."""
    if read.done():
        if not read.cancelled():
            read.exception()
    else:
        read.cancel()


def is_deferred(message: ServiceBusReceivedMessage) -> bool:
    """A message fetched back from deferral (a resumed parked one)."""
    return message.state == ServiceBusMessageState.DEFERRED


def _once(call: Callable[[], Awaitable[None]] | None) -> Callable[[], Awaitable[None]]:
    """``call`` awaited on the first call only (nothing if None)."""
    pending = [call] if call is not None else []

    async def once() -> None:
        if pending:
            await pending.pop()()

    return once
