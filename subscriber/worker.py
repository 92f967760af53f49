"""The worker: receive from each handler's subscription, run handlers concurrently, settle.

One :class:`Worker` serves a set of handlers in one process; it orchestrates, the parts live
beside it. Per handler it keeps a peek-lock receiver (:mod:`subscriber.receiver`) on the
handler's subscription and pulls as many messages as it has free handler slots (``concurrency``
is shared by all handlers) plus a few more, ``receive_ahead``: those wait, in the order received,
for the next free slot, so a slot a handler hands on is taken at once rather than after a round
trip to the broker (by default only with lock renewal on: a waiting message's lock is renewed
from the moment it arrives, :class:`~subscriber.locks.LockRenewer`); :mod:`subscriber.admission`
keeps those counts. ``stop()`` gives back the ones still waiting at once. A circuit breaker
(:mod:`subscriber.breaker`) pauses every receiver when the LLM endpoint fails systemically and
probes until it recovers; parked messages (:mod:`subscriber.parking`) are resumed once their
cause clears (:mod:`subscriber.resumption`) — as soon as a receiver opens, then every
``resume_interval`` — and :attr:`WorkerReport.parked` says what is left parked when the worker
exits. ``stop()`` (SIGINT/SIGTERM in the CLI) stops receiving, lets in-flight handlers finish
within the grace period and abandons the rest; ``until_idle`` drains and exits, for batch jobs
and tests: idle means nothing arrived for that long (counted from when every receiver began
receiving, not from the start), nothing is in flight and nothing parked is resumable — or
the LLM endpoint still fails after one last probe, rather than probing for ever. A
:class:`~subscriber.watchdog.LoopWatchdog` says when a handler blocks the event loop; the
subscriptions' dead-letter queues are captured into Mongo (:mod:`subscriber.dlq`); audit rows
and checkpoints an outage of the store held back are drained before exit
(:mod:`handlers.writes`). A worker with an LLM client also runs batch mode's submitter
(:meth:`handlers.llm.LLMClient.batch_submitter`; one acts at a time across workers, by a lease
that ``stop`` gives up), and is not idle while requests wait for provider batches.
Neighbours: :mod:`subscriber.processing` (one delivery),
:mod:`docbus.cli.worker` (``docbus worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient

from docbus.backoff import BackoffPolicy
from docbus.servicebus import MessagingEntityNotFound, MessagingError
from docbus.settings import WorkerSettings
from docbus.store import ParkedGroup, Store, StoreError
from docbus.topology import Topology, TopologyError
from handlers.discovery import check_clashes
from handlers.runtime import RegisteredHandler, drain_backlog
from subscriber import heartbeat
from subscriber.admission import Admission
from subscriber.breaker import CircuitBreaker
from subscriber.locks import LockRenewer, keep_session_lock
from subscriber.parking import ParkedMessage
from subscriber.processing import DeliveryOutcome, Processor, cancel_unawaited
from subscriber.receiver import Receiver, open_next_session, open_receiver
from subscriber.resumption import Fetched, Resumption
from subscriber.settlement import Action
from subscriber.watchdog import LoopWatchdog

logger = logging.getLogger(__name__)


MIN_RECEIVE_WAIT = 0.1
"""Seconds a receive waits at least, even just before an idle exit."""

BUSY_RECEIVE_WAIT = 0.05
"""Seconds a receive waits at most while messages whose handler returned wait to be settled:
their settlements wait for the link while it receives (:class:`~subscriber.receiver.Turns`)."""

MOST_AHEAD = 100
"""The most messages received ahead by default: fast handlers then receive in batches as large
as a plain SDK loop's (``max_message_count=100``)."""

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
    None: as many as the handlers get through in :data:`~subscriber.admission.AHEAD_SECONDS`
    at their recent pace, at least an eighth of ``concurrency`` (at least 1) and at most
    :data:`MOST_AHEAD`; 0 without lock renewal, since a waiting message's lock would otherwise
    tick unrenewed."""
    prefetch: int = 0
    ranged_completions: bool = True
    """Complete runs of consecutive deliveries with one disposition (see the settings)."""
    until_idle: float | None = None
    """Exit once nothing has arrived for this long and nothing is in flight; the time counts
    from when every receiver has begun receiving, so a slow start does not count as idle."""
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
            "ranged_completions": worker.ranged_completions,
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
    def ahead(self) -> tuple[int, int]:
        """The least and the most messages received ahead (``receive_ahead`` resolved)."""
        if self.receive_ahead is not None:
            return self.receive_ahead, self.receive_ahead
        if not self.lock_renewal:
            return 0, 0
        return max(1, self.concurrency // 8), MOST_AHEAD


@dataclass
class WorkerReport:
    """What a worker did, per handler and outcome."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: float = 0.0
    receiving_after: float | None = None
    """Seconds from the start until every receiver had begun receiving (links opened, parked
    messages resumed); ``until_idle`` counts from there. None if that never happened."""
    parked: list[ParkedGroup] = field(default_factory=list)
    """What is left parked on the worker's subscriptions as it exits, per handler and reason
    (with the latest description of why): messages a batch job has not finished."""

    def add(self, outcome: DeliveryOutcome) -> None:
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
        on_outcome: Callable[[DeliveryOutcome], None] | None = None,
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
        self._check_llm_mode()
        check_clashes(handlers)  # (lists of handlers found apart, put together)
        self._stopping = asyncio.Event()
        least, most = self.options.ahead
        self._admission = Admission(
            self.options.concurrency, least, self._stopping, most_ahead=most
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        self._taken = 0
        self._last_activity = time.monotonic()
        self._started = time.monotonic()
        self._not_receiving = 0
        """Receive loops that have not begun receiving yet: idle time counts only from when
        every one has (opening links on a loaded machine can outlast ``until_idle``)."""
        self._renewer: LockRenewer | None = None
        self._receivers: dict[str, Receiver] = {}
        self._handler_tasks: dict[str, set[asyncio.Task[None]]] = {}
        self._breaker = CircuitBreaker(
            llm,
            probe_interval=self.options.probe_interval,
            stopping=self._stopping,
            stop=self.stop,
            recovered=lambda: self._resumption.resume(),
        )
        self._resumption = Resumption(
            store,
            handlers,
            breaker=self._breaker,
            receivers=self._receivers,
            stopping=self._stopping,
            interval=self.options.resume_interval,
            run=self._run_resumed,
        )
        self._exit_capture: asyncio.Task[None] | None = None
        self._submitter = self._batch_submitter()
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

    def _check_llm_mode(self) -> None:
        """Ordered handlers cannot run batch mode: refuse to start one the settings put in it."""
        options = getattr(self.llm, "options", None)
        if getattr(options, "llm_mode", "live") != "batch":
            return
        for registered in self.handlers:
            spec = registered.spec
            if spec.ordered_by and spec.llm_mode != "live":
                raise ValueError(
                    f"handler {spec.name!r} is ordered (ordered_by={spec.ordered_by!r}) and "
                    "cannot wait hours for a Batch-API round: set DOCBUS_LLM__MODE=live, or "
                    "@handler(llm_mode='live') on it"
                )

    def _batch_submitter(self) -> Any:
        """The batch-mode submitter this worker runs beside its handlers, or None: any
        worker with an LLM client and an unordered handler may be asked for batch mode (a
        batch published with ``--llm-mode batch``), and one submitter acts at a time."""
        make = getattr(self.llm, "batch_submitter", None)
        if make is None or getattr(self.llm, "store", None) is None:
            return None
        if all(h.spec.ordered_by for h in self.handlers):
            return None
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # a refused key, role or endpoint opens the breaker, as a live call's systemic failure
        # does; the Batch API taking them again closes it
        return make(
            holder,
            resumable=self._resumption.wake,
            refused=lambda _: self._breaker.open(),
            accepted=self._breaker.close,
        )

    # --- public ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop receiving; in-flight handlers get the grace period to finish, and messages
        received ahead that no handler has started are given back to the broker now."""
        if not self._stopping.is_set():
            logger.info("worker stopping: no new messages, finishing in-flight handlers")
        self._stopping.set()
        self._admission.give_back_waiting()

    @property
    def paused(self) -> bool:
        """Whether the circuit breaker holds receiving (:mod:`subscriber.breaker`)."""
        return self._breaker.is_open

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
        started = self._started = time.monotonic()
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
        self._not_receiving = len(loops)
        self._admission.receivers = max(1, sum(not h.spec.ordered_by for h in self.handlers))
        helpers = [
            asyncio.create_task(self._watch_idle()),
            asyncio.create_task(self._resumption.loop()),
            asyncio.create_task(self._capture_loop()),
            asyncio.create_task(heartbeat.beat(self)),
        ]
        if self._submitter is not None:
            # its run ends when stopping is set, giving up the lease (not cancelled below
            # before it has: the next worker takes over at once)
            submitting = asyncio.create_task(self._submitter.run(self._stopping))
        else:
            submitting = None
        try:
            await asyncio.gather(*loops)
        finally:
            self._stopping.set()
            await self._finish_exit_capture()
            if submitting is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(submitting, self.options.shutdown_grace)
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
            self.report.parked = await self._resumption.left_parked()
            self.report.seconds = time.monotonic() - started
        return self.report

    def vitals(self) -> heartbeat.Vitals:
        """How the worker is doing now (what its heartbeat reports)."""
        paused = self._breaker.is_open
        return heartbeat.Vitals(len(self._in_flight), paused, self._taken)

    # --- receiving ------------------------------------------------------------------------
    async def _receive_loop(self, registered: RegisteredHandler) -> None:
        spec = registered.spec
        async with open_receiver(
            self.client,
            spec.topic,
            spec.subscription,
            prefetch=self.options.prefetch,
            ranged=self.options.ranged_completions,
        ) as receiver:
            self._receivers[spec.name] = receiver
            mine = self._handler_tasks.setdefault(spec.name, set())
            try:
                # parked messages whose cause has cleared go first, not a resume round later
                await self._resumption.resume(registered)
                first = True
                while not self._stopping.is_set():
                    await self._breaker.wait_closed()
                    if self._stopping.is_set():
                        break
                    granted = await self._take_credits()
                    if granted == 0:
                        break
                    if first:
                        first = False
                        self._began_receiving()
                    try:
                        messages = await receiver.receive(granted, self._receive_wait())
                    except MessagingError as exc:
                        self._admission.release_credits(granted)
                        logger.warning("%s", exc)
                        await self._pause_for(self.options.backoff.base)
                        continue
                    self._admission.release_credits(granted - len(messages))
                    if messages:
                        self._last_activity = time.monotonic()
                    for message in messages:
                        self._taken += 1
                        self._start(registered, receiver, message, mine)
                await self._drain(mine)
            finally:
                self._receivers.pop(spec.name, None)

    def _began_receiving(self) -> None:
        """One receive loop has begun receiving; once all have, the idle clock starts."""
        self._not_receiving -= 1
        if self._not_receiving == 0:
            self._last_activity = time.monotonic()
            self.report.receiving_after = self._last_activity - self._started

    def _receive_wait(self) -> float:
        """How long a receive waits for messages: ``receive_wait``, but not past the moment an
        idle worker with nothing in flight exits, so that exit does not wait out one more
        receive (sessions keep theirs: a session receiver waits as it locks a session).
        While messages wait to be settled, or resumed parked messages run (each ends in a
        settlement within moments: a batch round's deliveries park again, a defer each), at
        most :data:`BUSY_RECEIVE_WAIT`: their settlements wait for the link while it
        receives, and a round's re-runs went at one per credit per ``receive_wait``."""
        wait = self.options.receive_wait
        if self._admission.completing or self._resumption.waiting:
            return min(wait, BUSY_RECEIVE_WAIT)
        if self.options.until_idle is None or self._in_flight or self._not_receiving:
            return wait
        left = self.options.until_idle - (time.monotonic() - self._last_activity)
        return max(MIN_RECEIVE_WAIT, min(wait, left))

    async def _session_loop(self, registered: RegisteredHandler) -> None:
        """Ordered handlers: lock the next session with messages, run them in order, repeat."""
        spec = registered.spec
        first = True
        while not self._stopping.is_set():
            await self._breaker.wait_closed()
            if self._stopping.is_set():
                return
            try:
                # Locking a session is this loop's receive, and it includes connecting: the
                # idle clock waits for the first attempt's answer (a session, none, or an error).
                async with open_next_session(
                    self.client, spec.topic, spec.subscription, max_wait=self.options.receive_wait
                ) as receiver:
                    if first:
                        first = False
                        self._began_receiving()
                    if receiver is None:
                        continue  # no session has messages right now
                    renewal = asyncio.create_task(keep_session_lock(receiver))
                    try:
                        await self._drain_session(registered, receiver)
                    finally:
                        renewal.cancel()
                        await asyncio.gather(renewal, return_exceptions=True)
            except MessagingError as exc:
                if first:
                    first = False
                    self._began_receiving()
                logger.warning("%s", exc)
                await self._pause_for(self.options.backoff.base)

    async def _drain_session(self, registered: RegisteredHandler, receiver: Receiver) -> None:
        while not self._stopping.is_set():
            granted = await self._take_credits(most=1)
            if granted == 0:
                return
            try:
                messages = await receiver.receive(1, self.options.receive_wait)
            except BaseException:
                self._admission.release_credits(granted)
                raise
            if not messages:
                self._admission.release_credits(granted)
                return  # this session is drained: let another receiver take the next one
            self._last_activity = time.monotonic()
            self._taken += 1
            task = self._start(registered, receiver, messages[0])
            # One at a time within a session: the next message waits for this settlement.
            await asyncio.shield(task)

    async def _take_credits(self, most: int | None = None, *, first: bool = False) -> int:
        """Credits for the next receive (:meth:`Admission.take_credits`, ``first``: ahead of
        the receive loops), no more than ``max_messages`` leaves; 0 once stopping (or done)."""
        if self.options.max_messages is not None:
            remaining = self.options.max_messages - self._taken
            if remaining <= 0:
                self._stopping.set()
                return 0
            most = remaining if most is None else min(most, remaining)
        return await self._admission.take_credits(most, first=first)

    def _start(
        self,
        registered: RegisteredHandler,
        receiver: Receiver,
        message: ServiceBusReceivedMessage,
        mine: set[asyncio.Task[None]] | None = None,
        parked: ParkedMessage | None = None,
    ) -> asyncio.Task[None]:
        """Run ``message`` (holding an admission credit) as soon as a handler slot frees.
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
        receiver: Receiver,
        message: ServiceBusReceivedMessage,
        checkpoints: asyncio.Task[dict[str, Any]] | None = None,
        parked: ParkedMessage | None = None,
    ) -> None:
        ticket = self._admission.ticket()

        async def give_back() -> None:
            await self._processor.give_back(registered, receiver, message)

        async def give_back_unseen() -> None:
            await self._processor.give_back_unseen(registered, receiver, message)

        try:
            if not await self._admission.wait_for_slot(ticket, give_back_unseen):
                return
            # (a resumed message's record says a worker has it since it was fetched back:
            # Resumption marks each page it fetches)
            outcome = await self._processor.process(
                registered,
                receiver,
                message,
                handler_returned=ticket.handler_returned,
                checkpoints=checkpoints,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("unexpected failure processing %s", message.message_id)
            # never left locked until its lock runs out: give it back now
            await give_back()
            return
        finally:
            if parked is not None:
                self._resumption.waiting.discard(parked.id)
            if checkpoints is not None:
                cancel_unawaited(checkpoints)
            if self._renewer is not None:
                self._renewer.release(message)
            ticket.release()
            self._last_activity = time.monotonic()
        if parked is not None:
            await self._resumption.settled(parked, outcome.action)
        self.report.add(outcome)
        if outcome.action is Action.PARK and outcome.reason == "SystemicFailure":
            self._breaker.open()
        if self.on_outcome is not None:
            self.on_outcome(outcome)

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
            if self._not_receiving and not self.paused:
                # still opening links: nothing has been waited for yet (a paused circuit holds
                # receiving back: then the last probe decides, as below)
                await self._pause_for(min(0.2, idle))
                continue
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
            if not await self._breaker.probe():
                logger.warning(
                    "LLM endpoint still failing after %.0fs without work: stopping; parked "
                    "messages stay parked (docbus parked list) and resume when a worker finds "
                    "the endpoint working",
                    self.options.until_idle or 0,
                )
                return True
            self._breaker.close()
        if self._submitter is not None and await self._batch_work_left():
            return False  # requests wait for provider batches: their deliveries come back
        return await self._resumption.resume() == 0 and not self._in_flight

    async def _batch_work_left(self) -> bool:
        """Whether requests still wait for provider batches; if none does, deliveries parked
        on requests answered meanwhile are marked for resumption first (the submitter marks
        them just after its apply: an idle check in between must not end the work)."""
        try:
            if await self.store.has_open_llm_requests():
                return True
            await self.store.request_resume_for_llm_requests(None)
        except StoreError as exc:
            logger.warning("cannot tell whether batch-mode requests are open: %s", exc)
        return False

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
            except MessagingEntityNotFound as exc:
                # The subscription is missing: its receive loop fails on that (and `docbus
                # worker` says so in one line at its start); a warning here would say it twice.
                logger.debug("dead-letter capture of %s skipped: %s", spec.subscription, exc)
                continue
            except (MessagingError, StoreError) as exc:
                logger.warning("dead-letter capture of %s failed: %s", spec.subscription, exc)
                continue
            except Exception:  # a bug must not stop the capture loop or the idle exit
                logger.exception("dead-letter capture of %s failed", spec.subscription)
                continue
            if captured:
                logger.info("captured %d dead letters of %s", captured, spec.subscription)

    # --- parked messages ------------------------------------------------------------------
    async def _run_resumed(
        self, registered: RegisteredHandler, receiver: Receiver, fetched: Fetched
    ) -> int:
        """Start parked messages fetched back, each as a credit frees; returns how many
        started. Stopping first: the rest go back to their park."""
        if self._renewer is not None:
            for _, message in fetched:  # their locks tick while they wait for a credit below
                self._renewer.register(receiver, message)
        started = 0
        credits = 0
        for index, (parked, message) in enumerate(fetched):
            if credits == 0:
                # every credit free now, up to what is left to start, ahead of the receive
                # loops: one at a time behind them, an open receive on an empty subscription
                # took the rest back at each turn and a round's deliveries trickled in one per
                # receive_wait (batch mode: a provider batch every few of them)
                credits = await self._take_credits(most=len(fetched) - index, first=True)
            if credits == 0:  # stopping: back to their park
                for _, unstarted in fetched[index:]:
                    if self._renewer is not None:
                        self._renewer.release(unstarted)
                    await self._processor.give_back(registered, receiver, unstarted)
                break
            credits -= 1
            self._last_activity = time.monotonic()
            mine = self._handler_tasks.setdefault(registered.spec.name, set())
            self._resumption.waiting.add(parked.id)
            self._start(registered, receiver, message, mine, parked=parked)
            started += 1
        return started
