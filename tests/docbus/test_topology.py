"""The topology file is the single source of truth: it parses, its outputs are valid, and the
generated routing rules route, proved with the real SDK against the emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage

from docbus.cli import main as cli_main
from docbus.cli.topology import microsoft_limits
from docbus.errors import DocbusError
from docbus.local.emulator import EmulatorThread, parse_config
from docbus.local.emulator.config import parse_duration
from docbus.topology import (
    BROADCAST,
    DEFAULT_TOPOLOGY,
    ROUTE_PROPERTY,
    Topology,
    TopologyError,
    load_topology,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def topology() -> Topology:
    return load_topology()


SUBSCRIPTION = '[[topics]]\nname = "t"\n[[topics.subscriptions]]\nname = "s"\n'


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the repository's topology -------------------------------------------------------------


def test_the_repository_topology_is_the_default_and_parses(topology: Topology) -> None:
    assert DEFAULT_TOPOLOGY == ROOT / "infra" / "topology.toml"
    documents = topology.topic("documents")
    assert [s.name for s in documents.subscriptions] == ["entities", "supplier-risk"]
    assert documents.requires_duplicate_detection
    for sub in documents.subscriptions:  # [defaults] reach every subscription
        assert sub.max_delivery_count == 5
        assert sub.lock_duration == "PT1M"
        assert sub.dead_lettering_on_message_expiration


def test_generated_emulator_config_parses_with_two_routing_rules_per_subscription(
    topology: Topology,
) -> None:
    config = parse_config(topology.emulator_config())
    assert [t.name for t in config.topics] == [t.name for t in topology.topics]
    subscriptions = [(t, s) for t in config.topics for s in t.subscriptions]
    assert subscriptions
    for topic, sub in subscriptions:
        spec = topology.topic(topic.name).subscription(sub.name)
        assert sub.properties.max_delivery_count == spec.max_delivery_count
        assert sub.properties.lock_duration == parse_duration(spec.lock_duration)
        routes = {
            rule.name: dict(rule.correlation.properties) for rule in sub.rules if rule.correlation
        }
        assert len(sub.rules) == 2
        assert routes == {
            "broadcast": {ROUTE_PROPERTY: BROADCAST},
            "addressed": {ROUTE_PROPERTY: sub.name},
        }


def test_bicep_parameters_carry_what_main_bicep_reads(topology: Topology) -> None:
    params = topology.bicep_parameters()
    bicep = (ROOT / "infra" / "azure" / "main.bicep").read_text(encoding="utf-8")
    assert "param topics array" in bicep
    topics = params["parameters"]["topics"]["value"]
    assert [t["name"] for t in topics] == [t.name for t in topology.topics]
    for topic in topics:
        for key in topic:
            assert f".{key}" in bicep, f"main.bicep does not read topic field {key!r}"
        for sub in topic["subscriptions"]:
            for key in sub:
                assert f".{key}" in bicep, f"main.bicep does not read subscription field {key!r}"
            assert len(sub["rules"]) == 2
            for rule in sub["rules"]:
                assert rule["Properties"]["FilterType"] == "Correlation"
                assert set(rule["Properties"]["CorrelationFilter"]) == {"Properties"}
    # The template reads the generated rule shape exactly as it is written.
    assert ".Properties.CorrelationFilter.Properties" in bicep


# --- bad topology files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[topics]]\nname = "t"\ncolour = "blue"\n', r"topics\[0\]: unknown keys \['colour'\]"),
        (
            SUBSCRIPTION + "max_deliveries = 3\n",
            r"topics\[0\]\.subscriptions\[0\]: unknown keys \['max_deliveries'\]",
        ),
        ("[[topics]]\nrequires_duplicate_detection = true\n", r"topics\[0\]: every topic needs"),
        (
            '[[topics]]\nname = "t"\n[[topics.subscriptions]]\nlock_duration = "PT1M"\n',
            r"topics\[0\]\.subscriptions\[0\]: every subscription needs a name",
        ),
        (
            SUBSCRIPTION + "max_delivery_count = 0\n",
            r"max_delivery_count must be 1\.\.2000",
        ),
        (
            SUBSCRIPTION + "max_delivery_count = 2001\n",
            r"max_delivery_count must be 1\.\.2000",
        ),
        (
            SUBSCRIPTION + 'max_delivery_count = "5"\n',
            r"max_delivery_count must be 1\.\.2000",
        ),
        ("[[topics]\n", r"topology\.toml: "),
    ],
    ids=[
        "unknown-topic-key",
        "unknown-subscription-key",
        "topic-without-name",
        "subscription-without-name",
        "zero-deliveries",
        "too-many-deliveries",
        "deliveries-as-text",
        "not-toml",
    ],
)
def test_a_bad_topology_file_names_the_offending_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(TopologyError, match=message):
        load_topology(_write(tmp_path, text))


def test_a_missing_topology_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"topology file not found: .*nowhere\.toml"):
        load_topology(tmp_path / "nowhere.toml")


def test_a_topology_error_is_one_of_docbus_own_errors(tmp_path: Path) -> None:
    # one clause catches the library's failures; ValueError kept for older callers
    with pytest.raises(DocbusError) as caught:
        load_topology(tmp_path / "nowhere.toml")
    assert isinstance(caught.value, TopologyError | ValueError)


# --- the `docbus topology` command -------------------------------------------------------------


@pytest.mark.parametrize("what", ["emulator-config", "bicep-params"])
def test_cli_writes_each_output_to_a_file(
    tmp_path: Path, topology: Topology, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / f"{what}.json"
    assert cli_main(["topology", what, "--output", str(target)]) == 0
    written = json.loads(target.read_text(encoding="utf-8"))
    expected = (
        topology.emulator_config() if what == "emulator-config" else topology.bicep_parameters()
    )
    assert written == expected
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"wrote {target}" in captured.err


def test_cli_prints_the_emulator_config_by_default_for_a_given_topology(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path, '[[topics]]\nname = "orders"\n[[topics.subscriptions]]\nname = "bill"\n'
    )
    assert cli_main(["topology", "--topology", str(path)]) == 0
    config = parse_config(json.loads(capsys.readouterr().out))
    assert [(t.name, [s.name for s in t.subscriptions]) for t in config.topics] == [
        ("orders", ["bill"])
    ]


def test_cli_reports_a_bad_topology_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, '[[topics]]\nname = "t"\ncolour = "blue"\n')
    target = tmp_path / "out.json"
    assert cli_main(["topology", "--topology", str(path), "-o", str(target)]) == 2
    assert "unknown keys ['colour']" in capsys.readouterr().err
    assert not target.exists()


def test_cli_refuses_a_duration_the_emulator_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SUBSCRIPTION + 'lock_duration = "1m"\n'
    assert cli_main(["topology", "--topology", str(_write(tmp_path, text))]) == 2
    assert "LockDuration: '1m' is not an ISO-8601 duration" in capsys.readouterr().err


def test_microsoft_limits_clamp_into_the_official_emulators_ranges(topology: Topology) -> None:
    config, changes = microsoft_limits(topology.emulator_config())
    parse_config(config)  # still valid for ours
    topic = config["UserConfig"]["Namespaces"][0]["Topics"][0]
    assert topic["Properties"]["DefaultMessageTimeToLive"] == "PT1H"  # was P14D
    assert topic["Properties"]["DuplicateDetectionHistoryTimeWindow"] == "PT5M"  # was PT10M
    assert "MaxMessageSizeInKilobytes" not in topic["Properties"]
    for sub in topic["Subscriptions"]:
        props = sub["Properties"]
        assert parse_duration(props["DefaultMessageTimeToLive"]) <= 3600
        assert 60 <= parse_duration(props["LockDuration"]) <= 300
        assert 1 <= props["MaxDeliveryCount"] <= 10
        assert len(sub["Rules"]) == 2
    assert any("DefaultMessageTimeToLive P14D -> PT1H" in change for change in changes)
    # the topology's own output is untouched
    assert (
        topology.emulator_config()["UserConfig"]["Namespaces"][0]["Topics"][0]["Properties"][
            "DefaultMessageTimeToLive"
        ]
        == "P14D"
    )


# --- routing, with the real SDK ----------------------------------------------------------------


@pytest.fixture
def routed(topology: Topology) -> Iterator[ServiceBusClient]:
    with EmulatorThread(parse_config(topology.emulator_config())) as emulator:
        with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
            yield client


def _send(client: ServiceBusClient, topic: str, message_id: str, route: str | None) -> None:
    properties = {ROUTE_PROPERTY: route} if route is not None else None
    with client.get_topic_sender(topic) as sender:
        sender.send_messages(
            ServiceBusMessage(b"{}", message_id=message_id, application_properties=properties)
        )


def _arrived(client: ServiceBusClient, topic: str, subscription: str) -> list[str]:
    # send_messages returns once the broker has accepted the message, and the emulator fans it
    # out before accepting, so a peek now sees everything the rules let through.
    with client.get_subscription_receiver(topic, subscription) as receiver:
        return [str(m.message_id) for m in receiver.peek_messages(max_message_count=50)]


def test_broadcast_reaches_every_subscription_and_addressed_only_its_own(
    routed: ServiceBusClient, topology: Topology
) -> None:
    topic = topology.topic("documents")
    _send(routed, topic.name, "for-everyone", BROADCAST)
    _send(routed, topic.name, "for-entities", "entities")
    _send(routed, topic.name, "for-nobody", None)  # no route: the generated rules match nothing

    arrived = {sub.name: _arrived(routed, topic.name, sub.name) for sub in topic.subscriptions}
    assert arrived == {
        "entities": ["for-everyone", "for-entities"],
        "supplier-risk": ["for-everyone"],
    }


def test_a_routed_message_is_received_and_completed_from_its_subscription(
    routed: ServiceBusClient,
) -> None:
    _send(routed, "documents", "replay-1", "supplier-risk")
    with routed.get_subscription_receiver("documents", "supplier-risk") as receiver:
        messages = receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert [str(m.message_id) for m in messages] == ["replay-1"]
        # the SDK hands string application properties back as bytes
        assert messages[0].application_properties == {ROUTE_PROPERTY.encode(): b"supplier-risk"}
        receiver.complete_message(messages[0])
    assert _arrived(routed, "documents", "entities") == []
