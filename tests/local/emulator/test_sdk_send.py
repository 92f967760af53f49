"""Sending through the real azure-servicebus SDK: single messages, batches, topics, limits."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusQuotaExceededError,
)

from docbus.local.emulator.server import EmulatorThread
from tests.local.emulator.helpers import receive_all


def test_connection_string_names_the_emulator_host_and_port(emulator: EmulatorThread) -> None:
    text = emulator.connection_string
    assert text.startswith(f"Endpoint=sb://127.0.0.1:{emulator.emulator.port};")
    assert text.endswith("UseDevelopmentEmulator=true;")


def test_single_message_round_trips_every_property(client: ServiceBusClient) -> None:
    scheduled = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    sent = ServiceBusMessage(
        "body text",
        message_id="id-1",
        correlation_id="corr",
        subject="subj",
        content_type="text/plain",
        to="someone",
        reply_to="replies",
        time_to_live=dt.timedelta(minutes=5),
        scheduled_enqueue_time_utc=scheduled,
        application_properties={
            "s": "text",
            "i": 42,
            "f": 1.5,
            "b": True,
            "u": uuid.UUID(int=7),
            "t": dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        },
    )
    with client.get_queue_sender("q") as sender:
        sender.send_messages(sent)
    (got,) = receive_all(client, "q", 1)
    assert str(got) == "body text"
    assert (got.message_id, got.correlation_id, got.subject) == ("id-1", "corr", "subj")
    assert (got.content_type, got.to, got.reply_to) == ("text/plain", "someone", "replies")
    assert got.time_to_live == dt.timedelta(minutes=5)
    props = {k.decode(): v for k, v in got.application_properties.items()}
    assert props["s"] == b"text" and props["i"] == 42 and props["f"] == 1.5 and props["b"] is True
    assert props["u"] == uuid.UUID(int=7)
    assert got.sequence_number >= 1 and got.delivery_count == 0
    assert got.enqueued_time_utc is not None


def test_batch_becomes_separate_messages_with_consecutive_sequence_numbers(
    client: ServiceBusClient,
) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages(
            [
                ServiceBusMessage(f"m{i}", message_id=f"id{i}", application_properties={"n": i})
                for i in range(3)
            ]
        )
    got = sorted(receive_all(client, "q", 3), key=lambda m: m.sequence_number)
    assert [str(m) for m in got] == ["m0", "m1", "m2"]
    assert [m.message_id for m in got] == ["id0", "id1", "id2"]
    assert [m.application_properties[b"n"] for m in got] == [0, 1, 2]
    seqs = [m.sequence_number for m in got]
    assert seqs == list(range(seqs[0], seqs[0] + 3))


def test_message_batch_limit_follows_the_link_and_rejects_overflow(
    client: ServiceBusClient,
) -> None:
    with client.get_queue_sender("q") as sender:
        batch = sender.create_message_batch()
        assert batch.max_size_in_bytes == 262144
        batch.add_message(ServiceBusMessage("x" * 200_000))
        with pytest.raises(MessageSizeExceededError):
            batch.add_message(ServiceBusMessage("x" * 100_000))


def test_oversized_single_message_is_refused_by_the_broker(client: ServiceBusClient) -> None:
    with client.get_queue_sender("q") as sender:
        started = time.monotonic()
        with pytest.raises(MessageSizeExceededError):
            sender.send_messages(ServiceBusMessage("x" * 300_000))
        assert time.monotonic() - started < 5
        sender.send_messages(ServiceBusMessage("still usable"))
    assert [str(m) for m in receive_all(client, "q", 1)] == ["still usable"]


def test_message_size_limit_is_configurable_per_entity(client: ServiceBusClient) -> None:
    with client.get_queue_sender("q-big") as sender:
        sender.send_messages(ServiceBusMessage("x" * 600_000))
    (got,) = receive_all(client, "q-big", 1)
    assert len(str(got)) == 600_000


def test_unknown_entity_fails_fast_with_not_found(client: ServiceBusClient) -> None:
    started = time.monotonic()
    with pytest.raises(MessagingEntityNotFoundError), client.get_queue_sender("nope") as sender:
        sender.send_messages(ServiceBusMessage("x"))
    assert time.monotonic() - started < 3


def test_message_without_body_round_trips_as_none(client: ServiceBusClient) -> None:
    with client.get_queue_sender("q") as sender:
        sender.send_messages(ServiceBusMessage(None, message_id="empty"))
        sender.send_messages(ServiceBusMessage(b"", message_id="zero"))
    got = {m.message_id: m for m in receive_all(client, "q", 2)}
    assert got["empty"].body is None
    assert b"".join(got["zero"].body) == b""


def test_topic_fans_out_to_matching_subscriptions(client: ServiceBusClient) -> None:
    with client.get_topic_sender("t") as sender:
        sender.send_messages(ServiceBusMessage("plain"))
        sender.send_messages(ServiceBusMessage("hurry", subject="urgent"))
        sender.send_messages(ServiceBusMessage("sky", application_properties={"colour": "blue"}))

    def bodies(sub: str, expected: int) -> list[str]:
        out: list = []
        with client.get_subscription_receiver("t", sub) as receiver:
            deadline = time.monotonic() + 10
            while len(out) < expected and time.monotonic() < deadline:
                out += receiver.receive_messages(max_message_count=10, max_wait_time=1)
            for m in out:
                receiver.complete_message(m)
            out += receiver.receive_messages(max_message_count=10, max_wait_time=0.5)
        return sorted(str(m) for m in out)

    assert bodies("all", 3) == ["hurry", "plain", "sky"]
    assert bodies("urgent", 1) == ["hurry"]
    assert bodies("blue", 1) == ["sky"]


def test_full_queue_refuses_with_quota_exceeded(client: ServiceBusClient) -> None:
    with client.get_queue_sender("q-full") as sender:
        with pytest.raises(ServiceBusQuotaExceededError):
            for _ in range(10):
                sender.send_messages(ServiceBusMessage("x" * 200_000))


def test_duplicate_message_ids_are_dropped_within_the_window(client: ServiceBusClient) -> None:
    with client.get_queue_sender("q-dup") as sender:
        sender.send_messages(ServiceBusMessage("first", message_id="same"))
        sender.send_messages(ServiceBusMessage("second", message_id="same"))
        sender.send_messages(ServiceBusMessage("other", message_id="other"))
    got = receive_all(client, "q-dup", 2)
    assert sorted(str(m) for m in got) == ["first", "other"]


def test_a_batch_the_sdk_filled_to_its_limit_is_accepted(client: ServiceBusClient) -> None:
    # The SDK counts only the inner messages (each plus its data-section overhead), not the
    # envelope it copies the first message's id and session into; the broker must agree.
    def message(number: int, size: int) -> ServiceBusMessage:
        return ServiceBusMessage("x" * size, message_id=f"{number:0>128}", session_id="s" * 128)

    with client.get_queue_sender("q") as sender:
        batch = sender.create_message_batch()
        count = 0
        while batch.max_size_in_bytes - batch.size_in_bytes > 2000:
            batch.add_message(message(count, 1000))
            count += 1
        size = batch.max_size_in_bytes - batch.size_in_bytes
        while size > 0:  # the largest last message that still fits: the batch is then full
            try:
                batch.add_message(message(count, size))
            except MessageSizeExceededError:
                size -= 1
                continue
            count += 1
            break
        assert batch.size_in_bytes == batch.max_size_in_bytes
        sender.send_messages(batch)
    assert len(receive_all(client, "q", count)) == count
