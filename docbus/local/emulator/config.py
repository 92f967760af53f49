"""Entity configuration of the emulator: Microsoft's emulator Config.json, read into frozen objects.

One JSON file drives both our emulator and Microsoft's (``UserConfig`` → ``Namespaces[0]`` →
``Queues`` / ``Topics`` → ``Subscriptions`` → ``Rules``), so the schema and property names are
Microsoft's. The value ranges are Azure Service Bus's, not the official emulator's narrow ones (1-10
deliveries, 1 h TTL), and lock durations below Azure's 5 s minimum are allowed because fast tests
want them. :class:`EntityProperties` is what each entity of the broker
(:mod:`docbus.local.emulator.entity`, :mod:`docbus.local.emulator.broker`) is built with;
subscription rules are compiled by :mod:`docbus.local.emulator.rules`, here already, so a bad filter
fails at load time with the path of the rule in the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rules import CorrelationFilter, FilterSyntaxError, parse_sql_filter

__all__ = [
    "ConfigError",
    "EntityProperties",
    "NamespaceConfig",
    "QueueConfig",
    "RuleConfig",
    "SubscriptionConfig",
    "TopicConfig",
    "load_config",
    "parse_config",
    "parse_duration",
]

# .NET TimeSpan.MaxValue, the "never expires" value Azure reports for DefaultMessageTimeToLive.
_TIMESPAN_MAX_SECONDS = 10675199 * 86400 + 2 * 3600 + 48 * 60 + 5.4775807
_MAX_LOCK_DURATION = 300.0
_MAX_DUPLICATE_WINDOW = 7 * 86400.0
_MAX_DELIVERY_COUNT = 2000
_MAX_MESSAGE_SIZE_KB = 100 * 1024  # Premium's 100 MB ceiling
_NAME_RE = re.compile(r"^[A-Za-z0-9]$|^[A-Za-z0-9][\w.\-/~]*[A-Za-z0-9]$")
_SUBSCRIPTION_NAME_RE = re.compile(r"^[A-Za-z0-9]$|^[A-Za-z0-9][\w.\-~]*[A-Za-z0-9]$")
_DURATION_RE = re.compile(
    r"^P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


class ConfigError(ValueError):
    """The configuration file is invalid; the message names the offending path."""


@dataclass(frozen=True, slots=True)
class EntityProperties:
    """How one queue, topic or subscription behaves. Defaults are Azure Service Bus's.

    Topics use only the sender-side fields (duplicate detection, sizes, default TTL); the
    receiver-side ones (locks, deliveries, sessions, expiry dead-lettering) belong to queues and
    subscriptions.
    """

    lock_duration: float = 60.0  # seconds a peek-lock delivery stays locked
    max_delivery_count: int = 10  # delivery attempts before MaxDeliveryCountExceeded
    default_message_ttl: float | None = None  # seconds; None = effectively infinite
    dead_lettering_on_message_expiration: bool = False  # expired: DLQ (True) or dropped
    requires_session: bool = False
    requires_duplicate_detection: bool = False
    duplicate_detection_window: float = 600.0  # seconds a message_id is remembered
    max_message_size: int = 262144  # bytes; the wire layer enforces it on transfers
    max_size_bytes: int = 1024 * 1024 * 1024  # entity capacity; QuotaExceeded when full


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """A subscription rule: exactly one of ``sql_expression`` or ``correlation`` is set."""

    name: str
    sql_expression: str | None = None
    correlation: CorrelationFilter | None = None


@dataclass(frozen=True, slots=True)
class QueueConfig:
    name: str
    properties: EntityProperties = field(default_factory=EntityProperties)


@dataclass(frozen=True, slots=True)
class SubscriptionConfig:
    name: str
    properties: EntityProperties = field(default_factory=EntityProperties)
    rules: tuple[RuleConfig, ...] = ()  # no rules: the subscription receives everything


@dataclass(frozen=True, slots=True)
class TopicConfig:
    name: str
    properties: EntityProperties = field(default_factory=EntityProperties)
    subscriptions: tuple[SubscriptionConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class NamespaceConfig:
    queues: tuple[QueueConfig, ...] = ()
    topics: tuple[TopicConfig, ...] = ()
    name: str = "sbemulatorns"


def parse_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration such as ``PT1M``, ``PT0.5S``, ``P14D`` or ``P1DT2H``.

    Years and months are refused (their length is ambiguous); .NET's ``TimeSpan.MaxValue``
    (``P10675199DT2H48M5.4775807S``) parses to its huge value, which callers treat as infinite.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{text!r} is not an ISO-8601 duration string such as 'PT1M'")
    match = _DURATION_RE.match(text.strip().upper())
    if match is None or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise ConfigError(
            f"{text!r} is not an ISO-8601 duration such as 'PT30S', 'PT1M', 'PT0.5S' or 'P14D' "
            "(years and months are not supported)"
        )
    parts = {key: float(value) for key, value in match.groupdict().items() if value is not None}
    return (
        parts.get("weeks", 0.0) * 7 * 86400
        + parts.get("days", 0.0) * 86400
        + parts.get("hours", 0.0) * 3600
        + parts.get("minutes", 0.0) * 60
        + parts.get("seconds", 0.0)
    )


def load_config(path: str | Path) -> NamespaceConfig:
    """Read and validate a Config.json file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # files saved by Windows tools carry a BOM
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def parse_config(data: Mapping[str, Any]) -> NamespaceConfig:
    """Validate the decoded JSON of a Config.json and build a :class:`NamespaceConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError("the configuration must be a JSON object with a 'UserConfig' key")
    user = _mapping(data.get("UserConfig"), "UserConfig")
    namespaces = user.get("Namespaces")
    if not isinstance(namespaces, list) or not namespaces:
        raise ConfigError("UserConfig.Namespaces: expected a list with one namespace")
    if len(namespaces) > 1:
        raise ConfigError(
            f"UserConfig.Namespaces: {len(namespaces)} namespaces given; the emulator serves one"
        )
    namespace = _mapping(namespaces[0], "UserConfig.Namespaces[0]")
    name = namespace.get("Name", "sbemulatorns")
    if not isinstance(name, str) or not name:
        raise ConfigError("UserConfig.Namespaces[0].Name: expected a non-empty string")

    queues = tuple(
        _parse_queue(item, f"Queues[{i}]")
        for i, item in enumerate(_list(namespace.get("Queues"), "Queues"))
    )
    topics = tuple(
        _parse_topic(item, f"Topics[{i}]")
        for i, item in enumerate(_list(namespace.get("Topics"), "Topics"))
    )
    seen: dict[str, str] = {}
    names = [("Queues", i, q.name) for i, q in enumerate(queues)]
    names += [("Topics", i, t.name) for i, t in enumerate(topics)]
    for kind, i, entity_name in names:
        key = entity_name.lower()
        if key in seen:
            raise ConfigError(
                f"{kind}[{i}].Name: {entity_name!r} is already used by {seen[key]} "
                "(queue and topic names share one case-insensitive namespace)"
            )
        seen[key] = f"{kind}[{i}]"
    return NamespaceConfig(queues=queues, topics=topics, name=name)


# Properties each entity kind accepts. Forwarding keys are accepted only when empty, because the
# official emulator's sample files carry them as "".
_QUEUE_KEYS = {
    "MaxDeliveryCount", "LockDuration", "DefaultMessageTimeToLive",
    "DeadLetteringOnMessageExpiration", "RequiresSession", "RequiresDuplicateDetection",
    "DuplicateDetectionHistoryTimeWindow", "ForwardTo", "ForwardDeadLetteredMessagesTo",
    "MaxMessageSizeInKilobytes", "MaxSizeInMegabytes",
}  # fmt: skip
_TOPIC_KEYS = {
    "DefaultMessageTimeToLive", "RequiresDuplicateDetection",
    "DuplicateDetectionHistoryTimeWindow", "MaxMessageSizeInKilobytes", "MaxSizeInMegabytes",
}  # fmt: skip
_SUBSCRIPTION_KEYS = {
    "MaxDeliveryCount", "LockDuration", "DefaultMessageTimeToLive",
    "DeadLetteringOnMessageExpiration", "RequiresSession", "ForwardTo",
    "ForwardDeadLetteredMessagesTo",
}  # fmt: skip
_CORRELATION_KEYS = {
    "ContentType": "content_type", "CorrelationId": "correlation_id", "Label": "subject",
    "Subject": "subject", "MessageId": "message_id", "ReplyTo": "reply_to",
    "ReplyToSessionId": "reply_to_session_id", "SessionId": "session_id", "To": "to",
}  # fmt: skip


def _parse_queue(item: Any, path: str) -> QueueConfig:
    entity = _mapping(item, path)
    name = _name(entity, path, _NAME_RE)
    props = _properties(entity, path, _QUEUE_KEYS)
    return QueueConfig(name=name, properties=props)


def _parse_topic(item: Any, path: str) -> TopicConfig:
    entity = _mapping(item, path)
    name = _name(entity, path, _NAME_RE)
    props = _properties(entity, path, _TOPIC_KEYS)
    subscriptions = tuple(
        _parse_subscription(sub, f"{path}.Subscriptions[{i}]")
        for i, sub in enumerate(_list(entity.get("Subscriptions"), f"{path}.Subscriptions"))
    )
    seen: set[str] = set()
    for i, sub in enumerate(subscriptions):
        if sub.name.lower() in seen:
            raise ConfigError(
                f"{path}.Subscriptions[{i}].Name: {sub.name!r} appears twice in topic {name!r}"
            )
        seen.add(sub.name.lower())
    return TopicConfig(name=name, properties=props, subscriptions=subscriptions)


def _parse_subscription(item: Any, path: str) -> SubscriptionConfig:
    entity = _mapping(item, path)
    name = _name(entity, path, _SUBSCRIPTION_NAME_RE)
    props = _properties(entity, path, _SUBSCRIPTION_KEYS)
    rules = tuple(
        _parse_rule(rule, f"{path}.Rules[{i}]")
        for i, rule in enumerate(_list(entity.get("Rules"), f"{path}.Rules"))
    )
    names = [rule.name.lower() for rule in rules]
    for i, rule_name in enumerate(names):
        if rule_name in names[:i]:
            raise ConfigError(f"{path}.Rules[{i}].Name: {rules[i].name!r} appears twice")
    return SubscriptionConfig(name=name, properties=props, rules=rules)


def _parse_rule(item: Any, path: str) -> RuleConfig:  # noqa: C901 - one check per field of Microsoft's rule schema
    rule = _mapping(item, path)
    name = rule.get("Name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}.Name: expected a non-empty rule name")
    props = _mapping(rule.get("Properties"), f"{path}.Properties")
    where = f"{path} (rule {name!r})"
    action = props.get("Action")
    if action:
        expression = action.get("SqlExpression") if isinstance(action, Mapping) else action
        if expression:
            raise ConfigError(
                f"{where}.Properties.Action: rule actions are not supported by this emulator "
                f"({expression!r}); remove the action or the rule"
            )
    filter_type = props.get("FilterType")
    if not isinstance(filter_type, str) or filter_type.lower() not in ("sql", "correlation"):
        raise ConfigError(
            f"{where}.Properties.FilterType: expected 'Correlation' or 'Sql', got {filter_type!r}"
        )
    if filter_type.lower() == "sql":
        sql = _mapping(props.get("SqlFilter"), f"{where}.Properties.SqlFilter")
        expression = sql.get("SqlExpression")
        if not isinstance(expression, str) or not expression.strip():
            raise ConfigError(f"{where}.Properties.SqlFilter.SqlExpression: expected a string")
        try:
            parse_sql_filter(expression)
        except FilterSyntaxError as exc:
            raise ConfigError(f"{where}.Properties.SqlFilter.SqlExpression: {exc}") from exc
        return RuleConfig(name=name, sql_expression=expression)

    correlation = _mapping(props.get("CorrelationFilter"), f"{where}.Properties.CorrelationFilter")
    fields: dict[str, Any] = {}
    for key, value in correlation.items():
        key_path = f"{where}.Properties.CorrelationFilter.{key}"
        if key == "Properties":
            properties = _mapping(value, key_path)
            for prop, prop_value in properties.items():
                if isinstance(prop_value, (dict, list)) or prop_value is None:
                    raise ConfigError(
                        f"{key_path}.{prop}: expected a string, number or boolean value"
                    )
            fields["properties"] = dict(properties)
        elif key in _CORRELATION_KEYS:
            if value is None or value == "":
                continue  # the official samples leave unused fields empty
            if not isinstance(value, str):
                raise ConfigError(f"{key_path}: expected a string, got {value!r}")
            fields[_CORRELATION_KEYS[key]] = value
        else:
            raise ConfigError(
                f"{key_path}: unknown correlation filter field; expected one of "
                f"{', '.join(sorted({*_CORRELATION_KEYS, 'Properties'}))}"
            )
    if not fields or fields == {"properties": {}}:
        raise ConfigError(
            f"{where}.Properties.CorrelationFilter: a correlation filter needs at least one field"
        )
    return RuleConfig(name=name, correlation=CorrelationFilter(**fields))


def _properties(entity: Mapping[str, Any], path: str, allowed: set[str]) -> EntityProperties:  # noqa: C901 - one check per entity property of Microsoft's schema
    raw = entity.get("Properties", {})
    props = _mapping(raw if raw is not None else {}, f"{path}.Properties")
    values: dict[str, Any] = {}
    for key, value in props.items():
        where = f"{path}.Properties.{key}"
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown or unsupported property here; expected one of "
                f"{', '.join(sorted(allowed))}"
            )
        if key in ("ForwardTo", "ForwardDeadLetteredMessagesTo"):
            if value not in (None, ""):
                raise ConfigError(f"{where}: auto-forwarding is not supported by this emulator")
        elif key == "MaxDeliveryCount":
            values["max_delivery_count"] = _int(value, where, 1, _MAX_DELIVERY_COUNT)
        elif key == "LockDuration":
            seconds = _duration(value, where)
            if seconds > _MAX_LOCK_DURATION:
                raise ConfigError(f"{where}: {value!r} is longer than the 5 minute maximum")
            values["lock_duration"] = seconds
        elif key == "DefaultMessageTimeToLive":
            seconds = _duration(value, where)
            # TimeSpan.MaxValue (and anything near it) means "never expires".
            values["default_message_ttl"] = (
                None if seconds >= _TIMESPAN_MAX_SECONDS - 1 else seconds
            )
        elif key == "DuplicateDetectionHistoryTimeWindow":
            seconds = _duration(value, where)
            if seconds > _MAX_DUPLICATE_WINDOW:
                raise ConfigError(f"{where}: {value!r} is longer than the 7 day maximum")
            values["duplicate_detection_window"] = seconds
        elif key == "DeadLetteringOnMessageExpiration":
            values["dead_lettering_on_message_expiration"] = _bool(value, where)
        elif key == "RequiresSession":
            values["requires_session"] = _bool(value, where)
        elif key == "RequiresDuplicateDetection":
            values["requires_duplicate_detection"] = _bool(value, where)
        elif key == "MaxMessageSizeInKilobytes":
            values["max_message_size"] = _int(value, where, 1, _MAX_MESSAGE_SIZE_KB) * 1024
        elif key == "MaxSizeInMegabytes":
            values["max_size_bytes"] = _int(value, where, 1, 10 * 1024 * 1024) * 1024 * 1024
    return EntityProperties(**values)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a JSON object, got {_kind(value)}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a JSON list, got {_kind(value)}")
    return value


def _name(entity: Mapping[str, Any], path: str, pattern: re.Pattern[str]) -> str:
    name = entity.get("Name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}.Name: expected a non-empty name")
    if not pattern.match(name) or "$" in name or len(name) > 260:
        raise ConfigError(
            f"{path}.Name: {name!r} is not a valid entity name (letters, digits, '.', '-', '_'"
            f"{', /' if pattern is _NAME_RE else ''}; starting and ending with a letter or digit)"
        )
    return name


def _duration(value: Any, where: str) -> float:
    try:
        seconds = parse_duration(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if seconds <= 0:
        raise ConfigError(f"{where}: {value!r} must be longer than zero")
    return seconds


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{where}: {value} is outside the allowed range {low}..{high}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )
