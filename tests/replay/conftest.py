"""A local stack for the replay tests: one topic, two subscriptions with short locks, a store."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from docbus.local.emulator import EmulatorThread
from docbus.store import Store
from docbus.topology import Topology, parse_topology
from tests.stack import Stack, build_stack

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


@pytest.fixture
def servicebus_topology() -> Topology:
    return TOPOLOGY


@pytest.fixture
def stack(
    servicebus_emulator: EmulatorThread,
    store: Store,
    local_mongo,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> Stack:
    """The stack, with the environment set so that commands' ``Settings()`` find it too."""
    return build_stack(
        servicebus_emulator, store, local_mongo, TOPOLOGY, monkeypatch, send_concurrency=1
    )


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
