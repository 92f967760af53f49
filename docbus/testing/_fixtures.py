"""The fixtures :mod:`docbus.testing` offers (it re-exports them as its public surface)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from docbus.local.emulator.config import parse_config
from docbus.local.emulator.server import EmulatorThread
from docbus.local.mongo import LocalMongo
from docbus.store import Store
from docbus.topology import Topology, load_topology


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
