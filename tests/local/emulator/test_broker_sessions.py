"""Sessions in the broker engine: exclusive locks, FIFO per session, next-available, state."""

from __future__ import annotations

import asyncio
import time

import pytest

from docbus.local.emulator.broker import Queue
from docbus.local.emulator.config import EntityProperties
from docbus.local.emulator.errors import (
    MessageLockLost,
    NotAllowed,
    OperationTimeout,
    SessionCannotBeLocked,
    SessionLockLost,
)
from tests.local.emulator.broker_support import FakeClock, FakeConsumer, msg, wait_until


def session_queue(clock: FakeClock | None = None, **props: object) -> Queue:
    properties = EntityProperties(requires_session=True, **props)  # type: ignore[arg-type]
    return Queue("sq", properties, clock=clock) if clock else Queue("sq", properties)


async def test_named_session_gets_only_its_messages_in_order() -> None:
    queue = session_queue()
    for session_id in ("a", "b", "a", "b", "a"):
        queue.enqueue(msg(session_id=session_id))
    consumer = FakeConsumer()
    assert await queue.accept_session(consumer, "a", 1.0) == "a"
    assert consumer.session_id == "a"
    consumer.grant(queue, 10)
    assert [m.sequence_number for m in consumer.take()] == [1, 3, 5]
    queue.enqueue(msg(session_id="a"))
    queue.enqueue(msg(session_id="b"))
    assert [m.sequence_number for m in consumer.take()] == [6]


async def test_a_held_session_cannot_be_locked_by_another_consumer() -> None:
    queue = session_queue()
    await queue.accept_session(FakeConsumer(), "a", 1.0)
    with pytest.raises(SessionCannotBeLocked):
        await queue.accept_session(FakeConsumer(), "a", 1.0)


async def test_named_session_can_be_locked_before_it_has_messages() -> None:
    queue = session_queue()
    consumer = FakeConsumer(credit=5)
    await queue.accept_session(consumer, "later", 1.0)
    queue.enqueue(msg(session_id="later"))
    assert len(consumer.take()) == 1


async def test_next_available_skips_locked_and_empty_sessions() -> None:
    queue = session_queue()
    queue.enqueue(msg(session_id="a"))
    queue.enqueue(msg(session_id="b"))
    await queue.accept_session(FakeConsumer(), "a", 1.0)
    await queue.accept_session(FakeConsumer(), "empty", 1.0)
    consumer = FakeConsumer()
    assert await queue.accept_session(consumer, None, 1.0) == "b"
    consumer.grant(queue, 5)
    assert [m.session_id for m in consumer.take()] == ["b"]


async def test_next_available_waits_for_a_session_with_messages() -> None:
    queue = session_queue()
    consumer = FakeConsumer()
    waiting = asyncio.create_task(queue.accept_session(consumer, None, 5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    queue.enqueue(msg(session_id="new"))
    assert await asyncio.wait_for(waiting, 1.0) == "new"
    assert consumer.session_id == "new"


async def test_next_available_times_out_when_no_session_has_messages() -> None:
    queue = session_queue()
    started = time.monotonic()
    with pytest.raises(OperationTimeout):
        await queue.accept_session(FakeConsumer(), None, 0.3)
    assert 0.25 < time.monotonic() - started < 2.0
    queue.enqueue(msg(session_id="x"))
    # The timed-out waiter must not have grabbed the session.
    assert await queue.accept_session(FakeConsumer(), None, 0.1) == "x"


async def test_cancelled_next_available_wait_leaves_no_lock_behind() -> None:
    queue = session_queue()
    waiting = asyncio.create_task(queue.accept_session(FakeConsumer(), None, 5.0))
    await asyncio.sleep(0.02)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    queue.enqueue(msg(session_id="x"))
    assert await queue.accept_session(FakeConsumer(), None, 0.1) == "x"


async def test_session_lock_expiry_tells_the_consumer_and_frees_the_session() -> None:
    queue = session_queue(lock_duration=0.3)
    queue.enqueue(msg(session_id="a"))
    holder = FakeConsumer(credit=1)
    await queue.accept_session(holder, "a", 1.0)
    [delivered] = holder.take()
    token = delivered.lock_token  # the message object is live: keep the token delivered
    assert token is not None
    await wait_until(lambda: holder.lost == 1)
    with pytest.raises(MessageLockLost):
        queue.complete(token)
    with pytest.raises(SessionLockLost):
        queue.renew_session_lock("a")
    successor = FakeConsumer(credit=1)
    assert await queue.accept_session(successor, None, 1.0) == "a"
    [again] = successor.take()
    assert again.sequence_number == 1
    assert again.delivery_count == 1  # the lost lock counted the delivery


async def test_renewed_session_lock_outlives_the_lock_duration() -> None:
    queue = session_queue(lock_duration=0.3)
    holder = FakeConsumer()
    await queue.accept_session(holder, "a", 1.0)
    first = queue.session_locked_until("a")
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert queue.renew_session_lock("a") > first
    assert holder.lost == 0


async def test_session_state_round_trips_and_needs_the_lock() -> None:
    queue = session_queue()
    with pytest.raises(SessionLockLost):
        queue.get_session_state("a")
    await queue.accept_session(FakeConsumer(), "a", 1.0)
    assert queue.get_session_state("a") is None
    queue.set_session_state("a", b"x")
    assert queue.get_session_state("a") == b"x"
    queue.set_session_state("a", None)
    assert queue.get_session_state("a") is None


async def test_lazy_session_lock_expiry_is_noticed_on_use() -> None:
    clock = FakeClock()
    queue = session_queue(clock, lock_duration=10.0)
    holder = FakeConsumer()
    await queue.accept_session(holder, "a", 1.0)
    clock.advance(11)
    with pytest.raises(SessionLockLost):
        queue.get_session_state("a")
    assert holder.lost == 1


async def test_removing_the_consumer_releases_the_session_and_its_messages() -> None:
    queue = session_queue()
    queue.enqueue(msg(session_id="a"))
    queue.enqueue(msg(session_id="a"))
    first = FakeConsumer(credit=1)
    await queue.accept_session(first, "a", 1.0)
    [held] = first.take()
    held_token = held.lock_token
    queue.remove_consumer(first)
    assert first.lost == 0  # a detach is not a lock loss
    queue.remove_consumer(first)  # idempotent
    second = FakeConsumer(credit=5)
    assert await queue.accept_session(second, "a", 1.0) == "a"
    got = second.take()
    assert [m.sequence_number for m in got] == [1, 2]
    assert got[0].delivery_count == 1
    assert got[0].lock_token != held_token
    assert held_token is not None
    with pytest.raises(MessageLockLost):
        queue.complete(held_token)


async def test_session_messages_settle_by_lock_token() -> None:
    queue = session_queue()
    queue.enqueue(msg(session_id="a"))
    queue.enqueue(msg(session_id="a"))
    consumer = FakeConsumer(credit=5)
    await queue.accept_session(consumer, "a", 1.0)
    first, second = consumer.take()
    assert first.lock_token is not None and second.lock_token is not None
    assert first.locked_until == queue.session_locked_until("a")
    queue.complete(first.lock_token)
    queue.abandon(second.lock_token)
    [again] = consumer.take()
    assert (again.sequence_number, again.delivery_count) == (2, 1)


async def test_list_sessions_names_sessions_with_messages_or_state() -> None:
    queue = session_queue()
    for session_id in ("s1", "s2", "s3"):
        queue.enqueue(msg(session_id=session_id))
    await queue.accept_session(FakeConsumer(), "stateful", 1.0)
    queue.set_session_state("stateful", b"1")
    await queue.accept_session(FakeConsumer(), "nothing", 1.0)
    assert queue.list_sessions(0, 100) == ["s1", "s2", "s3", "stateful"]
    assert queue.list_sessions(1, 2) == ["s2", "s3"]


async def test_emptied_unlocked_sessions_are_forgotten() -> None:
    queue = session_queue()
    queue.enqueue(msg(session_id="a"))
    consumer = FakeConsumer(credit=1)
    await queue.accept_session(consumer, "a", 1.0)
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    queue.complete(delivered.lock_token)
    queue.remove_consumer(consumer)
    assert queue.list_sessions(0, 10) == []
    assert queue.sessions is not None
    assert queue.sessions.get("a") is None


async def test_consumer_with_a_preset_session_id_is_added_as_a_named_accept() -> None:
    queue = session_queue()
    queue.enqueue(msg(session_id="a"))
    consumer = FakeConsumer(credit=5, session_id="a")
    queue.add_consumer(consumer)
    assert len(consumer.take()) == 1
    with pytest.raises(SessionCannotBeLocked):
        queue.add_consumer(FakeConsumer(session_id="a"))
    with pytest.raises(NotAllowed):
        queue.add_consumer(FakeConsumer())


async def test_one_slow_session_does_not_block_another() -> None:
    queue = session_queue()
    queue.enqueue(msg(session_id="a"))
    queue.enqueue(msg(session_id="b"))
    slow, fast = FakeConsumer(), FakeConsumer(credit=5)
    await queue.accept_session(slow, "a", 1.0)
    await queue.accept_session(fast, "b", 1.0)
    assert [m.session_id for m in fast.take()] == ["b"]
