"""pytest fixtures that run docbus's local stand-ins for real, for docbus's tests and its users'.

- ``servicebus_emulator``: the Service Bus emulator on a free port of 127.0.0.1, in its own
  thread so sync and ``aio`` SDK clients both work, with the entities of
  ``servicebus_topology`` (default: ``infra/topology.toml``; override the fixture to test
  against your own topics). ``servicebus_connection_string`` is its connection string.
- ``local_mongo``: one SecantusDB process per test session (data in memory); ``store``: a
  connected :class:`~docbus.store.Store` on a database of its own per test, dropped afterwards.
- ``llm_server`` / ``llm_server_config``: the offline OpenAI-compatible server
  (:mod:`docbus.testing.llm`).

Enable all of them with ``pytest_plugins = ["docbus.testing"]`` in a root ``conftest.py``.
Requires the ``test`` extra (SecantusDB, pytest, pytest-asyncio).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from docbus.local.emulator.config import parse_config
from docbus.local.emulator.server import EmulatorThread
from docbus.local.mongo import LocalMongo
from docbus.store import Store
from docbus.testing.llm import llm_server, llm_server_config
from docbus.topology import Topology, load_topology

__all__ = [
    "llm_server",
    "llm_server_config",
    "local_mongo",
    "servicebus_connection_string",
    "servicebus_emulator",
    "servicebus_topology",
    "store",
]


@pytest.fixture
def servicebus_topology() -> Topology:
    """The topics and subscriptions ``servicebus_emulator`` starts with."""
    return load_topology()


@pytest.fixture
def servicebus_emulator(servicebus_topology: Topology) -> Iterator[EmulatorThread]:
    """A fresh Service Bus emulator for one test."""
    config = parse_config(servicebus_topology.emulator_config())
    with EmulatorThread(config) as emulator:
        yield emulator


@pytest.fixture
def servicebus_connection_string(servicebus_emulator: EmulatorThread) -> str:
    return servicebus_emulator.connection_string


@pytest.fixture(scope="session")
def local_mongo() -> Iterator[LocalMongo]:
    """A SecantusDB server for the whole test session."""
    with LocalMongo() as mongo:
        yield mongo


@pytest_asyncio.fixture
async def store(local_mongo: LocalMongo) -> AsyncIterator[Store]:
    """A connected store on a fresh database, dropped when the test ends."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    async with Store(local_mongo.uri, name, timeout=5.0) as connected:
        await connected.ensure_indexes()
        try:
            yield connected
        finally:
            await connected.drop_database()
