"""A local stack per test: emulator with a small topology, a fresh Mongo database, settings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from docbus.emulator import EmulatorThread
from docbus.settings import MongoSettings, ServiceBusSettings, Settings
from docbus.store import Store
from docbus.topology import Topology, parse_topology

TOPOLOGY = parse_topology(
    {
        "defaults": {"max_delivery_count": 3, "lock_duration": "PT2S"},
        "topics": [
            {"name": "docs", "subscriptions": [{"name": "work"}, {"name": "other"}]},
            {"name": "llm", "subscriptions": [{"name": "steps"}]},
            {
                "name": "ordered",
                "subscriptions": [{"name": "in-order", "requires_session": True}],
            },
        ],
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
def stack(servicebus_emulator: EmulatorThread, store: Store, local_mongo) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    settings = Settings(
        servicebus=ServiceBusSettings(
            connection_string=SecretStr(servicebus_emulator.connection_string)
        ),
        mongodb=MongoSettings(uri=SecretStr(local_mongo.uri), database=store.database.name),
    )
    yield Stack(servicebus_emulator, store, settings, TOPOLOGY)
