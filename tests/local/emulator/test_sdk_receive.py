"""Receiving and settling through the real SDK: peek-lock, receive-and-delete, locks, DLQ."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import MessageLockLostError, MessagingEntityNotFoundError

from tests.local.emulator.helpers import receive_all


def send(client: ServiceBusClient, queue: str, *bodies: str) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages([ServiceBusMessage(b) for b in bodies])


def test_peek_lock_delivery_carries_lock_sequence_and_times(client: ServiceBusClient) -> None:
    send(client, "q", "a", "b")
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with client.get_queue_receiver("q") as receiver:
        got = receiver.receive_messages(max_message_count=3, max_wait_time=2)
        assert [str(m) for m in got] == ["a", "b"]
        for m in got:
            assert m.lock_token is not None and m.delivery_count == 0
            assert m.sequence_number >= 1
            assert m.enqueued_time_utc >= before
            lock_seconds = (m.locked_until_utc - m.enqueued_time_utc).total_seconds()
            assert 29 <= lock_seconds <= 32
            started = time.monotonic()
            receiver.complete_message(m)
            assert time.monotonic() - started < 1
        assert receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []


def test_receive_and_delete_gets_settled_messages_that_are_then_gone(
    client: ServiceBusClient,
) -> None:
    send(client, "q", "x", "y")
    with client.get_queue_receiver("q", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as r:
        got = []
        while len(got) < 2:
            got += r.receive_messages(max_message_count=2, max_wait_time=2)
        assert sorted(str(m) for m in got) == ["x", "y"]
        assert all(m.lock_token is None for m in got)
    assert receive_all(client, "q", 0) == []


def test_abandon_redelivers_with_a_higher_delivery_count(client: ServiceBusClient) -> None:
    send(client, "q", "again")
    with client.get_queue_receiver("q") as receiver:
        (first,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        receiver.abandon_message(first)
        (second,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        assert str(second) == "again" and second.delivery_count == 1
        assert second.sequence_number == first.sequence_number
        receiver.complete_message(second)


def test_dead_letter_keeps_reason_description_body_and_sequence(client: ServiceBusClient) -> None:
    send(client, "q", "poison")
    with client.get_queue_receiver("q") as receiver:
        (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        receiver.dead_letter_message(m, reason="BadInput", error_description="no text field")
    (dead,) = receive_all(client, "q", 1, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    assert str(dead) == "poison"
    assert dead.dead_letter_reason == "BadInput"
    assert dead.dead_letter_error_description == "no text field"
    assert dead.sequence_number == m.sequence_number
    assert receive_all(client, "q", 0) == []


def test_subscription_dead_letter_queue_is_receivable(client: ServiceBusClient) -> None:
    with client.get_topic_sender("t") as sender:
        sender.send_messages(ServiceBusMessage("sub-poison"))
    with client.get_subscription_receiver("t", "all") as receiver:
        (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        receiver.dead_letter_message(m, reason="r", error_description="d")
    with client.get_subscription_receiver(
        "t", "all", sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as receiver:
        (dead,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        assert (str(dead), dead.dead_letter_reason) == ("sub-poison", "r")
        receiver.complete_message(dead)


def test_unknown_subscription_is_not_found(client: ServiceBusClient) -> None:
    with pytest.raises(MessagingEntityNotFoundError):
        with client.get_subscription_receiver("t", "missing") as receiver:
            receiver.receive_messages(max_message_count=1, max_wait_time=1)


def test_defer_then_receive_deferred_by_sequence_number(client: ServiceBusClient) -> None:
    send(client, "q", "later")
    with client.get_queue_receiver("q") as receiver:
        (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        receiver.defer_message(m)
        assert receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []
        (peeked,) = receiver.peek_messages(max_message_count=5, sequence_number=m.sequence_number)
        assert peeked.state.name == "DEFERRED"
        (deferred,) = receiver.receive_deferred_messages([m.sequence_number])
        assert str(deferred) == "later" and deferred.lock_token is not None
        receiver.complete_message(deferred)
        assert receiver.peek_messages(max_message_count=5, sequence_number=1) == []


def test_max_delivery_count_moves_the_message_to_the_dead_letter_queue(
    client: ServiceBusClient,
) -> None:
    send(client, "q-mdc2", "flaky")
    with client.get_queue_receiver("q-mdc2") as receiver:
        for expected_count in (0, 1):
            (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
            assert m.delivery_count == expected_count
            receiver.abandon_message(m)
        assert receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []
    (dead,) = receive_all(client, "q-mdc2", 1, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert "2" in (dead.dead_letter_error_description or "")


def test_expired_lock_loses_the_message_and_redelivers_it(client: ServiceBusClient) -> None:
    send(client, "q-lock", "slow")
    with client.get_queue_receiver("q-lock") as receiver:
        (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        time.sleep(1.5)  # let the 1 s lock expire
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(m)
        (again,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        assert str(again) == "slow" and again.delivery_count == 1
        receiver.complete_message(again)


def test_broker_answers_late_settlement_with_lock_lost(client: ServiceBusClient) -> None:
    send(client, "q-lock", "late")
    with client.get_queue_receiver("q-lock") as receiver:
        (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        time.sleep(1.5)
        # Hide the expiry from the SDK's own check so the settlement reaches the broker.
        m._locked_until_utc = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        started = time.monotonic()
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(m)
        assert time.monotonic() - started < 2


def test_renew_lock_extends_it_and_a_later_complete_succeeds(client: ServiceBusClient) -> None:
    send(client, "q-lock", "renewed")
    with client.get_queue_receiver("q-lock") as receiver:
        (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        first_until = m.locked_until_utc
        for _ in range(3):
            time.sleep(0.5)
            new_until = receiver.renew_message_lock(m)
        assert new_until > first_until
        assert m.locked_until_utc == new_until
        receiver.complete_message(m)  # 1.5 s after receive: only the renewals kept the lock
    assert receive_all(client, "q-lock", 0) == []


def test_closing_a_prefetching_receiver_releases_without_counting(
    client: ServiceBusClient,
) -> None:
    send(client, "q", *[f"p{i}" for i in range(5)])
    with client.get_queue_receiver("q", prefetch_count=5) as receiver:
        (first,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        receiver.complete_message(first)
    rest = receive_all(client, "q", 4)
    assert sorted(str(m) for m in rest) == ["p1", "p2", "p3", "p4"]
    assert all(m.delivery_count == 0 for m in rest)


def test_ttl_expiry_dead_letters_when_configured(client: ServiceBusClient) -> None:
    send(client, "q-ttl-dlq", "short-lived")
    time.sleep(1.3)
    assert receive_all(client, "q-ttl-dlq", 0) == []
    (dead,) = receive_all(client, "q-ttl-dlq", 1, sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    assert dead.dead_letter_reason == "TTLExpiredException"


def test_ttl_expiry_drops_when_dead_lettering_is_off(client: ServiceBusClient) -> None:
    send(client, "q-ttl-drop", "gone")
    time.sleep(1.3)
    assert receive_all(client, "q-ttl-drop", 0) == []
    assert receive_all(client, "q-ttl-drop", 0, sub_queue=ServiceBusSubQueue.DEAD_LETTER) == []


def test_message_ttl_applies_below_the_entity_default(client: ServiceBusClient) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage("brief", time_to_live=dt.timedelta(seconds=1)))
        sender.send_messages(ServiceBusMessage("lasting"))
    time.sleep(1.3)
    assert [str(m) for m in receive_all(client, "q", 1)] == ["lasting"]
