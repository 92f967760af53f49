"""Time in the broker engine: message TTL and expiry, scheduled messages."""

from __future__ import annotations

import asyncio
import time

import pytest

from docbus.local.emulator.broker import Queue
from docbus.local.emulator.config import EntityProperties
from docbus.local.emulator.errors import MessageNotFound
from docbus.local.emulator.message import MessageState, ReceiveMode
from tests.local.emulator.broker_support import FakeClock, FakeConsumer, msg, wait_until


def make_queue(clock: FakeClock | None = None, **props: object) -> Queue:
    properties = EntityProperties(**props)  # type: ignore[arg-type]
    return Queue("q", properties, clock=clock) if clock else Queue("q", properties)


async def test_expired_message_is_dead_lettered_when_the_entity_says_so() -> None:
    queue = make_queue(dead_lettering_on_message_expiration=True)
    queue.enqueue(msg(ttl=0.2))
    dlq = queue.dead_letter_queue
    assert dlq is not None
    await wait_until(lambda: dlq.message_count() == 1)
    assert queue.message_count() == 0
    [dead] = dlq.messages()
    assert dead.dead_letter_reason == "TTLExpiredException"
    assert dead.dead_letter_description == "The message expired and was dead lettered."


async def test_expired_message_is_dropped_by_default() -> None:
    queue = make_queue()
    queue.enqueue(msg(ttl=0.2))
    queue.enqueue(msg())
    await wait_until(lambda: queue.message_count() == 1)
    assert queue.dead_letter_queue is not None
    assert queue.dead_letter_queue.message_count() == 0
    assert queue.messages()[0].sequence_number == 2


async def test_expired_message_is_never_delivered() -> None:
    clock = FakeClock()
    queue = make_queue(clock, dead_lettering_on_message_expiration=True)
    queue.enqueue(msg(ttl=10))
    queue.enqueue(msg())
    clock.advance(10)  # the timer has not fired yet: dispatch must notice on its own
    consumer = FakeConsumer(credit=5)
    queue.add_consumer(consumer)
    assert [m.sequence_number for m in consumer.take()] == [2]
    assert queue.dead_letter_queue is not None
    assert [m.sequence_number for m in queue.dead_letter_queue.messages()] == [1]


async def test_expires_at_uses_the_lower_of_message_ttl_and_entity_default() -> None:
    clock = FakeClock()
    queue = make_queue(clock, default_message_ttl=100.0)
    queue.enqueue(msg(ttl=10))
    queue.enqueue(msg(ttl=1000))
    queue.enqueue(msg())
    assert [m.expires_at for m in queue.messages()] == [
        clock.now + 10,
        clock.now + 100,
        clock.now + 100,
    ]


async def test_locked_message_expires_when_its_lock_ends_not_before() -> None:
    clock = FakeClock()
    queue = make_queue(clock, lock_duration=60.0)
    queue.enqueue(msg(ttl=10))
    consumer = FakeConsumer(credit=1)
    queue.add_consumer(consumer)
    [delivered] = consumer.take()
    clock.advance(20)
    assert delivered.lock_token is not None
    assert queue.renew_lock(delivered.lock_token) > clock.now  # still held
    queue.abandon(delivered.lock_token)
    assert queue.message_count() == 0  # expired on unlock, not redelivered


async def test_peek_drops_expired_messages() -> None:
    clock = FakeClock()
    queue = make_queue(clock)
    queue.enqueue(msg(ttl=5))
    queue.enqueue(msg())
    clock.advance(6)
    assert [m.sequence_number for m in queue.peek(1, 10)] == [2]
    assert queue.message_count() == 1


async def test_dead_letter_queue_messages_never_expire() -> None:
    clock = FakeClock()
    queue = make_queue(clock, dead_lettering_on_message_expiration=True)
    queue.enqueue(msg(ttl=5))
    clock.advance(6)
    queue.peek(1, 10)  # expires it into the DLQ
    dlq = queue.dead_letter_queue
    assert dlq is not None
    clock.advance(1000)
    consumer = FakeConsumer(credit=1)
    dlq.add_consumer(consumer)
    assert len(consumer.take()) == 1


async def test_expired_deferred_message_moves_only_when_asked_for() -> None:
    clock = FakeClock()
    queue = make_queue(clock, dead_lettering_on_message_expiration=True)
    queue.enqueue(msg(ttl=5))
    consumer = FakeConsumer(credit=1)
    queue.add_consumer(consumer)
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    queue.defer(delivered.lock_token)
    clock.advance(10)
    assert queue.peek(1, 1)[0].state == MessageState.DEFERRED
    with pytest.raises(MessageNotFound):
        queue.receive_deferred([1], ReceiveMode.PEEK_LOCK)
    assert queue.dead_letter_queue is not None
    assert queue.dead_letter_queue.messages()[0].dead_letter_reason == "TTLExpiredException"


async def test_scheduled_message_is_invisible_until_its_time() -> None:
    queue = make_queue()
    consumer = FakeConsumer(credit=5)
    queue.add_consumer(consumer)
    now = time.time()
    seq = queue.enqueue(msg(scheduled=now + 0.3))
    assert seq == 1
    assert consumer.received == []
    [peeked] = queue.peek(1, 1)
    assert peeked.state == MessageState.SCHEDULED
    await wait_until(lambda: len(consumer.received) == 1)
    delivered = consumer.received[0]
    assert delivered.state == MessageState.ACTIVE
    assert delivered.enqueued_time == pytest.approx(now + 0.3)


async def test_schedule_returns_sequence_numbers_and_cancel_removes() -> None:
    clock = FakeClock()
    queue = make_queue(clock)
    numbers = queue.schedule([msg(scheduled=clock.now + 60), msg(scheduled=clock.now + 60)])
    assert numbers == [1, 2]
    queue.cancel_scheduled([1])
    assert [m.sequence_number for m in queue.messages()] == [2]
    with pytest.raises(MessageNotFound):
        queue.cancel_scheduled([1])
    with pytest.raises(MessageNotFound):
        queue.cancel_scheduled([777])


async def test_cancelled_scheduled_message_never_arrives() -> None:
    queue = make_queue()
    consumer = FakeConsumer(credit=5)
    queue.add_consumer(consumer)
    now = time.time()
    [gone] = queue.schedule([msg(scheduled=now + 0.2)])
    queue.schedule([msg(scheduled=now + 0.3)])
    queue.cancel_scheduled([gone])
    await wait_until(lambda: len(consumer.received) == 1)
    assert consumer.received[0].sequence_number == 2


async def test_scheduled_time_in_the_past_is_active_at_once() -> None:
    clock = FakeClock()
    queue = make_queue(clock)
    queue.enqueue(msg(scheduled=clock.now - 5))
    assert queue.messages()[0].state == MessageState.ACTIVE


async def test_scheduled_message_ttl_counts_from_its_enqueue_time() -> None:
    clock = FakeClock()
    queue = make_queue(clock)
    queue.enqueue(msg(scheduled=clock.now + 100, ttl=10))
    assert queue.messages()[0].expires_at == clock.now + 110


def test_entity_built_outside_a_loop_arms_its_timers_once_used_inside_one() -> None:
    queue = make_queue()  # no event loop is running here
    queue.enqueue(msg(ttl=0.1))

    async def first_use() -> None:
        queue.add_consumer(FakeConsumer())
        await wait_until(lambda: queue.message_count() == 0)

    asyncio.run(first_use())
