"""The Service Bus topology: topics and subscriptions, from ``infra/topology.toml``.

One file is the single source of truth for every place entities are declared: the emulator's
Config.json (Microsoft's schema, read by both our emulator and Microsoft's), the Bicep parameters
for Azure, and the worker's view of each subscription's delivery limit. Routing rules are generated
here, never written by hand: every subscription accepts broadcast traffic (``docbus-route = "*"``)
and traffic addressed to it alone (``docbus-route = <subscription>``), which is how replays and
retries reach exactly one subscription. Neighbours: :mod:`docbus.envelope` sets the route property;
:mod:`docbus.local.emulator.config` parses the output.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from docbus.errors import DocbusError

ROUTE_PROPERTY = "docbus-route"
BROADCAST = "*"

DEFAULT_TOPOLOGY = Path(__file__).resolve().parent.parent / "infra" / "topology.toml"


class TopologyError(DocbusError, ValueError):
    """The topology file is malformed, or names no such topic or subscription; the message names
    the offending entry. (Also a ``ValueError``, as it was before it joined docbus's errors.)"""


@dataclass(frozen=True)
class SubscriptionSpec:
    name: str
    max_delivery_count: int = 5
    lock_duration: str = "PT1M"
    default_message_ttl: str = "P14D"
    dead_lettering_on_message_expiration: bool = True
    requires_session: bool = False

    def takes(self, route: str) -> bool:
        """Whether this subscription's generated rules accept a message with ``route``."""
        return route == BROADCAST or route.lower() == self.name.lower()


@dataclass(frozen=True)
class TopicSpec:
    name: str
    subscriptions: tuple[SubscriptionSpec, ...] = ()
    requires_duplicate_detection: bool = True
    duplicate_detection_window: str = "PT10M"
    max_message_size_kb: int = 256

    def subscription(self, name: str) -> SubscriptionSpec:
        for sub in self.subscriptions:
            if sub.name.lower() == name.lower():
                return sub
        raise TopologyError(f"topic '{self.name}' has no subscription '{name}'")


@dataclass(frozen=True)
class Topology:
    topics: tuple[TopicSpec, ...] = field(default_factory=tuple)

    def topic(self, name: str) -> TopicSpec:
        for topic in self.topics:
            if topic.name.lower() == name.lower():
                return topic
        known = ", ".join(t.name for t in self.topics) or "none"
        raise TopologyError(f"unknown topic '{name}' (topics: {known})")

    def with_sessions(self, topic: str, subscription: str) -> Topology:
        """A copy in which ``topic/subscription`` requires sessions (ordered handlers)."""
        topics = []
        for t in self.topics:
            subs = tuple(
                replace(s, requires_session=True)
                if t.name == topic and s.name == subscription
                else s
                for s in t.subscriptions
            )
            topics.append(replace(t, subscriptions=subs))
        return Topology(tuple(topics))

    # --- outputs ---------------------------------------------------------------------------
    def emulator_config(self) -> dict[str, Any]:
        """Microsoft's emulator Config.json, with the generated routing rules."""
        topics = []
        for topic in self.topics:
            subs = []
            for sub in topic.subscriptions:
                subs.append(
                    {
                        "Name": sub.name,
                        "Properties": {
                            "DeadLetteringOnMessageExpiration": (
                                sub.dead_lettering_on_message_expiration
                            ),
                            "DefaultMessageTimeToLive": sub.default_message_ttl,
                            "LockDuration": sub.lock_duration,
                            "MaxDeliveryCount": sub.max_delivery_count,
                            "ForwardDeadLetteredMessagesTo": "",
                            "ForwardTo": "",
                            "RequiresSession": sub.requires_session,
                        },
                        "Rules": routing_rules(sub.name),
                    }
                )
            topics.append(
                {
                    "Name": topic.name,
                    "Properties": {
                        "DefaultMessageTimeToLive": "P14D",
                        "DuplicateDetectionHistoryTimeWindow": topic.duplicate_detection_window,
                        "RequiresDuplicateDetection": topic.requires_duplicate_detection,
                        "MaxMessageSizeInKilobytes": topic.max_message_size_kb,
                    },
                    "Subscriptions": subs,
                }
            )
        return {
            "UserConfig": {
                "Namespaces": [{"Name": "sbemulatorns", "Queues": [], "Topics": topics}],
                "Logging": {"Type": "Console"},
            }
        }

    def bicep_parameters(self) -> dict[str, Any]:
        """Parameters for ``infra/azure/main.bicep`` (ARM deployment-parameters JSON)."""
        topics = [
            {
                "name": t.name,
                "requiresDuplicateDetection": t.requires_duplicate_detection,
                "duplicateDetectionHistoryTimeWindow": t.duplicate_detection_window,
                "subscriptions": [
                    {
                        "name": s.name,
                        "maxDeliveryCount": s.max_delivery_count,
                        "lockDuration": s.lock_duration,
                        "defaultMessageTimeToLive": s.default_message_ttl,
                        "deadLetteringOnMessageExpiration": s.dead_lettering_on_message_expiration,
                        "requiresSession": s.requires_session,
                        "rules": routing_rules(s.name),
                    }
                    for s in t.subscriptions
                ],
            }
            for t in self.topics
        ]
        return {
            "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
            "contentVersion": "1.0.0.0",
            "parameters": {"topics": {"value": topics}},
        }


def routing_rules(subscription: str) -> list[dict[str, Any]]:
    def rule(name: str, route: str) -> dict[str, Any]:
        return {
            "Name": name,
            "Properties": {
                "FilterType": "Correlation",
                "CorrelationFilter": {"Properties": {ROUTE_PROPERTY: route}},
            },
        }

    return [rule("broadcast", BROADCAST), rule("addressed", subscription)]


def parse_topology(data: dict[str, Any]) -> Topology:
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise TopologyError("[defaults] must be a table")
    allowed_sub = set(SubscriptionSpec.__dataclass_fields__) - {"name"}
    allowed_topic = set(TopicSpec.__dataclass_fields__) - {"name", "subscriptions"}
    topics = []
    for i, raw in enumerate(data.get("topics", [])):
        where = f"topics[{i}]"
        if not isinstance(raw, dict) or not raw.get("name"):
            raise TopologyError(f"{where}: every topic needs a name")
        unknown = set(raw) - allowed_topic - {"name", "subscriptions"}
        if unknown:
            raise TopologyError(f"{where}: unknown keys {sorted(unknown)}")
        subs = []
        for j, sub in enumerate(raw.get("subscriptions", [])):
            if not isinstance(sub, dict) or not sub.get("name"):
                raise TopologyError(f"{where}.subscriptions[{j}]: every subscription needs a name")
            merged = {k: v for k, v in defaults.items() if k in allowed_sub} | sub
            unknown = set(merged) - allowed_sub - {"name"}
            if unknown:
                raise TopologyError(f"{where}.subscriptions[{j}]: unknown keys {sorted(unknown)}")
            max_delivery = merged.get("max_delivery_count", 5)
            if not isinstance(max_delivery, int) or not 1 <= max_delivery <= 2000:
                raise TopologyError(
                    f"{where}.subscriptions[{j}].max_delivery_count must be 1..2000"
                )
            subs.append(SubscriptionSpec(**merged))
        topic_values = {k: v for k, v in defaults.items() if k in allowed_topic}
        topic_values |= {k: v for k, v in raw.items() if k in allowed_topic}
        topics.append(TopicSpec(name=raw["name"], subscriptions=tuple(subs), **topic_values))
    return Topology(tuple(topics))


def load_topology(path: str | Path | None = None) -> Topology:
    path = Path(path) if path is not None else DEFAULT_TOPOLOGY
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TopologyError(f"topology file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: {exc}") from None
    return parse_topology(data)


def write_emulator_config(topology: Topology, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(topology.emulator_config(), indent=2) + "\n", encoding="utf-8")
    return path
