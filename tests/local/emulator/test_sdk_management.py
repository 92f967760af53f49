"""$management operations through the real SDK: peek, schedule, cancel, deferred lookups."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import MessageNotFoundError

from docbus.local.emulator.server import EmulatorThread
from tests.local.emulator.helpers import receive_all


def test_peek_does_not_lock_and_continues_where_it_stopped(client: ServiceBusClient) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}") for i in range(7)])
    with client.get_queue_receiver("q") as receiver:
        first = receiver.peek_messages(max_message_count=5)
        assert [str(m) for m in first] == [f"m{i}" for i in range(5)]
        assert all(m.lock_token is None and m.delivery_count == 0 for m in first)
        second = receiver.peek_messages(max_message_count=5)
        assert [str(m) for m in second] == ["m5", "m6"]
        assert receiver.peek_messages(max_message_count=5) == []
    got = receive_all(client, "q", 7)
    assert all(m.delivery_count == 0 for m in got)


def test_peek_on_an_empty_queue_returns_nothing(client: ServiceBusClient) -> None:
    with client.get_queue_receiver("q") as receiver:
        assert receiver.peek_messages(max_message_count=5) == []


def test_scheduled_message_waits_until_its_time(client: ServiceBusClient) -> None:
    with client.get_queue_receiver("q") as receiver, client.get_queue_sender("q") as sender:
        receiver.peek_messages(max_message_count=1)  # both links open before the clock starts
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
        (seq,) = sender.schedule_messages(ServiceBusMessage("scheduled"), when)
        assert seq >= 1
        (peeked,) = receiver.peek_messages(max_message_count=5, sequence_number=seq)
        assert peeked.state.name == "SCHEDULED"
        assert receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []
        got = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = receiver.receive_messages(max_message_count=1, max_wait_time=1)
        assert [str(m) for m in got] == ["scheduled"]
        assert dt.datetime.now(dt.UTC) >= when - dt.timedelta(milliseconds=50)
        receiver.complete_message(got[0])


def test_cancelled_scheduled_message_never_arrives(client: ServiceBusClient) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    with client.get_queue_sender("q") as sender:
        seqs = sender.schedule_messages([ServiceBusMessage("a"), ServiceBusMessage("b")], when)
        sender.cancel_scheduled_messages(seqs[0])
    time.sleep(1.2)
    assert [str(m) for m in receive_all(client, "q", 1)] == ["b"]


def test_scheduled_enqueue_time_on_a_plain_send_defers_visibility(
    client: ServiceBusClient,
) -> None:
    with client.get_queue_receiver("q") as receiver, client.get_queue_sender("q") as sender:
        receiver.peek_messages(max_message_count=1)
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
        sender.send_messages(ServiceBusMessage("soon", scheduled_enqueue_time_utc=when))
        assert receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []
    assert [str(m) for m in receive_all(client, "q", 1)] == ["soon"]


def test_topic_scheduling_reaches_subscriptions_and_can_be_cancelled(
    client: ServiceBusClient,
) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    with client.get_topic_sender("t") as sender:
        _keep, drop = sender.schedule_messages(
            [ServiceBusMessage("keep"), ServiceBusMessage("drop")], when
        )
        sender.cancel_scheduled_messages(drop)
    time.sleep(1.2)
    with client.get_subscription_receiver("t", "all") as receiver:
        got = receiver.receive_messages(max_message_count=5, max_wait_time=2)
        got += receiver.receive_messages(max_message_count=5, max_wait_time=0.3)
        assert [str(m) for m in got] == ["keep"]
        receiver.complete_message(got[0])


def test_unknown_deferred_sequence_number_is_message_not_found(emulator: EmulatorThread) -> None:
    with ServiceBusClient.from_connection_string(
        emulator.connection_string, retry_total=0
    ) as client:
        with client.get_queue_receiver("q") as receiver, pytest.raises(MessageNotFoundError):
            receiver.receive_deferred_messages([9999])
