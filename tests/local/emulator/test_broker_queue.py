"""Queue semantics of the broker engine: delivery, credit, locks, settlement, DLQ, peek."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from docbus.local.emulator.broker import Queue
from docbus.local.emulator.config import EntityProperties
from docbus.local.emulator.errors import MessageLockLost, MessageNotFound, NotAllowed, QuotaExceeded
from docbus.local.emulator.message import BrokeredMessage, MessageState, ReceiveMode
from tests.local.emulator.broker_support import FakeClock, FakeConsumer, msg, wait_until


def make_queue(clock: FakeClock | None = None, **props: object) -> Queue:
    properties = EntityProperties(**props)  # type: ignore[arg-type]
    return Queue("q", properties, clock=clock) if clock else Queue("q", properties)


async def test_enqueue_assigns_sequence_numbers_from_one_and_enqueued_time() -> None:
    clock = FakeClock()
    queue = make_queue(clock)
    assert queue.enqueue(msg()) == 1
    clock.advance(1)
    assert queue.enqueue(msg()) == 2
    first, second = queue.messages()
    assert (first.sequence_number, second.sequence_number) == (1, 2)
    assert second.enqueued_time == first.enqueued_time + 1
    assert first.expires_at is None
    assert first.state == MessageState.ACTIVE
    assert queue.message_count() == 2


async def test_peek_lock_delivery_locks_the_message_for_the_lock_duration() -> None:
    clock = FakeClock()
    queue = make_queue(clock, lock_duration=30.0)
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=1)
    queue.add_consumer(consumer)
    [delivered] = consumer.take()
    assert isinstance(delivered.lock_token, uuid.UUID)
    assert delivered.locked_until == clock.now + 30.0
    assert delivered.delivery_count == 0
    assert queue.message_count() == 1  # still held until settled


async def test_credit_limits_deliveries_and_more_credit_resumes_them() -> None:
    queue = make_queue()
    for _ in range(3):
        queue.enqueue(msg())
    consumer = FakeConsumer(credit=2)
    queue.add_consumer(consumer)
    assert [m.sequence_number for m in consumer.take()] == [1, 2]
    consumer.grant(queue, 5)
    assert [m.sequence_number for m in consumer.take()] == [3]
    queue.enqueue(msg())
    assert [m.sequence_number for m in consumer.take()] == [4]
    assert consumer.credit == 3


async def test_complete_removes_the_message_and_a_second_settlement_is_lock_lost() -> None:
    queue = make_queue()
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=1)
    queue.add_consumer(consumer)
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    token = delivered.lock_token
    queue.complete(token)
    assert queue.message_count() == 0
    with pytest.raises(MessageLockLost):
        queue.complete(token)
    with pytest.raises(MessageLockLost):
        queue.abandon(uuid.uuid4())


async def test_abandon_counts_a_delivery_and_redelivers_first() -> None:
    queue = make_queue()
    queue.enqueue(msg())
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=1)
    queue.add_consumer(consumer)
    [first] = consumer.take()
    assert first.lock_token is not None
    queue.abandon(first.lock_token)
    consumer.grant(queue, 1)
    [again] = consumer.take()
    assert again.sequence_number == 1
    assert again.delivery_count == 1


async def test_max_delivery_count_dead_letters_after_that_many_deliveries() -> None:
    queue = make_queue(max_delivery_count=2)
    queue.enqueue(msg(b"poison"))
    consumer = FakeConsumer(credit=10)
    queue.add_consumer(consumer)
    counts = []
    for _ in range(2):
        [delivered] = consumer.take()
        counts.append(delivered.delivery_count)
        assert delivered.lock_token is not None
        queue.abandon(delivered.lock_token)
    assert counts == [0, 1]
    assert consumer.take() == []
    assert queue.message_count() == 0
    assert queue.dead_letter_queue is not None
    [dead] = queue.dead_letter_queue.messages()
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_description == (
        "Message could not be consumed after 2 delivery attempts."
    )
    assert dead.sequence_number == 1
    assert dead.body_sections == b"poison"
    assert dead.lock_token is None


async def test_release_unlocks_without_counting_a_delivery() -> None:
    queue = make_queue()
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=1)
    queue.add_consumer(consumer)
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    queue.release(delivered.lock_token)
    consumer.grant(queue, 1)
    [again] = consumer.take()
    assert again.delivery_count == 0


async def test_defer_sets_aside_until_received_by_sequence_number() -> None:
    queue = make_queue()
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=5)
    queue.add_consumer(consumer)
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    queue.defer(delivered.lock_token)
    queue.enqueue(msg())
    assert [m.sequence_number for m in consumer.take()] == [2]  # never the deferred one
    [peeked] = queue.peek(1, 1)
    assert peeked.state == MessageState.DEFERRED
    assert peeked.lock_token is None

    [again] = queue.receive_deferred([1], ReceiveMode.PEEK_LOCK)
    assert again.lock_token is not None
    assert again.state == MessageState.DEFERRED
    with pytest.raises(MessageNotFound):
        queue.receive_deferred([1], ReceiveMode.PEEK_LOCK)  # already locked
    queue.abandon(again.lock_token)  # stays deferred, counted
    [third] = queue.receive_deferred([1], ReceiveMode.PEEK_LOCK)
    assert third.delivery_count == 1
    assert third.lock_token is not None
    queue.complete(third.lock_token)
    assert queue.get(1) is None


async def test_receive_deferred_refuses_unknown_or_non_deferred_sequence_numbers() -> None:
    queue = make_queue()
    queue.enqueue(msg())
    with pytest.raises(MessageNotFound):
        queue.receive_deferred([1], ReceiveMode.PEEK_LOCK)  # active, not deferred
    with pytest.raises(MessageNotFound):
        queue.receive_deferred([9999], ReceiveMode.PEEK_LOCK)


async def test_receive_deferred_in_receive_and_delete_mode_removes_them() -> None:
    queue = make_queue()
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=1)
    queue.add_consumer(consumer)
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    queue.defer(delivered.lock_token)
    [got] = queue.receive_deferred([1], ReceiveMode.RECEIVE_AND_DELETE)
    assert got.lock_token is None
    assert queue.message_count() == 0


async def test_dead_letter_keeps_sequence_number_reason_and_description() -> None:
    queue = make_queue()
    queue.enqueue(msg())
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=2)
    queue.add_consumer(consumer)
    first, second = consumer.take()
    assert first.lock_token is not None and second.lock_token is not None
    queue.dead_letter(second.lock_token, "r", "d")
    queue.dead_letter(first.lock_token, None, None)
    dlq = queue.dead_letter_queue
    assert dlq is not None
    assert [m.sequence_number for m in dlq.peek(1, 10)] == [1, 2]  # sequence order
    assert [(m.dead_letter_reason, m.dead_letter_description) for m in dlq.messages()] == [
        (None, None),
        ("r", "d"),
    ]
    dlq_consumer = FakeConsumer(credit=5)
    dlq.add_consumer(dlq_consumer)
    assert [m.sequence_number for m in dlq_consumer.take()] == [1, 2]


async def test_renew_lock_extends_it() -> None:
    clock = FakeClock()
    queue = make_queue(clock, lock_duration=10.0)
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=1)
    queue.add_consumer(consumer)
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    clock.advance(8)
    assert queue.renew_lock(delivered.lock_token) == clock.now + 10.0
    clock.advance(8)  # past the first deadline, inside the renewed one
    queue.complete(delivered.lock_token)
    assert queue.message_count() == 0


async def test_settling_after_the_lock_passed_is_lock_lost_and_counts_a_delivery() -> None:
    clock = FakeClock()
    queue = make_queue(clock, lock_duration=10.0)
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=1)
    queue.add_consumer(consumer)
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    clock.advance(10)
    with pytest.raises(MessageLockLost):
        queue.complete(delivered.lock_token)
    consumer.grant(queue, 1)
    [again] = consumer.take()
    assert again.delivery_count == 1


async def test_lock_expiry_redelivers_with_count_and_late_complete_is_lock_lost() -> None:
    queue = make_queue(lock_duration=0.2)
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=2)
    queue.add_consumer(consumer)
    await wait_until(lambda: len(consumer.received) == 1)
    first_token = consumer.received[0].lock_token
    assert first_token is not None
    await wait_until(lambda: len(consumer.received) == 2)  # redelivered after expiry
    again = consumer.received[1]
    assert again.sequence_number == 1
    assert again.delivery_count == 1
    assert again.lock_token != first_token
    with pytest.raises(MessageLockLost):
        queue.complete(first_token)
    assert again.lock_token is not None
    queue.complete(again.lock_token)
    assert queue.message_count() == 0


async def test_lock_expiry_at_the_delivery_limit_dead_letters() -> None:
    queue = make_queue(lock_duration=0.2, max_delivery_count=1)
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=5)
    queue.add_consumer(consumer)
    dlq = queue.dead_letter_queue
    assert dlq is not None
    await wait_until(lambda: dlq.message_count() == 1)
    assert queue.message_count() == 0
    assert dlq.messages()[0].dead_letter_reason == "MaxDeliveryCountExceeded"
    assert len(consumer.received) == 1


async def test_receive_and_delete_removes_on_delivery() -> None:
    queue = make_queue()
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=1, mode=ReceiveMode.RECEIVE_AND_DELETE)
    queue.add_consumer(consumer)
    [delivered] = consumer.take()
    assert delivered.lock_token is None
    assert queue.message_count() == 0


async def test_dispatch_is_round_robin_across_consumers_with_credit() -> None:
    queue = make_queue()
    a, b, empty = FakeConsumer(credit=10), FakeConsumer(credit=10), FakeConsumer()
    for consumer in (a, empty, b):
        queue.add_consumer(consumer)
    for _ in range(6):
        queue.enqueue(msg())
    assert [m.sequence_number for m in a.received] == [1, 3, 5]
    assert [m.sequence_number for m in b.received] == [2, 4, 6]
    assert empty.received == []


async def test_removed_consumer_gets_nothing_and_its_locks_stay_until_expiry() -> None:
    clock = FakeClock()
    queue = make_queue(clock, lock_duration=10.0)
    queue.enqueue(msg())
    gone, other = FakeConsumer(credit=5), FakeConsumer(credit=5)
    queue.add_consumer(gone)
    [held] = gone.take()
    queue.remove_consumer(gone)
    queue.add_consumer(other)
    queue.enqueue(msg())
    assert [m.sequence_number for m in other.take()] == [2]
    assert gone.take() == []
    assert held.lock_token is not None
    queue.complete(held.lock_token)  # still locked, still settleable


async def test_consumer_settling_inside_deliver_is_handled() -> None:
    queue = make_queue()

    def complete_at_once(message: BrokeredMessage) -> None:
        assert message.lock_token is not None
        queue.complete(message.lock_token)

    consumer = FakeConsumer(credit=10, on_deliver=complete_at_once)
    queue.add_consumer(consumer)
    for _ in range(5):
        queue.enqueue(msg())
    assert len(consumer.received) == 5
    assert queue.message_count() == 0


@pytest.mark.parametrize("mode", list(ReceiveMode))
async def test_a_failing_consumer_does_not_lose_the_message(mode: ReceiveMode) -> None:
    queue = make_queue()

    class Broken(FakeConsumer):
        def deliver(self, message: BrokeredMessage) -> None:
            raise RuntimeError("link went away")

    broken, good = Broken(credit=1, mode=mode), FakeConsumer(credit=1)
    queue.add_consumer(broken)
    queue.add_consumer(good)
    queue.enqueue(msg())
    [delivered] = good.take()
    assert delivered.delivery_count == 0


async def test_quota_exceeded_when_the_entity_is_full() -> None:
    queue = make_queue(max_size_bytes=250)
    queue.enqueue(msg(size=100))
    queue.enqueue(msg(size=100))
    with pytest.raises(QuotaExceeded):
        queue.enqueue(msg(size=100))
    consumer = FakeConsumer(credit=1, mode=ReceiveMode.RECEIVE_AND_DELETE)
    queue.add_consumer(consumer)
    queue.enqueue(msg(size=100))  # room again
    assert queue.size_bytes == 200


async def test_peek_is_inclusive_ordered_and_does_not_lock() -> None:
    clock = FakeClock()
    queue = make_queue(clock)
    for _ in range(5):
        queue.enqueue(msg())
    queue.enqueue(msg(scheduled=clock.now + 60))
    peeked = queue.peek(2, 3)
    assert [m.sequence_number for m in peeked] == [2, 3, 4]
    assert all(m.lock_token is None for m in peeked)
    assert [m.sequence_number for m in queue.peek(5, 10)] == [5, 6]
    assert queue.peek(6, 1)[0].state == MessageState.SCHEDULED
    assert queue.peek(7, 10) == []
    consumer = FakeConsumer(credit=10)
    queue.add_consumer(consumer)
    assert len(consumer.received) == 5  # peeking locked nothing


async def test_session_less_message_is_refused_by_a_session_queue() -> None:
    queue = make_queue(requires_session=True)
    with pytest.raises(NotAllowed, match="Session ID is null"):
        queue.enqueue(msg())
    with pytest.raises(NotAllowed):
        queue.add_consumer(FakeConsumer(credit=1))


async def test_accept_session_on_a_plain_queue_is_not_allowed() -> None:
    queue = make_queue()
    with pytest.raises(NotAllowed):
        await queue.accept_session(FakeConsumer(), "a", 1.0)


async def test_close_cancels_timers() -> None:
    queue = make_queue(lock_duration=0.1)
    queue.enqueue(msg())
    consumer = FakeConsumer(credit=2)
    queue.add_consumer(consumer)
    queue.close()
    await asyncio.sleep(0.3)  # longer than the lock: no redelivery after close
    assert len(consumer.received) == 1
