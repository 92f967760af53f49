"""Persistence of the broker engine: what survives a restart on the same data directory."""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
import time
import uuid
from pathlib import Path

from docbus.local.emulator.broker import Broker, Topic
from docbus.local.emulator.config import (
    EntityProperties,
    NamespaceConfig,
    QueueConfig,
    SubscriptionConfig,
    TopicConfig,
)
from docbus.local.emulator.message import BrokeredMessage, MessageState, ReceiveMode
from docbus.local.emulator.persistence import DATABASE_NAME, SqliteStore
from tests.local.emulator.broker_support import FakeConsumer, msg, wait_until

CONFIG = NamespaceConfig(
    queues=(
        QueueConfig("q", EntityProperties(max_delivery_count=3)),
        QueueConfig("once", EntityProperties(max_delivery_count=1)),
        QueueConfig("sq", EntityProperties(requires_session=True)),
    ),
    topics=(TopicConfig("t", subscriptions=(SubscriptionConfig("s"),)),),
)


def start(data_dir: Path) -> Broker:
    return Broker(CONFIG, store=SqliteStore.open(data_dir))


async def crash(broker: Broker) -> None:
    """Let the per-tick flush run, then abandon the broker without closing anything."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def rows(data_dir: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(data_dir / DATABASE_NAME) as db:
        return db.execute("SELECT entity, seq FROM messages ORDER BY entity, seq").fetchall()


async def test_every_message_field_survives_a_restart(tmp_path: Path) -> None:
    broker = start(tmp_path)
    original = BrokeredMessage(
        properties_section=b"\x00Ss\xc0\x01\x00",
        application_properties_section=b"\x00St\xc1\x01\x00",
        body_sections=b"\x00Su\xa0\x03abc",
        footer_section=b"\x00Sx\xc1\x01\x00",
        sender_annotations={"x-opt-partition-key": "pk", "custom": 7},
        message_id="m-1",
        session_id=None,
        correlation_id="c-1",
        subject="subj",
        to="to",
        reply_to="reply",
        reply_to_session_id="rs",
        content_type="application/json",
        application_properties={
            "text": "v",
            "int": 5,
            "float": 1.5,
            "flag": True,
            "raw": b"\x00\x01",
            "id": uuid.UUID(int=7),
            "when": datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC),
        },
        ttl=3600.0,
        partition_key="pk",
        size=321,
    )
    queue = broker.resolve_source("q")
    queue.enqueue(original)
    await crash(broker)

    restarted = start(tmp_path)
    [back] = restarted.resolve_source("q").messages()
    for name in BrokeredMessage.__dataclass_fields__:
        assert getattr(back, name) == getattr(original, name), name
    restarted.close()


async def test_sequence_numbers_continue_after_a_restart_even_when_empty(tmp_path: Path) -> None:
    broker = start(tmp_path)
    queue = broker.resolve_source("q")
    consumer = FakeConsumer(credit=10, mode=ReceiveMode.RECEIVE_AND_DELETE)
    queue.add_consumer(consumer)
    for _ in range(3):
        queue.enqueue(msg())
    assert queue.message_count() == 0
    broker.close()

    restarted = start(tmp_path)
    assert restarted.resolve_source("q").enqueue(msg()) == 4
    restarted.close()


async def test_settled_messages_stay_settled_and_locked_ones_come_back_counted(
    tmp_path: Path,
) -> None:
    broker = start(tmp_path)
    queue = broker.resolve_source("q")
    for _ in range(3):
        queue.enqueue(msg())
    consumer = FakeConsumer(credit=2)
    queue.add_consumer(consumer)
    done, _held = consumer.take()
    assert done.lock_token is not None
    queue.complete(done.lock_token)
    await crash(broker)

    restarted = start(tmp_path)
    messages = restarted.resolve_source("q").messages()
    assert [(m.sequence_number, m.delivery_count) for m in messages] == [(2, 1), (3, 0)]
    assert all(m.lock_token is None and m.state == MessageState.ACTIVE for m in messages)
    again = FakeConsumer(credit=5)
    restarted.resolve_source("q").add_consumer(again)
    assert [m.sequence_number for m in again.take()] == [2, 3]
    restarted.close()


async def test_a_lock_lost_by_restart_at_the_delivery_limit_dead_letters(tmp_path: Path) -> None:
    broker = start(tmp_path)
    queue = broker.resolve_source("once")
    queue.enqueue(msg())
    queue.add_consumer(FakeConsumer(credit=1))
    await crash(broker)

    restarted = start(tmp_path)
    assert restarted.resolve_source("once").message_count() == 0
    [dead] = restarted.resolve_source("once/$DeadLetterQueue").messages()
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    restarted.close()


async def test_dead_lettered_deferred_and_scheduled_messages_survive(tmp_path: Path) -> None:
    broker = start(tmp_path)
    queue = broker.resolve_source("q")
    for _ in range(2):
        queue.enqueue(msg())
    consumer = FakeConsumer(credit=2)
    queue.add_consumer(consumer)
    first, second = consumer.take()
    assert first.lock_token is not None and second.lock_token is not None
    queue.dead_letter(first.lock_token, "bad input", "field x is missing")
    queue.defer(second.lock_token)
    queue.schedule([msg(scheduled=time.time() + 0.5)])
    broker.close()

    restarted = start(tmp_path)
    queue = restarted.resolve_source("q")
    [dead] = restarted.resolve_source("q/$DeadLetterQueue").messages()
    assert (dead.sequence_number, dead.dead_letter_reason) == (1, "bad input")
    assert dead.dead_letter_description == "field x is missing"
    assert [m.state for m in queue.messages()] == [MessageState.DEFERRED, MessageState.SCHEDULED]
    [deferred] = queue.receive_deferred([2], ReceiveMode.PEEK_LOCK)
    assert deferred.lock_token is not None
    receiver = FakeConsumer(credit=5)
    queue.add_consumer(receiver)
    await wait_until(lambda: len(receiver.received) == 1)  # the schedule still fires
    assert receiver.received[0].sequence_number == 3
    restarted.close()


async def test_topic_scheduled_messages_and_counter_survive(tmp_path: Path) -> None:
    broker = start(tmp_path)
    topic = broker.resolve_target("t")
    assert isinstance(topic, Topic)
    topic.enqueue(msg())
    [seq] = topic.schedule([msg(scheduled=time.time() + 0.3)])
    broker.close()

    restarted = start(tmp_path)
    topic = restarted.resolve_target("t")
    assert isinstance(topic, Topic)
    assert [m.sequence_number for m in topic.scheduled_messages()] == [seq]
    sub = restarted.resolve_source("t/Subscriptions/s")
    await wait_until(lambda: sub.message_count() == 2)
    assert [m.sequence_number for m in sub.messages()] == [1, 2]
    assert topic.enqueue(msg()) == 3
    restarted.close()


async def test_session_state_survives(tmp_path: Path) -> None:
    broker = start(tmp_path)
    queue = broker.resolve_source("sq")
    queue.enqueue(msg(session_id="a"))
    await queue.accept_session(FakeConsumer(), "a", 1.0)
    queue.set_session_state("a", b"step-2")
    await queue.accept_session(FakeConsumer(), "b", 1.0)
    queue.set_session_state("b", b"only-state")
    broker.close()

    restarted = start(tmp_path)
    queue = restarted.resolve_source("sq")
    assert queue.list_sessions(0, 10) == ["a", "b"]
    consumer = FakeConsumer(credit=1)
    await queue.accept_session(consumer, "a", 1.0)
    assert queue.get_session_state("a") == b"step-2"
    assert [m.session_id for m in consumer.take()] == ["a"]
    restarted.close()


async def test_cleared_session_state_is_gone_after_a_restart(tmp_path: Path) -> None:
    broker = start(tmp_path)
    queue = broker.resolve_source("sq")
    await queue.accept_session(FakeConsumer(), "a", 1.0)
    queue.set_session_state("a", b"x")
    broker.flush()
    queue.set_session_state("a", None)
    broker.close()

    restarted = start(tmp_path)
    assert restarted.resolve_source("sq").list_sessions(0, 10) == []
    restarted.close()


async def test_a_message_sent_and_completed_in_one_tick_never_reaches_the_disk(
    tmp_path: Path,
) -> None:
    broker = start(tmp_path)
    queue = broker.resolve_source("q")
    consumer = FakeConsumer(credit=100)
    queue.add_consumer(consumer)
    queue.enqueue(msg())
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    queue.complete(delivered.lock_token)
    queue.enqueue(msg())  # this one stays
    broker.flush()
    assert rows(tmp_path) == [("q", 2)]
    broker.close()


async def test_writes_are_batched_per_loop_tick(tmp_path: Path) -> None:
    broker = start(tmp_path)
    queue = broker.resolve_source("q")
    for _ in range(50):
        queue.enqueue(msg())
    assert rows(tmp_path) == []  # nothing written inside the tick
    await crash(broker)
    assert len(rows(tmp_path)) == 50
    broker.close()


async def test_store_opens_lazily_from_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.sqlite3"
    store = SqliteStore(path)
    assert not path.exists()  # the constructor does no I/O
    broker = Broker(CONFIG, store=store)
    broker.resolve_source("q").enqueue(msg())
    broker.close()
    store.close()  # a second close is harmless
    restarted = Broker(CONFIG, store=SqliteStore(path))
    assert restarted.resolve_source("q").message_count() == 1
    restarted.close()


async def test_kept_messages_without_session_id_are_dead_lettered_when_sessions_become_required(
    tmp_path: Path,
) -> None:
    before = NamespaceConfig(queues=(QueueConfig("q"),))
    broker = Broker(before, store=SqliteStore.open(tmp_path))
    broker.resolve_source("q").enqueue(msg())
    broker.close()

    after = NamespaceConfig(queues=(QueueConfig("q", EntityProperties(requires_session=True)),))
    restarted = Broker(after, store=SqliteStore.open(tmp_path))
    assert restarted.resolve_source("q").message_count() == 0
    [dead] = restarted.resolve_source("q/$DeadLetterQueue").messages()
    assert dead.dead_letter_reason == "Session ID is null"
    restarted.close()
    again = Broker(after, store=SqliteStore.open(tmp_path))
    assert again.resolve_source("q/$DeadLetterQueue").message_count() == 1
    assert again.resolve_source("q").message_count() == 0
    again.close()
