"""The worker tests' stack: the shared one (tests/stack.py) on a small topology of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from docbus.local.emulator import EmulatorThread
from docbus.local.llm_server import LLMServer, LLMServerConfig
from docbus.settings import LLMSettings
from docbus.store import Store
from docbus.topology import Topology, parse_topology
from handlers.llm import LLMClient
from tests.stack import Stack, build_stack

TOPOLOGY = parse_topology(
    {
        "defaults": {"max_delivery_count": 3, "lock_duration": "PT2S"},
        "topics": [
            {"name": "docs", "subscriptions": [{"name": "work"}, {"name": "other"}]},
            {"name": "llm", "subscriptions": [{"name": "steps"}]},
            # the built-in handlers' topic (batch mode's tests run handlers.builtin.entities)
            {"name": "documents", "subscriptions": [{"name": "entities"}]},
            {
                # a lock a handler that blocks the event loop outlives (tests of lock loss)
                "name": "slow",
                "subscriptions": [
                    {"name": "blocking", "lock_duration": "PT1S", "max_delivery_count": 2}
                ],
            },
            {
                "name": "ordered",
                "subscriptions": [{"name": "in-order", "requires_session": True}],
            },
        ],
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
    return build_stack(servicebus_emulator, store, local_mongo, TOPOLOGY, monkeypatch)


KEY = "sk-test-key"
"""The offline LLM server's key in these tests (``llm_server_config``)."""


@pytest.fixture
def llm_server_config() -> LLMServerConfig:
    return LLMServerConfig(api_key=KEY)


@pytest.fixture
async def llm(stack: Stack, llm_server: LLMServer) -> AsyncIterator[LLMClient]:
    """The real LLM client against the offline server, the stack's settings pointing at it."""
    stack.settings = stack.settings.model_copy(
        update={
            "llm": LLMSettings(
                api_key=SecretStr(KEY), base_url=llm_server.base_url, model="docbus-offline"
            )
        }
    )
    async with LLMClient.from_settings(stack.settings, stack.store) as client:
        yield client
