"""Topics, subscriptions, duplicate detection and addressing in the broker engine."""

from __future__ import annotations

import asyncio
import time

import pytest

from docbus.local.emulator.broker import Broker, Queue, Rule, Subscription, Topic
from docbus.local.emulator.config import EntityProperties, parse_config
from docbus.local.emulator.errors import EntityNotFound, MessageNotFound, NotAllowed, QuotaExceeded
from docbus.local.emulator.message import MessageState, ReceiveMode
from docbus.local.emulator.rules import CorrelationFilter
from tests.local.emulator.broker_support import FakeClock, FakeConsumer, msg, wait_until


def topic_with(broker: Broker, *subs: tuple[str, list[Rule]], **props: object) -> Topic:
    topic = broker.add_topic("t", EntityProperties(**props))  # type: ignore[arg-type]
    for name, rules in subs:
        broker.add_subscription("t", name, EntityProperties(), rules)
    return topic


async def test_topic_fans_out_an_independent_copy_to_every_subscription() -> None:
    broker = Broker()
    topic = topic_with(broker, ("s1", []), ("s2", []))
    seq = topic.enqueue(msg(b"hello", message_id="m1"))
    s1, s2 = topic.subscriptions["s1"], topic.subscriptions["s2"]
    [a], [b] = s1.messages(), s2.messages()
    assert a is not b
    assert a.body_sections == b.body_sections == b"hello"
    assert a.sequence_number == b.sequence_number == seq == 1
    consumer = FakeConsumer(credit=1)
    s1.add_consumer(consumer)
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    s1.complete(delivered.lock_token)
    assert s1.message_count() == 0
    assert s2.message_count() == 1


async def test_correlation_rules_filter_by_label_and_properties() -> None:
    broker = Broker()
    label_rule = Rule("label", correlation=CorrelationFilter(subject="invoice"))
    prop_rule = Rule("prop", correlation=CorrelationFilter(properties={"tier": "gold"}))
    topic = topic_with(broker, ("invoices", [label_rule]), ("gold", [prop_rule]), ("all", []))
    topic.enqueue(msg(subject="invoice"))
    topic.enqueue(msg(application_properties={"tier": "gold"}))
    topic.enqueue(msg(subject="other", application_properties={"tier": "silver"}))
    subs = topic.subscriptions
    assert [m.sequence_number for m in subs["invoices"].messages()] == [1]
    assert [m.sequence_number for m in subs["gold"].messages()] == [2]
    assert [m.sequence_number for m in subs["all"].messages()] == [1, 2, 3]


async def test_any_matching_rule_admits_a_message() -> None:
    broker = Broker()
    rules = [Rule("a", sql_expression="kind = 'a'"), Rule("b", sql_expression="kind = 'b'")]
    topic = topic_with(broker, ("ab", rules))
    for kind in ("a", "b", "c"):
        topic.enqueue(msg(application_properties={"kind": kind}))
    assert [m.application_properties["kind"] for m in topic.subscriptions["ab"].messages()] == [
        "a",
        "b",
    ]


async def test_false_filter_subscription_receives_nothing() -> None:
    broker = Broker()
    topic = topic_with(broker, ("none", [Rule("f", sql_expression="1=0")]))
    topic.enqueue(msg())
    assert topic.subscriptions["none"].message_count() == 0


async def test_queue_duplicate_detection_drops_a_repeated_message_id_inside_the_window() -> None:
    clock = FakeClock()
    queue = Queue(
        "q",
        EntityProperties(requires_duplicate_detection=True, duplicate_detection_window=60.0),
        clock=clock,
    )
    assert queue.enqueue(msg(message_id="m")) == 1
    assert queue.enqueue(msg(message_id="m")) == 1  # accepted, dropped
    assert queue.enqueue(msg(message_id="n")) == 2
    assert queue.message_count() == 2
    clock.advance(61)
    assert queue.enqueue(msg(message_id="m")) == 3
    assert queue.message_count() == 3


async def test_queue_without_duplicate_detection_keeps_repeats() -> None:
    queue = Queue("q")
    queue.enqueue(msg(message_id="m"))
    queue.enqueue(msg(message_id="m"))
    assert queue.message_count() == 2


async def test_topic_duplicate_detection_drops_before_fan_out() -> None:
    broker = Broker()
    topic = topic_with(broker, ("s", []), requires_duplicate_detection=True)
    topic.enqueue(msg(message_id="m"))
    topic.enqueue(msg(message_id="m"))
    assert topic.subscriptions["s"].message_count() == 1


async def test_topic_holds_scheduled_messages_and_fans_out_on_time() -> None:
    broker = Broker()
    topic = topic_with(broker, ("s", []))
    sub = topic.subscriptions["s"]
    now = time.time()
    keep, drop = topic.schedule([msg(scheduled=now + 0.3), msg(scheduled=now + 0.3)])
    assert (keep, drop) == (1, 2)
    assert [m.state for m in topic.scheduled_messages()] == [MessageState.SCHEDULED] * 2
    topic.cancel_scheduled([drop])
    with pytest.raises(MessageNotFound):
        topic.cancel_scheduled([drop])
    assert sub.message_count() == 0
    await wait_until(lambda: sub.message_count() == 1)
    [arrived] = sub.messages()
    assert arrived.sequence_number == keep
    assert arrived.state == MessageState.ACTIVE


async def test_topic_default_ttl_caps_the_subscription_copy() -> None:
    clock = FakeClock()
    broker = Broker(clock=clock)
    topic = broker.add_topic("t", EntityProperties(default_message_ttl=10.0))
    broker.add_subscription("t", "s", EntityProperties(default_message_ttl=100.0))
    topic.enqueue(msg(ttl=50))
    assert topic.subscriptions["s"].messages()[0].expires_at == clock.now + 10


async def test_session_subscription_dead_letters_a_message_without_session_id() -> None:
    broker = Broker()
    topic = broker.add_topic("t")
    sessions = broker.add_subscription("t", "sess", EntityProperties(requires_session=True))
    plain = broker.add_subscription("t", "plain")
    topic.enqueue(msg())
    assert plain.message_count() == 1
    assert sessions.message_count() == 0
    assert sessions.dead_letter_queue is not None
    [dead] = sessions.dead_letter_queue.messages()
    assert dead.dead_letter_reason == "Session ID is null"


async def test_topic_quota_counts_what_its_subscriptions_hold() -> None:
    broker = Broker()
    topic = topic_with(broker, ("a", []), ("b", []), max_size_bytes=500)
    topic.enqueue(msg(size=100))
    topic.enqueue(msg(size=100))  # 400 bytes held across two subscriptions
    with pytest.raises(QuotaExceeded):
        topic.enqueue(msg(size=150))


async def test_resolve_target_and_source_cover_every_address_form() -> None:
    broker = Broker()
    queue = broker.add_queue("Orders")
    topic = broker.add_topic("Events")
    sub = broker.add_subscription("Events", "Audit")
    assert broker.resolve_target("orders") is queue
    assert broker.resolve_target("amqps://localhost:5672/ORDERS") is queue
    assert broker.resolve_target("events") is topic
    assert broker.resolve_source("Orders") is queue
    assert broker.resolve_source("orders/$deadletterqueue") is queue.dead_letter_queue
    assert broker.resolve_source("events/subscriptions/audit") is sub
    assert isinstance(broker.resolve_source("Events/Subscriptions/Audit"), Subscription)
    dlq = broker.resolve_source("amqps://h/Events/Subscriptions/Audit/$DeadLetterQueue")
    assert dlq is sub.dead_letter_queue
    assert dlq.name == "Events/Subscriptions/Audit/$DeadLetterQueue"
    transfer = broker.resolve_source("orders/$Transfer/$DeadLetterQueue")
    assert transfer.message_count() == 0


async def test_unknown_addresses_are_not_found_with_the_service_bus_wording() -> None:
    broker = Broker()
    broker.add_topic("t")
    with pytest.raises(EntityNotFound, match=r"The messaging entity 'sb://localhost/nope'"):
        broker.resolve_target("nope")
    with pytest.raises(EntityNotFound, match="could not be found"):
        broker.resolve_source("t/Subscriptions/missing")
    with pytest.raises(EntityNotFound):
        broker.resolve_source("missing/$DeadLetterQueue")


async def test_wrong_kind_of_address_is_not_allowed() -> None:
    broker = Broker()
    broker.add_queue("q")
    broker.add_topic("t")
    broker.add_subscription("t", "s")
    with pytest.raises(NotAllowed):
        broker.resolve_target("q/$DeadLetterQueue")
    with pytest.raises(NotAllowed):
        broker.resolve_target("t/Subscriptions/s")
    with pytest.raises(NotAllowed):
        broker.resolve_source("t")


async def test_broker_builds_the_configured_namespace() -> None:
    config = parse_config(
        {
            "UserConfig": {
                "Namespaces": [
                    {
                        "Name": "sbemulatorns",
                        "Queues": [
                            {
                                "Name": "q",
                                "Properties": {"MaxDeliveryCount": 2, "LockDuration": "PT5S"},
                            }
                        ],
                        "Topics": [
                            {
                                "Name": "t",
                                "Subscriptions": [
                                    {
                                        "Name": "red",
                                        "Rules": [
                                            {
                                                "Name": "r",
                                                "Properties": {
                                                    "FilterType": "Correlation",
                                                    "CorrelationFilter": {"Label": "red"},
                                                },
                                            }
                                        ],
                                    },
                                    {"Name": "all"},
                                ],
                            }
                        ],
                    }
                ],
                "Logging": {"Type": "Console"},
            }
        }
    )
    broker = Broker(config)
    queue = broker.resolve_source("q")
    assert queue.properties.max_delivery_count == 2
    assert queue.properties.lock_duration == 5.0
    topic = broker.resolve_target("t")
    assert isinstance(topic, Topic)
    topic.enqueue(msg(subject="red"))
    topic.enqueue(msg(subject="blue"))
    assert broker.resolve_source("t/Subscriptions/red").message_count() == 1
    assert broker.resolve_source("t/Subscriptions/all").message_count() == 2


async def test_duplicate_entity_names_are_refused() -> None:
    broker = Broker()
    broker.add_queue("q")
    with pytest.raises(ValueError):
        broker.add_topic("Q")
    broker.add_topic("t")
    broker.add_subscription("t", "s")
    with pytest.raises(ValueError):
        broker.add_subscription("t", "S")
    with pytest.raises(ValueError):
        broker.add_subscription("nope", "s")


async def test_receive_and_delete_from_a_subscription_dead_letter_queue() -> None:
    broker = Broker()
    broker.add_topic("t")
    sub = broker.add_subscription("t", "s", EntityProperties(max_delivery_count=1))
    broker.resolve_target("t").enqueue(msg())
    consumer = FakeConsumer(credit=1)
    sub.add_consumer(consumer)
    [delivered] = consumer.take()
    assert delivered.lock_token is not None
    sub.abandon(delivered.lock_token)
    dlq = broker.resolve_source("t/Subscriptions/s/$DeadLetterQueue")
    drain = FakeConsumer(credit=5, mode=ReceiveMode.RECEIVE_AND_DELETE)
    dlq.add_consumer(drain)
    assert [m.dead_letter_reason for m in drain.take()] == ["MaxDeliveryCountExceeded"]
    assert dlq.message_count() == 0


async def test_close_stops_timers_of_every_entity() -> None:
    broker = Broker()
    topic = topic_with(broker, ("s", []))
    topic.schedule([msg(scheduled=time.time() + 0.1)])
    broker.close()
    await asyncio.sleep(0.25)  # longer than the schedule: nothing may arrive
    assert topic.subscriptions["s"].message_count() == 0
