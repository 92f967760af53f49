"""The worker: receive from each handler's subscription, run handlers concurrently, settle.

One :class:`Worker` serves a set of handlers in one process. Per handler it keeps a peek-lock
receiver on the handler's subscription and pulls as many messages as it has free handler slots
(``concurrency`` is shared by all handlers) plus a few more, ``receive_ahead``: those wait, in
the order received, for the next free slot, so a slot a handler hands on is taken at once rather
than after a round trip to the broker (by default only with lock renewal on: a waiting message's
lock is renewed from the moment it arrives, :class:`~subscriber.locks.LockRenewer`). ``stop()``
gives back the ones still waiting at once. A circuit breaker pauses every
receiver when the LLM endpoint fails systemically and probes until it recovers; parked messages
(:mod:`subscriber.parking`) are resumed once their cause clears — as soon as a receiver opens,
then every ``resume_interval`` — and :attr:`WorkerReport.parked` says what is left parked when
the worker exits. ``stop()`` (SIGINT/SIGTERM in the CLI) stops receiving, lets in-flight
handlers finish within the grace period and abandons the rest; ``until_idle`` drains and exits,
for batch jobs and tests: idle means nothing arrived for that long, nothing is in flight and
nothing parked is resumable — or the LLM endpoint still fails after one last probe, rather than
probing for ever. A :class:`~subscriber.watchdog.LoopWatchdog` says when a handler blocks the
event loop; audit rows and checkpoints an outage of the store held back are drained before exit
(:mod:`handlers.writes`). Neighbours: :mod:`subscriber.processing` (one delivery),
:mod:`subscriber.cli` (``docbus worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import CodeType
from typing import Any, cast

from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import (
    MessageNotFoundError,
    OperationTimeoutError,
    ServiceBusError,
)

from docbus.backoff import BackoffPolicy
from docbus.servicebus import MessagingError
from docbus.settings import WorkerSettings
from docbus.store import ParkedGroup, Store, StoreError
from docbus.topology import Topology, TopologyError
from handlers.runtime import RegisteredHandler, drain_backlog
from subscriber.locks import LockRenewer
from subscriber.parking import (
    OVER_BUDGET,
    SYSTEMIC,
    ParkedMessage,
    may_resume,
    parked_messages,
    unpark,
)
from subscriber.processing import Outcome, Processor, cancel_unawaited
from subscriber.settlement import Action
from subscriber.turns import TakingTurns
from subscriber.watchdog import LoopWatchdog

logger = logging.getLogger(__name__)


MIN_RECEIVE_WAIT = 0.1
"""Seconds a receive waits at least, even just before an idle exit."""

YOUNG_COLLECTION_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (CPython's default: 700)."""


def freeze_startup_heap() -> None:
    """Tune the garbage collector for a process whose main job is a :class:`Worker`; call it
    once, after imports and set-up, before :meth:`Worker.run`.

    Everything alive by then (modules, classes, schemas, clients: most of the heap) is moved
    out of the collector's sight (``gc.freeze()``), so a full collection no longer walks it.
    Unfrozen, those stopped the event loop for 100-120 ms every 4 s under load in
    ``bench/llm_bound.py``, and every LLM answer arriving meanwhile waited for them (p99 of
    the calls 362 ms against a 200 ms model); frozen, 10-25 ms. Young collections also run
    less often: a handler's garbage is freed by reference counting, not by them.
    """
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_COLLECTION_THRESHOLD), middle, old)


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs; durations in seconds."""

    concurrency: int = 16
    receive_ahead: int | None = None
    """Messages received beyond the free handler slots, waiting for the next one to free up.
    None: an eighth of ``concurrency`` (at least 1), or 0 without lock renewal, since a waiting
    message's lock would otherwise tick unrenewed."""
    prefetch: int = 0
    until_idle: float | None = None
    """Exit once nothing has arrived for this long and nothing is in flight."""
    max_messages: int | None = None
    """Exit after settling this many messages."""
    shutdown_grace: float = 30.0
    handler_timeout: float | None = 600.0
    """Seconds one attempt of a handler may take (its ``@handler(timeout=...)`` wins); past it
    the attempt is cancelled and counts as a transient failure. None: no limit."""
    lock_renewal: bool = True
    max_lock_renewal: float = 3600.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    receive_wait: float = 1.0
    default_max_delivery_count: int = 10
    """Delivery limit for subscriptions the topology does not describe."""
    probe_interval: float = 15.0
    """How often a paused worker asks the LLM endpoint whether it works again."""
    resume_interval: float = 30.0
    """How often parked messages are checked for resumption."""
    max_sessions: int = 8
    """Sessions an ordered handler works on at once (each is one receiver connection)."""
    dlq_capture_interval: float | None = 60.0
    """How often the subscriptions' dead-letter queues are drained into Mongo (also once at
    start and before an idle exit); None leaves broker-side dead letters on the broker."""
    blocked_loop_warning: float | None = None
    """Seconds the event loop may stand still (a handler blocking it) before the worker warns,
    naming the handler and the line (:mod:`subscriber.watchdog`). None: a third of the
    shortest lock duration of its subscriptions, between 0.5 and 5 s; 0: never warn."""

    @classmethod
    def from_settings(cls, worker: WorkerSettings, **overrides: Any) -> WorkerOptions:
        values: dict[str, Any] = {
            "concurrency": worker.concurrency,
            "receive_ahead": worker.receive_ahead,
            "prefetch": worker.prefetch,
            "shutdown_grace": worker.shutdown_grace,
            "handler_timeout": worker.handler_timeout,
            "lock_renewal": worker.lock_renewal,
            "max_lock_renewal": worker.max_lock_renewal_duration,
            "backoff": BackoffPolicy(
                base=worker.retry_backoff_base,
                cap=worker.retry_backoff_max,
                jitter=worker.retry_jitter,
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.receive_ahead is not None and self.receive_ahead < 0:
            raise ValueError(f"receive_ahead must be 0 or more, not {self.receive_ahead}")

    @property
    def ahead(self) -> int:
        """``receive_ahead`` with its default resolved."""
        if self.receive_ahead is not None:
            return self.receive_ahead
        return max(1, self.concurrency // 8) if self.lock_renewal else 0


@dataclass
class WorkerReport:
    """What a worker did, per handler and outcome."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: float = 0.0
    parked: list[ParkedGroup] = field(default_factory=list)
    """What is left parked on the worker's subscriptions as it exits, per handler and reason
    (with the latest description of why): messages a batch job has not finished."""

    def add(self, outcome: Outcome) -> None:
        self.outcomes[(outcome.handler, outcome.action.value)] += 1
        if outcome.action is Action.DEAD_LETTER:
            self.reasons[(outcome.handler, outcome.reason)] += 1

    def count(self, action: Action, handler: str | None = None) -> int:
        return sum(
            n
            for (name, value), n in self.outcomes.items()
            if value == action.value and (handler is None or name == handler)
        )

    @property
    def settled(self) -> int:
        return sum(self.outcomes.values())

    @property
    def left_parked(self) -> int:
        """How many messages are left parked (see :attr:`parked`)."""
        return sum(group.count for group in self.parked)


class Worker:
    """Runs ``handlers`` against their subscriptions until stopped, idle or done."""

    def __init__(
        self,
        handlers: list[RegisteredHandler],
        *,
        client: ServiceBusClient,
        store: Store,
        options: WorkerOptions | None = None,
        topology: Topology | None = None,
        llm: Any = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        if not handlers:
            raise ValueError("a worker needs at least one handler")
        self.handlers = handlers
        self.client = client
        self.store = store
        self.options = options or WorkerOptions()
        self.topology = topology
        self.llm = llm
        self.on_outcome = on_outcome
        self.report = WorkerReport()
        self._check_ordering()
        self._stopping = asyncio.Event()
        self._circuit_closed = asyncio.Event()
        self._circuit_closed.set()
        self._slots = asyncio.Semaphore(self.options.concurrency)
        # Messages received and not yet through their handler: those running (each also holds
        # a slot) and those waiting for a slot, at most `receive_ahead` beyond the slots.
        self._credits = asyncio.Semaphore(self.options.concurrency + self.options.ahead)
        self._waiting: set[asyncio.Task[None]] = set()
        self._stop_cancelled: set[asyncio.Task[None]] = set()
        self._giving_back = False
        self._resumed_waiting: set[str] = set()  # parked ids fetched back, not yet started
        # Messages whose handler has returned, while their writes are acknowledged, their
        # result stored and their completion confirmed: they no longer hold a handler slot,
        # but at most `concurrency` of them.
        self._completing = asyncio.Semaphore(self.options.concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._taken = 0
        self._last_activity = time.monotonic()
        self._renewer: LockRenewer | None = None
        self._receivers: dict[str, ServiceBusReceiver] = {}
        self._handler_tasks: dict[str, set[asyncio.Task[None]]] = {}
        self._resume_lock = asyncio.Lock()
        self._llm_works: bool | None = None  # None: not known yet (no probe, no failure)
        self._exit_capture: asyncio.Task[None] | None = None
        self._processor = Processor(
            store,
            backoff=self.options.backoff,
            max_attempts=self.max_delivery_count,
            llm=llm,
            stopping=self._stopping,
            handler_timeout=self.options.handler_timeout,
        )

    def _check_ordering(self) -> None:
        if self.topology is None:
            return
        for registered in self.handlers:
            spec = registered.spec
            try:
                sub = self.topology.topic(spec.topic).subscription(spec.subscription)
            except TopologyError:
                continue
            if bool(spec.ordered_by) != sub.requires_session:
                need = "requires" if spec.ordered_by else "must not require"
                raise ValueError(
                    f"handler {spec.name!r} is {'ordered' if spec.ordered_by else 'unordered'}, "
                    f"so subscription {spec.topic}/{spec.subscription} {need} sessions: set "
                    f"requires_session = {str(bool(spec.ordered_by)).lower()} in the topology"
                )

    # --- public ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop receiving; in-flight handlers get the grace period to finish, and messages
        received ahead that no handler has started are given back to the broker now."""
        if not self._stopping.is_set():
            logger.info("worker stopping: no new messages, finishing in-flight handlers")
        self._stopping.set()
        self._giving_back = True
        for task in self._waiting - self._stop_cancelled:
            self._stop_cancelled.add(task)
            task.cancel()

    @property
    def paused(self) -> bool:
        return not self._circuit_closed.is_set()

    def max_delivery_count(self, registered: RegisteredHandler) -> int:
        spec = registered.spec
        if self.topology is not None:
            try:
                return (
                    self.topology.topic(spec.topic)
                    .subscription(spec.subscription)
                    .max_delivery_count
                )
            except TopologyError:
                pass
        return self.options.default_max_delivery_count

    def blocked_loop_threshold(self) -> float | None:
        """Seconds of a stalled event loop worth a warning (see ``blocked_loop_warning``)."""
        if self.options.blocked_loop_warning is not None:
            return self.options.blocked_loop_warning or None
        locks = [60.0]  # Service Bus's default lock duration
        if self.topology is not None:
            from docbus.local.emulator.config import ConfigError, parse_duration

            for registered in self.handlers:
                spec = registered.spec
                with contextlib.suppress(TopologyError, ConfigError):
                    sub = self.topology.topic(spec.topic).subscription(spec.subscription)
                    locks.append(parse_duration(sub.lock_duration))
        return max(0.5, min(5.0, min(locks) / 3))

    async def run(self) -> WorkerReport:
        started = time.monotonic()
        self._last_activity = started
        if self.options.lock_renewal:
            self._renewer = LockRenewer(self.options.max_lock_renewal)
        threshold = self.blocked_loop_threshold()
        watchdog = None
        if threshold is not None:
            codes = {
                code: h.spec.name
                for h in self.handlers
                if isinstance(code := getattr(h.fn, "__code__", None), CodeType)
            }
            watchdog = LoopWatchdog(threshold, codes)
            watchdog.start()
        loops = []
        for registered in self.handlers:
            if registered.spec.ordered_by:
                # Several sessions at once, one message at a time within each.
                parallel = max(1, min(self.options.concurrency, self.options.max_sessions))
                loops += [
                    asyncio.create_task(self._session_loop(registered)) for _ in range(parallel)
                ]
            else:
                loops.append(asyncio.create_task(self._receive_loop(registered)))
        helpers = [
            asyncio.create_task(self._watch_idle()),
            asyncio.create_task(self._resume_loop()),
            asyncio.create_task(self._capture_loop()),
        ]
        try:
            await asyncio.gather(*loops)
        finally:
            self._stopping.set()
            await self._finish_exit_capture()
            for task in helpers:
                task.cancel()
            for task in loops:
                task.cancel()
            await asyncio.gather(*helpers, *loops, return_exceptions=True)
            if self._renewer is not None:
                await self._renewer.close()
            if watchdog is not None:
                watchdog.stop()
            # audit rows and checkpoints an outage refused: stored now, as far as possible
            await drain_backlog(self.store, within=self.options.shutdown_grace)
            self.report.parked = await self._left_parked()
            self.report.seconds = time.monotonic() - started
        return self.report

    # --- receiving ------------------------------------------------------------------------
    async def _receive_loop(self, registered: RegisteredHandler) -> None:
        spec = registered.spec
        link = self.client.get_subscription_receiver(
            spec.topic, spec.subscription, prefetch_count=self.options.prefetch
        )
        # Receives and settlements on this link take turns (see subscriber.turns); the
        # wrapper has the receiver's interface, so whatever settles need not know.
        receiver = cast(ServiceBusReceiver, TakingTurns(link))
        async with link:
            self._receivers[spec.name] = receiver
            mine = self._handler_tasks.setdefault(spec.name, set())
            try:
                # parked messages whose cause has cleared go first, not a resume round later
                await self._resume_parked(registered)
                while not self._stopping.is_set():
                    await self._wait_for_circuit()
                    if self._stopping.is_set():
                        break
                    granted = await self._take_credits()
                    if granted == 0:
                        break
                    try:
                        messages = await receiver.receive_messages(
                            max_message_count=granted, max_wait_time=self._receive_wait()
                        )
                    except ServiceBusError as exc:
                        self._release(granted)
                        logger.warning("receive from %s failed: %s", spec.subscription, exc)
                        await self._pause_for(self.options.backoff.base)
                        continue
                    self._release(granted - len(messages))
                    if messages:
                        self._last_activity = time.monotonic()
                    for message in messages:
                        self._taken += 1
                        self._start(registered, receiver, message, mine)
                await self._drain(mine)
            finally:
                self._receivers.pop(spec.name, None)

    def _receive_wait(self) -> float:
        """How long a receive waits for messages: ``receive_wait``, but not past the moment an
        idle worker with nothing in flight exits, so that exit does not wait out one more
        receive (sessions keep theirs: a session receiver waits as it locks a session)."""
        wait = self.options.receive_wait
        if self.options.until_idle is None or self._in_flight:
            return wait
        left = self.options.until_idle - (time.monotonic() - self._last_activity)
        return max(MIN_RECEIVE_WAIT, min(wait, left))

    async def _session_loop(self, registered: RegisteredHandler) -> None:
        """Ordered handlers: lock the next session with messages, run them in order, repeat."""
        spec = registered.spec
        while not self._stopping.is_set():
            await self._wait_for_circuit()
            if self._stopping.is_set():
                return
            receiver = self.client.get_subscription_receiver(
                spec.topic,
                spec.subscription,
                session_id=NEXT_AVAILABLE_SESSION,
                max_wait_time=self.options.receive_wait,
            )
            try:
                async with receiver:
                    renewal = asyncio.create_task(self._renew_session(receiver))
                    try:
                        await self._drain_session(registered, receiver)
                    finally:
                        renewal.cancel()
                        await asyncio.gather(renewal, return_exceptions=True)
            except OperationTimeoutError:
                continue  # no session has messages right now
            except ServiceBusError as exc:
                logger.warning("session receive on %s failed: %s", spec.subscription, exc)
                await self._pause_for(self.options.backoff.base)

    async def _drain_session(
        self, registered: RegisteredHandler, receiver: ServiceBusReceiver
    ) -> None:
        while not self._stopping.is_set():
            granted = await self._take_credits(most=1)
            if granted == 0:
                return
            try:
                messages = await receiver.receive_messages(
                    max_message_count=1, max_wait_time=self.options.receive_wait
                )
            except BaseException:
                self._release(granted)
                raise
            if not messages:
                self._release(granted)
                return  # this session is drained: let another receiver take the next one
            self._last_activity = time.monotonic()
            self._taken += 1
            task = self._start(registered, receiver, messages[0])
            # One at a time within a session: the next message waits for this settlement.
            await asyncio.shield(task)

    async def _renew_session(self, receiver: ServiceBusReceiver) -> None:
        session = receiver.session
        while True:
            locked_until = session.locked_until_utc
            remaining = (locked_until - datetime.now(UTC)).total_seconds() if locked_until else 10.0
            await asyncio.sleep(max(0.05, remaining / 2))
            try:
                await session.renew_lock()
            except (ServiceBusError, ValueError) as exc:
                logger.warning("lost the lock of session %s: %s", session.session_id, exc)
                return

    async def _take_credits(self, most: int | None = None) -> int:
        """Block until one more message may be received, then take whatever else is free now
        (handler slots, plus ``receive_ahead`` for messages that wait for one)."""
        remaining = None
        if self.options.max_messages is not None:
            remaining = self.options.max_messages - self._taken
            if remaining <= 0:
                self._stopping.set()
                return 0
        acquire = asyncio.ensure_future(self._credits.acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if acquire not in done:
            acquire.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquire
            if acquire.done() and not acquire.cancelled():
                self._credits.release()
            return 0
        granted = 1
        limit = remaining if remaining is not None else self.options.concurrency
        if most is not None:
            limit = min(limit, most)
        while granted < limit and not self._credits.locked():
            await self._credits.acquire()
            granted += 1
        return granted

    def _release(self, count: int) -> None:
        for _ in range(count):
            self._credits.release()

    def _start(
        self,
        registered: RegisteredHandler,
        receiver: ServiceBusReceiver,
        message: ServiceBusReceivedMessage,
        mine: set[asyncio.Task[None]] | None = None,
        parked: ParkedMessage | None = None,
    ) -> asyncio.Task[None]:
        """Run ``message`` (holding one of :attr:`_credits`) as soon as a handler slot frees.
        Its checkpoints are read meanwhile, if its handler uses steps."""
        if self._renewer is not None:
            self._renewer.register(receiver, message)
        checkpoints = self._processor.read_ahead(registered, message)
        task = asyncio.create_task(
            self._run_one(registered, receiver, message, checkpoints, parked),
            name=f"message {message.message_id}",  # named in a blocked-loop warning
        )
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        if mine is not None:
            mine.add(task)
            task.add_done_callback(mine.discard)
        return task

    async def _run_one(
        self,
        registered: RegisteredHandler,
        receiver: ServiceBusReceiver,
        message: ServiceBusReceivedMessage,
        checkpoints: asyncio.Task[dict[str, Any]] | None = None,
        parked: ParkedMessage | None = None,
    ) -> None:
        slot_held = False
        credit_held = True
        completing = False

        async def handler_returned() -> None:
            nonlocal slot_held, credit_held, completing
            await self._completing.acquire()
            completing = True
            slot_held = credit_held = False
            self._slots.release()
            self._credits.release()

        try:
            if not await self._wait_for_slot(registered, receiver, message):
                return
            slot_held = True
            if parked is not None:
                # only now: a resumed message given back before this point keeps its record
                try:
                    await self._unpark(parked)
                except asyncio.CancelledError:
                    await asyncio.shield(self._processor.give_back(registered, receiver, message))
                    raise
            outcome = await self._processor.process(
                registered,
                receiver,
                message,
                handler_returned=handler_returned,
                checkpoints=checkpoints,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("unexpected failure processing %s", message.message_id)
            # never left locked until its lock runs out: give it back now
            await self._processor.give_back(registered, receiver, message)
            return
        finally:
            if parked is not None:
                self._resumed_waiting.discard(parked.id)
            if checkpoints is not None:
                cancel_unawaited(checkpoints)
            if self._renewer is not None:
                self._renewer.release(message)
            if slot_held:
                self._slots.release()
            if credit_held:
                self._credits.release()
            if completing:
                self._completing.release()
            self._last_activity = time.monotonic()
        self.report.add(outcome)
        if outcome.action is Action.PARK and outcome.reason == "SystemicFailure":
            self._open_circuit()
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _wait_for_slot(
        self,
        registered: RegisteredHandler,
        receiver: ServiceBusReceiver,
        message: ServiceBusReceivedMessage,
    ) -> bool:
        """Take a handler slot for ``message``, first come first served. False if ``stop()``
        came first: the message, which no handler has seen, is then given back to the broker
        for any worker to take (as a lock left to expire would, that counts a delivery)."""
        if self._giving_back:
            await self._processor.give_back(registered, receiver, message)
            return False
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once: nothing to wait for or cancel
            return True
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            await self._slots.acquire()
            return True
        except asyncio.CancelledError:
            await asyncio.shield(self._processor.give_back(registered, receiver, message))
            if task in self._stop_cancelled:
                self._stop_cancelled.discard(task)
                if task.uncancel() == 0:
                    return False  # stop()'s cancellation, and nobody else's: taken back
            raise
        finally:
            self._waiting.discard(task)

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        """Give in-flight handlers the grace period, then cancel (they abandon their message)."""
        if not tasks:
            return
        _, pending = await asyncio.wait(set(tasks), timeout=self.options.shutdown_grace)
        if pending:
            logger.warning(
                "abandoning %d messages still in flight after the grace period", len(pending)
            )
            for task in pending:
                task.cancel()
            _, stuck = await asyncio.wait(pending, timeout=self.options.shutdown_grace)
            if stuck:  # waiting for writes MongoDB keeps refusing: give those up
                await drain_backlog(self.store, within=0)
            await asyncio.gather(*pending, return_exceptions=True)

    async def _pause_for(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _watch_idle(self) -> None:
        idle = self.options.until_idle
        if idle is None:
            return
        while not self._stopping.is_set():
            quiet = time.monotonic() - self._last_activity
            if quiet >= idle and not self._in_flight and await self._idle_now():
                logger.info("worker idle for %.1fs: draining and exiting", quiet)
                self.stop()
                self._start_exit_capture()
                return
            await self._pause_for(min(0.2, idle))

    async def _idle_now(self) -> bool:
        """Nothing has arrived for the idle time and nothing is in flight: is there anything
        left to do? Parked messages whose cause has cleared are (they are resumed now); so is
        a paused circuit that one more probe finds closed. A circuit still open is not: a
        batch job ends, and its report lists what it left parked, rather than probe forever."""
        if self.paused:
            if not await self._probe_once():
                logger.warning(
                    "LLM endpoint still failing after %.0fs without work: stopping; parked "
                    "messages stay parked (docbus parked list) and resume when a worker finds "
                    "the endpoint working",
                    self.options.until_idle or 0,
                )
                return True
            self._close_circuit()
        return await self._resume_parked() == 0 and not self._in_flight

    # --- broker-side dead letters -----------------------------------------------------------
    def _start_exit_capture(self) -> None:
        """Capture the dead-letter queues once more before an idle exit, while the receive
        under way finishes (:meth:`run` waits for both)."""
        self._exit_capture = asyncio.create_task(self._capture_dead_letters())

    async def _finish_exit_capture(self) -> None:
        if self._exit_capture is not None:
            with contextlib.suppress(Exception):  # the capture logs its own failures
                await self._exit_capture

    async def _capture_loop(self) -> None:
        interval = self.options.dlq_capture_interval
        if interval is None:
            return
        while not self._stopping.is_set():
            await self._capture_dead_letters()
            await self._pause_for(interval)

    async def _capture_dead_letters(self) -> None:
        """Record dead letters the broker made itself (delivery limit, TTL) like our own."""
        if self.options.dlq_capture_interval is None:
            return
        from subscriber.dlq import capture_dead_letters

        seen: set[tuple[str, str]] = set()
        for registered in self.handlers:
            spec = registered.spec
            if (spec.topic, spec.subscription) in seen:
                continue
            seen.add((spec.topic, spec.subscription))
            try:
                captured = await capture_dead_letters(
                    self.client, self.store, spec.topic, spec.subscription,
                    handler=spec.name, max_wait=0.5,
                )  # fmt: skip
            except (MessagingError, StoreError, ServiceBusError) as exc:
                logger.warning("dead-letter capture of %s failed: %s", spec.subscription, exc)
                continue
            except Exception:  # a bug must not stop the capture loop or the idle exit
                logger.exception("dead-letter capture of %s failed", spec.subscription)
                continue
            if captured:
                logger.info("captured %d dead letters of %s", captured, spec.subscription)

    # --- circuit breaker ------------------------------------------------------------------
    def _open_circuit(self) -> None:
        self._llm_works = False
        if self.llm is None:
            # Nothing to probe: handlers need an LLM this worker was not given. Stop rather
            # than spin; the parked messages resume under a worker that has one.
            logger.error(
                "a handler needs an LLM but none is configured (set OPENAI_API_KEY, "
                "DOCBUS_LLM__BASE_URL or AZURE_OPENAI_ENDPOINT): stopping; parked messages "
                "resume when a worker with an LLM runs"
            )
            self.stop()
            return
        if self._circuit_closed.is_set():
            logger.error(
                "LLM endpoint failing systemically (authentication, quota or unreachable): "
                "pausing consumption and probing every %.0fs",
                self.options.probe_interval,
            )
            self._circuit_closed.clear()
            asyncio.get_running_loop().create_task(self._probe_until_recovered())

    def _close_circuit(self) -> None:
        if not self._circuit_closed.is_set():
            logger.warning("LLM endpoint works again: resuming consumption")
        self._circuit_closed.set()

    async def _wait_for_circuit(self) -> None:
        if self._circuit_closed.is_set():
            return
        waiter = asyncio.ensure_future(self._circuit_closed.wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stop.cancel()

    async def _probe_once(self) -> bool:
        """Ask the LLM endpoint whether it serves us (:meth:`handlers.llm.LLMClient.probe`)."""
        if self.llm is None:
            return False
        try:
            await self.llm.probe()  # raises while the systemic cause persists
        except Exception as exc:
            logger.warning("LLM endpoint still failing: %s", exc)
            self._llm_works = False
            return False
        self._llm_works = True
        return True

    async def _probe_until_recovered(self) -> None:
        while not self._stopping.is_set():
            await self._pause_for(self.options.probe_interval)
            if self._stopping.is_set() or not self.paused:
                return  # (an idle check found it working first)
            if await self._probe_once():
                self._close_circuit()
                await self._resume_parked()
                return

    # --- parked messages ------------------------------------------------------------------
    async def _resume_loop(self) -> None:
        while not self._stopping.is_set():
            await self._pause_for(self.options.resume_interval)
            await self._resume_parked()

    async def _resume_parked(self, only: RegisteredHandler | None = None) -> int:
        """Fetch back and start the parked messages of this worker's subscriptions (or of
        ``only``'s) that :func:`~subscriber.parking.may_resume`; returns how many started."""
        # One resumer at a time: the probe and the periodic loop must not fetch the same
        # deferred messages twice (the second fetch finds them locked).
        async with self._resume_lock:
            started = 0
            for registered in self.handlers if only is None else [only]:
                spec = registered.spec
                receiver = self._receivers.get(spec.name)
                if receiver is None or self._stopping.is_set():
                    continue
                try:
                    parked = await parked_messages(self.store, spec.topic, spec.subscription)
                    ready = await self._ready_to_resume(parked)
                except StoreError as exc:
                    logger.warning("cannot read parked messages: %s", exc)
                    return started
                if ready:
                    started += await self._resume(registered, receiver, ready)
            return started

    async def _ready_to_resume(self, parked: list[ParkedMessage]) -> list[ParkedMessage]:
        candidates = [p for p in parked if p.id not in self._resumed_waiting]
        over_budget: dict[str, bool] = {}
        for batch_id in {p.batch_id for p in candidates if p.reason == OVER_BUDGET}:
            if batch_id is not None:
                batch = await self.store.get_batch(batch_id)
                over_budget[batch_id] = batch is not None and batch.over_budget
        llm_works: bool | None = False if self.paused else self._llm_works
        if self.llm is None:
            # Nothing to ask: try them (a handler that needs an LLM parks them again and
            # stops this worker, see _open_circuit).
            llm_works = not self.paused
        elif llm_works is None and any(
            p.reason == SYSTEMIC and p.resume_requested_at is None for p in candidates
        ):
            llm_works = await self._probe_once()  # a new worker: does the key work now?
            if not llm_works:
                self._open_circuit()
        return [
            p
            for p in candidates
            if may_resume(p, llm_works=llm_works, over_budget=over_budget.get(p.batch_id or ""))
        ]

    async def _left_parked(self) -> list[ParkedGroup]:
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
                "left parked: %d message(s) of %s (%s/%s), %s: %s",
                group.count, group.handler or "?", group.topic, group.subscription,
                group.reason, group.description,
            )  # fmt: skip
        return groups

    async def _unpark(self, parked: ParkedMessage) -> None:
        try:
            await unpark(self.store, parked)
        except StoreError as exc:  # the record outlives the message: the next round drops it
            logger.warning("could not remove the parked record %s: %s", parked.id, exc)

    async def _resume(
        self,
        registered: RegisteredHandler,
        receiver: ServiceBusReceiver,
        parked: list[ParkedMessage],
    ) -> int:
        numbers = [p.sequence_number for p in parked]
        try:
            messages = await receiver.receive_deferred_messages(numbers)
        except ServiceBusError as exc:
            logger.warning("cannot fetch %d parked messages: %s", len(numbers), exc)
            messages = []
            for p in parked:  # one by one: drop the records of messages that are gone
                try:
                    messages += await receiver.receive_deferred_messages([p.sequence_number])
                except MessageNotFoundError:
                    await unpark(self.store, p)
                except ServiceBusError as one_exc:
                    logger.warning("parked message %s stays parked: %s", p.id, one_exc)
        by_number = {m.sequence_number: m for m in messages}
        if self._renewer is not None:
            for fetched in messages:  # their locks tick while they wait for a credit below
                self._renewer.register(receiver, fetched)
        if by_number:
            logger.info("resuming %d parked messages of %s", len(by_number), registered.spec.name)
        started = 0
        for p in parked:
            message = by_number.pop(p.sequence_number, None)
            if message is None:
                continue  # not fetched this time: the record stays for the next round
            if await self._take_credits(most=1) == 0:  # stopping: back to their park
                for unstarted in [message, *by_number.values()]:
                    if self._renewer is not None:
                        self._renewer.release(unstarted)
                    await self._processor.give_back(registered, receiver, unstarted)
                break
            self._last_activity = time.monotonic()
            mine = self._handler_tasks.setdefault(registered.spec.name, set())
            self._resumed_waiting.add(p.id)
            self._start(registered, receiver, message, mine, parked=p)
            started += 1
        return started
