"""A local stack for the replay tests: one topic, two subscriptions with short locks, a store."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr
from rich.console import Console

from docbus.emulator import EmulatorThread
from docbus.settings import MongoSettings, PublisherSettings, ServiceBusSettings, Settings
from docbus.store import Store
from docbus.topology import Topology, parse_topology

TOPOLOGY_TOML = """\
[defaults]
max_delivery_count = 2
lock_duration = "PT2S"

[[topics]]
name = "docs"

[[topics.subscriptions]]
name = "alpha"

[[topics.subscriptions]]
name = "beta"
"""

TOPOLOGY = parse_topology(
    {
        "defaults": {"max_delivery_count": 2, "lock_duration": "PT2S"},
        "topics": [{"name": "docs", "subscriptions": [{"name": "alpha"}, {"name": "beta"}]}],
    }
)


@dataclass
class Stack:
    emulator: EmulatorThread
    store: Store
    settings: Settings
    topology: Topology

    @property
    def connection_string(self) -> str:
        return self.emulator.connection_string


@pytest.fixture
def servicebus_topology() -> Topology:
    return TOPOLOGY


@pytest.fixture
def stack(
    servicebus_emulator: EmulatorThread,
    store: Store,
    local_mongo,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    """The stack, with the environment set so that commands' ``Settings()`` find it too."""
    settings = Settings(
        servicebus=ServiceBusSettings(
            connection_string=SecretStr(servicebus_emulator.connection_string)
        ),
        mongodb=MongoSettings(uri=SecretStr(local_mongo.uri), database=store.database.name),
        publisher=PublisherSettings(send_concurrency=1),
    )
    monkeypatch.setenv(
        "DOCBUS_SERVICEBUS__CONNECTION_STRING", servicebus_emulator.connection_string
    )
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)
    yield Stack(servicebus_emulator, store, settings, TOPOLOGY)


@pytest.fixture
def mongo_env(store: Store, local_mongo, monkeypatch: pytest.MonkeyPatch) -> Store:  # type: ignore[no-untyped-def]
    """The store alone, with the environment pointing the commands at it (no broker)."""
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)
    monkeypatch.delenv("DOCBUS_SERVICEBUS__CONNECTION_STRING", raising=False)
    return store


def recording_console() -> tuple[Console, io.StringIO]:
    """A wide, colourless console writing to a buffer, for reading command output."""
    buffer = io.StringIO()
    return Console(file=buffer, width=220, color_system=None, force_terminal=False), buffer
