"""The emulator's Config.json reader: Microsoft's schema, Azure's ranges, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from docbus.local.emulator.config import (
    ConfigError,
    EntityProperties,
    NamespaceConfig,
    load_config,
    parse_config,
    parse_duration,
)
from docbus.local.emulator.rules import CorrelationFilter

# The official emulator's sample file, abridged (ForwardTo keys present and empty).
OFFICIAL_SAMPLE: dict[str, Any] = {
    "UserConfig": {
        "Namespaces": [
            {
                "Name": "sbemulatorns",
                "Queues": [
                    {
                        "Name": "queue.1",
                        "Properties": {
                            "DeadLetteringOnMessageExpiration": False,
                            "DefaultMessageTimeToLive": "PT1H",
                            "DuplicateDetectionHistoryTimeWindow": "PT20S",
                            "ForwardDeadLetteredMessagesTo": "",
                            "ForwardTo": "",
                            "LockDuration": "PT1M",
                            "MaxDeliveryCount": 3,
                            "RequiresDuplicateDetection": False,
                            "RequiresSession": False,
                        },
                    }
                ],
                "Topics": [
                    {
                        "Name": "topic.1",
                        "Properties": {
                            "DefaultMessageTimeToLive": "PT1H",
                            "DuplicateDetectionHistoryTimeWindow": "PT20S",
                            "RequiresDuplicateDetection": False,
                        },
                        "Subscriptions": [
                            {
                                "Name": "subscription.1",
                                "Properties": {
                                    "DeadLetteringOnMessageExpiration": False,
                                    "DefaultMessageTimeToLive": "PT1H",
                                    "LockDuration": "PT1M",
                                    "MaxDeliveryCount": 3,
                                    "ForwardDeadLetteredMessagesTo": "",
                                    "ForwardTo": "",
                                    "RequiresSession": False,
                                },
                                "Rules": [
                                    {
                                        "Name": "app-prop-filter-1",
                                        "Properties": {
                                            "FilterType": "Correlation",
                                            "CorrelationFilter": {
                                                "ContentType": "application/text",
                                                "CorrelationId": "id1",
                                                "Label": "subject1",
                                                "MessageId": "msgid1",
                                                "ReplyTo": "someQueue",
                                                "ReplyToSessionId": "sessionId",
                                                "SessionId": "session1",
                                                "To": "xyz",
                                            },
                                        },
                                    }
                                ],
                            },
                            {
                                "Name": "subscription.2",
                                "Properties": {"RequiresSession": True},
                                "Rules": [
                                    {
                                        "Name": "user-prop-filter-1",
                                        "Properties": {
                                            "FilterType": "Correlation",
                                            "CorrelationFilter": {
                                                "Properties": {"prop3": "value3"}
                                            },
                                        },
                                    },
                                    {
                                        "Name": "sql-1",
                                        "Properties": {
                                            "FilterType": "Sql",
                                            "SqlFilter": {"SqlExpression": "sys.Label = 'x'"},
                                            "Action": {"SqlExpression": ""},
                                        },
                                    },
                                ],
                            },
                        ],
                    }
                ],
            }
        ],
        "Logging": {"Type": "File"},
    }
}


def namespace(**parts: Any) -> dict[str, Any]:
    return {"UserConfig": {"Namespaces": [{"Name": "ns", **parts}], "Logging": {"Type": "File"}}}


def queue_with(**properties: Any) -> dict[str, Any]:
    return namespace(Queues=[{"Name": "q", "Properties": properties}])


def subscription_with(**properties: Any) -> dict[str, Any]:
    subs = [{"Name": "s0"}, {"Name": "s1", "Properties": properties}]
    return namespace(Topics=[{"Name": "t", "Subscriptions": subs}])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1M", 60.0),
        ("PT30S", 30.0),
        ("PT0.5S", 0.5),
        ("P14D", 14 * 86400.0),
        ("P1DT2H3M4S", 86400 + 7200 + 180 + 4.0),
        ("PT1H", 3600.0),
        ("P1W", 7 * 86400.0),
        ("pt2m", 120.0),
    ],
)
def test_parse_duration_reads_iso_8601(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "P", "PT", "1M", "P1Y", "P1M", "PT1X", "P1DT", "-PT1S"])
def test_parse_duration_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ConfigError, match="ISO-8601"):
        parse_duration(text)


def test_official_sample_parses_with_its_values() -> None:
    config = parse_config(OFFICIAL_SAMPLE)
    assert isinstance(config, NamespaceConfig)
    assert config.name == "sbemulatorns"
    [queue] = config.queues
    assert queue.name == "queue.1"
    assert queue.properties == EntityProperties(
        lock_duration=60.0,
        max_delivery_count=3,
        default_message_ttl=3600.0,
        duplicate_detection_window=20.0,
    )
    [topic] = config.topics
    assert topic.properties.default_message_ttl == 3600.0
    first, second = topic.subscriptions
    [rule] = first.rules
    assert rule.name == "app-prop-filter-1"
    assert rule.correlation == CorrelationFilter(
        content_type="application/text",
        correlation_id="id1",
        subject="subject1",
        message_id="msgid1",
        reply_to="someQueue",
        reply_to_session_id="sessionId",
        session_id="session1",
        to="xyz",
    )
    assert second.properties.requires_session is True
    assert second.rules[0].correlation == CorrelationFilter(properties={"prop3": "value3"})
    assert second.rules[1].sql_expression == "sys.Label = 'x'"


def test_missing_properties_take_azure_defaults() -> None:
    config = parse_config(namespace(Queues=[{"Name": "q"}], Topics=[]))
    assert config.queues[0].properties == EntityProperties()
    assert EntityProperties().max_delivery_count == 10
    assert EntityProperties().default_message_ttl is None


def test_azure_ranges_are_accepted_beyond_the_official_emulator_limits() -> None:
    props = (
        parse_config(
            queue_with(
                MaxDeliveryCount=2000,
                DefaultMessageTimeToLive="P10675199DT2H48M5.4775807S",
                LockDuration="PT0.2S",
                DuplicateDetectionHistoryTimeWindow="P7D",
                MaxMessageSizeInKilobytes=1024,
                MaxSizeInMegabytes=5,
            )
        )
        .queues[0]
        .properties
    )
    assert props.max_delivery_count == 2000
    assert props.default_message_ttl is None  # TimeSpan.MaxValue: never expires
    assert props.lock_duration == 0.2
    assert props.duplicate_detection_window == 7 * 86400
    assert props.max_message_size == 1024 * 1024
    assert props.max_size_bytes == 5 * 1024 * 1024
    assert parse_config(queue_with(DefaultMessageTimeToLive="P14D")).queues[0].properties
    assert parse_config(queue_with()).queues[0].properties.max_message_size == 262144


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            subscription_with(LockDuration="PT10M"),
            "Topics[0].Subscriptions[1].Properties.LockDuration: 'PT10M' is longer than the "
            "5 minute maximum",
        ),
        (queue_with(MaxDeliveryCount=0), "Queues[0].Properties.MaxDeliveryCount: 0 is outside"),
        (queue_with(MaxDeliveryCount=2001), "outside the allowed range 1..2000"),
        (queue_with(MaxDeliveryCount="3"), "expected a whole number"),
        (queue_with(RequiresSession="yes"), "Queues[0].Properties.RequiresSession: expected true"),
        (queue_with(LockDuration="1 minute"), "Queues[0].Properties.LockDuration: '1 minute'"),
        (queue_with(LockDuration="PT0S"), "must be longer than zero"),
        (queue_with(LockDurtion="PT1M"), "Queues[0].Properties.LockDurtion: unknown"),
        (queue_with(ForwardTo="other"), "auto-forwarding is not supported"),
        (queue_with(DuplicateDetectionHistoryTimeWindow="P8D"), "7 day maximum"),
        ({"Namespaces": []}, "UserConfig: expected a JSON object"),
        ({"UserConfig": {"Namespaces": []}}, "UserConfig.Namespaces: expected a list"),
        (namespace(Queues=[{"Properties": {}}]), "Queues[0].Name: expected a non-empty name"),
        (namespace(Queues=[{"Name": "bad name!"}]), "is not a valid entity name"),
        (namespace(Queues=[{"Name": "q"}, {"Name": "Q"}]), "Queues[1].Name: 'Q' is already used"),
        (
            namespace(Queues=[{"Name": "x"}], Topics=[{"Name": "X", "Subscriptions": []}]),
            "Topics[0].Name: 'X' is already used by Queues[0]",
        ),
        (namespace(Queues={"Name": "q"}), "Queues: expected a JSON list"),
        (
            namespace(Topics=[{"Name": "t", "Subscriptions": [{"Name": "a/b"}]}]),
            "Topics[0].Subscriptions[0].Name",
        ),
        (
            namespace(Topics=[{"Name": "t", "Properties": {"LockDuration": "PT1M"}}]),
            "Topics[0].Properties.LockDuration: unknown",
        ),
    ],
)
def test_invalid_configuration_names_the_path(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert message in str(caught.value)


def rule_config(properties: dict[str, Any]) -> dict[str, Any]:
    good = {"FilterType": "Sql", "SqlFilter": {"SqlExpression": "1=1"}}
    rules = [{"Name": "ok", "Properties": good}, {"Name": "broken", "Properties": properties}]
    return namespace(Topics=[{"Name": "t", "Subscriptions": [{"Name": "s", "Rules": rules}]}])


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        (
            {"FilterType": "Sql", "SqlFilter": {"SqlExpression": "a === 'b'"}},
            "Topics[0].Subscriptions[0].Rules[1] (rule 'broken').Properties.SqlFilter",
        ),
        ({"FilterType": "Boolean"}, "expected 'Correlation' or 'Sql'"),
        ({"FilterType": "Correlation", "CorrelationFilter": {}}, "needs at least one field"),
        (
            {"FilterType": "Correlation", "CorrelationFilter": {"Colour": "x"}},
            "unknown correlation",
        ),
        (
            {"FilterType": "Correlation", "CorrelationFilter": {"Properties": {"p": {"x": 1}}}},
            "CorrelationFilter.Properties.p: expected a string",
        ),
        (
            {
                "FilterType": "Sql",
                "SqlFilter": {"SqlExpression": "1=1"},
                "Action": {"SqlExpression": "SET sys.Label = 'x'"},
            },
            "rule actions are not supported",
        ),
    ],
)
def test_invalid_rules_name_the_rule(properties: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(rule_config(properties))
    assert message in str(caught.value)


def test_only_one_namespace_is_served() -> None:
    data = {"UserConfig": {"Namespaces": [{"Name": "a"}, {"Name": "b"}]}}
    with pytest.raises(ConfigError, match="2 namespaces"):
        parse_config(data)


def test_namespace_name_is_not_restricted() -> None:
    assert parse_config({"UserConfig": {"Namespaces": [{"Name": "my-own.ns"}]}}).name == "my-own.ns"


def test_load_config_reads_a_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "Config.json"
    path.write_text(json.dumps(OFFICIAL_SAMPLE), encoding="utf-8-sig")
    assert load_config(path).queues[0].name == "queue.1"


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")
    path.write_text(json.dumps(queue_with(MaxDeliveryCount=0)), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.json: Queues\[0\]"):
        load_config(path)
