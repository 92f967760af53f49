"""The local stack as the end-to-end tests see it: emulator, a fresh Mongo database, settings.

Test packages override ``servicebus_topology`` with their own topics and build their ``stack``
fixture with :func:`build_stack`, which also points the environment at the stack so that
commands reading ``Settings()`` and worker subprocesses find it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr

from docbus.local.emulator import EmulatorThread
from docbus.settings import MongoSettings, PublisherSettings, ServiceBusSettings, Settings
from docbus.store import Store
from docbus.topology import Topology


@dataclass
class Stack:
    emulator: EmulatorThread
    store: Store
    settings: Settings
    topology: Topology

    @property
    def connection_string(self) -> str:
        return self.emulator.connection_string


def build_stack(
    emulator: EmulatorThread,
    store: Store,
    local_mongo: Any,
    topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
    *,
    send_concurrency: int = 4,
) -> Stack:
    settings = Settings(
        servicebus=ServiceBusSettings(connection_string=SecretStr(emulator.connection_string)),
        mongodb=MongoSettings(uri=SecretStr(local_mongo.uri), database=store.database.name),
        publisher=PublisherSettings(send_concurrency=send_concurrency),
    )
    monkeypatch.setenv("DOCBUS_SERVICEBUS__CONNECTION_STRING", emulator.connection_string)
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)
    return Stack(emulator, store, settings, topology)
