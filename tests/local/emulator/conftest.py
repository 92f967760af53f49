"""Fixtures for the emulator's conformance tests: a fresh emulator per test, real SDK clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient

from docbus.local.emulator.config import parse_config
from docbus.local.emulator.server import EmulatorThread


def _queue(name: str, **properties: Any) -> dict[str, Any]:
    return {"Name": name, "Properties": properties}


CONFIG: dict[str, Any] = {
    "UserConfig": {
        "Namespaces": [
            {
                "Name": "sbemulatorns",
                "Queues": [
                    _queue("q", MaxDeliveryCount=10, LockDuration="PT30S"),
                    _queue("q-mdc2", MaxDeliveryCount=2),
                    _queue("q-lock", LockDuration="PT1S", MaxDeliveryCount=5),
                    _queue("q-ttl-dlq", DefaultMessageTimeToLive="PT1S",
                           DeadLetteringOnMessageExpiration=True),
                    _queue("q-ttl-drop", DefaultMessageTimeToLive="PT1S"),
                    _queue("q-dup", RequiresDuplicateDetection=True,
                           DuplicateDetectionHistoryTimeWindow="PT1M"),
                    _queue("q-full", MaxSizeInMegabytes=1),
                    _queue("q-big", MaxMessageSizeInKilobytes=1024),
                    _queue("sq", RequiresSession=True, LockDuration="PT30S"),
                    _queue("sq-lock", RequiresSession=True, LockDuration="PT1S"),
                ],
                "Topics": [
                    {
                        "Name": "t",
                        "Properties": {},
                        "Subscriptions": [
                            {"Name": "all", "Properties": {"MaxDeliveryCount": 3}},
                            {
                                "Name": "urgent",
                                "Properties": {},
                                "Rules": [
                                    {
                                        "Name": "label",
                                        "Properties": {
                                            "FilterType": "Correlation",
                                            "CorrelationFilter": {"Label": "urgent"},
                                        },
                                    }
                                ],
                            },
                            {
                                "Name": "blue",
                                "Properties": {},
                                "Rules": [
                                    {
                                        "Name": "colour",
                                        "Properties": {
                                            "FilterType": "Correlation",
                                            "CorrelationFilter": {"Properties": {"colour": "blue"}},
                                        },
                                    }
                                ],
                            },
                        ],
                    }
                ],
            }
        ],
        "Logging": {"Type": "Console"},
    }
}  # fmt: skip


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(parse_config(CONFIG)) as emu:
        yield emu


@pytest.fixture
def client(emulator: EmulatorThread) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(emulator.connection_string) as sb:
        yield sb
