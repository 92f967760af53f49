"""``docbus topology``: print or write what the topology file generates.

The topology (:mod:`docbus.topology`, ``infra/topology.toml`` by default) is the single source of
truth for topics and subscriptions; this command renders it as Microsoft's emulator Config.json
(read by ``docbus emulator --config`` and by the official emulator in ``infra/local/``) or as the
ARM parameters file of ``infra/azure/main.bicep``. JSON goes to stdout, or to ``--output``.

The topology takes Azure's ranges; Microsoft's emulator refuses values beyond its own narrower
limits (time-to-live up to 1 hour, duplicate detection up to 5 minutes, at most 10 deliveries,
subscription locks of 1 to 5 minutes). ``--microsoft-limits`` clamps the emulator config into
them and says on stderr what it changed, so the same topology file also feeds ``infra/local/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from docbus.local.emulator.config import ConfigError, parse_config, parse_duration
from docbus.topology import Topology, TopologyError, load_topology

FORMATS = ("emulator-config", "bicep-params")

EXIT_CODES = {
    1: "the output file could not be written",
    2: "the topology file is malformed, or --microsoft-limits was given with bicep-params",
}

# Microsoft's emulator: (property, lowest, highest) as ISO-8601 durations, per entity kind.
_MICROSOFT_DURATIONS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "topic": (
        ("DefaultMessageTimeToLive", "PT5M", "PT1H"),
        ("DuplicateDetectionHistoryTimeWindow", "PT5S", "PT5M"),
    ),
    "subscription": (
        ("DefaultMessageTimeToLive", "PT5M", "PT1H"),
        ("LockDuration", "PT1M", "PT5M"),
    ),
}
_MICROSOFT_MAX_DELIVERY_COUNT = 10
_MICROSOFT_UNKNOWN = ("MaxMessageSizeInKilobytes", "MaxSizeInMegabytes")  # docbus additions


def render(topology: Topology, what: str) -> dict[str, Any]:
    """The JSON document ``what`` (one of :data:`FORMATS`) for ``topology``."""
    if what == "emulator-config":
        return topology.emulator_config()
    if what == "bicep-params":
        return topology.bicep_parameters()
    raise ValueError(f"unknown output {what!r}; expected one of {', '.join(FORMATS)}")


def microsoft_limits(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of an emulator config clamped into Microsoft's emulator limits, and what changed."""
    clamped = copy.deepcopy(config)
    changes: list[str] = []

    def clamp(kind: str, where: str, properties: dict[str, Any]) -> None:
        for key, low, high in _MICROSOFT_DURATIONS[kind]:
            value = properties.get(key)
            if value is None:
                continue
            seconds = parse_duration(value)
            if seconds < parse_duration(low) or seconds > parse_duration(high):
                bound = low if seconds < parse_duration(low) else high
                properties[key] = bound
                changes.append(f"{where}: {key} {value} -> {bound}")
        count = properties.get("MaxDeliveryCount")
        if isinstance(count, int) and count > _MICROSOFT_MAX_DELIVERY_COUNT:
            properties["MaxDeliveryCount"] = _MICROSOFT_MAX_DELIVERY_COUNT
            changes.append(f"{where}: MaxDeliveryCount {count} -> {_MICROSOFT_MAX_DELIVERY_COUNT}")
        for key in _MICROSOFT_UNKNOWN:
            if key in properties:
                changes.append(f"{where}: {key} dropped (not in Microsoft's schema)")
                del properties[key]

    for namespace in clamped["UserConfig"]["Namespaces"]:
        for topic in namespace.get("Topics", []):
            clamp("topic", f"topic {topic['Name']}", topic.setdefault("Properties", {}))
            for sub in topic.get("Subscriptions", []):
                where = f"subscription {topic['Name']}/{sub['Name']}"
                clamp("subscription", where, sub.setdefault("Properties", {}))
    return clamped, changes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "what",
        nargs="?",
        choices=FORMATS,
        default="emulator-config",
        help="emulator-config: Microsoft's emulator Config.json (default); "
        "bicep-params: parameters for infra/azure/main.bicep",
    )
    parser.add_argument(
        "--topology",
        type=Path,
        metavar="PATH",
        help="topology file (default: infra/topology.toml of the docbus checkout)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write the JSON here instead of stdout"
    )
    parser.add_argument(
        "--microsoft-limits",
        action="store_true",
        help="emulator-config only: clamp values into the limits of Microsoft's emulator "
        "(infra/local), listing each change on stderr",
    )


def run(args: argparse.Namespace) -> int:
    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        print(f"docbus topology: error: {exc}", file=sys.stderr)
        return 2
    try:
        # Durations and ranges are checked by the emulator's own config parser, for every output.
        parse_config(topology.emulator_config())
    except ConfigError as exc:
        print(f"docbus topology: error: invalid value in the topology: {exc}", file=sys.stderr)
        return 2
    document = render(topology, args.what)
    if args.microsoft_limits:
        if args.what != "emulator-config":
            print(
                "docbus topology: error: --microsoft-limits applies to emulator-config only",
                file=sys.stderr,
            )
            return 2
        document, changes = microsoft_limits(document)
        for change in changes:
            print(f"clamped for Microsoft's emulator: {change}", file=sys.stderr)
    text = json.dumps(document, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"docbus topology: error: cannot write {args.output}: {exc}", file=sys.stderr)
        return 1
    topics = len(topology.topics)
    subscriptions = sum(len(topic.subscriptions) for topic in topology.topics)
    print(
        f"wrote {args.output} ({args.what}: {topics} topic(s), {subscriptions} subscription(s))",
        file=sys.stderr,
    )
    return 0
