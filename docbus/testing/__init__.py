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

from docbus.testing._fixtures import (
    local_mongo,
    servicebus_connection_string,
    servicebus_emulator,
    servicebus_topology,
    store,
)
from docbus.testing.llm import llm_server, llm_server_config

__all__ = [
    "llm_server",
    "llm_server_config",
    "local_mongo",
    "servicebus_connection_string",
    "servicebus_emulator",
    "servicebus_topology",
    "store",
]
