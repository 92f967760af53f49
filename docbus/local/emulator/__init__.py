"""A local Azure Service Bus namespace that the real ``azure-servicebus`` SDK talks to.

AMQP 1.0 over plain TCP (``UseDevelopmentEmulator=true`` connection strings), entities from a
file in the schema of Microsoft's emulator Config.json, state in memory or in SQLite. Layers,
bottom up: :mod:`~docbus.local.emulator.codec` (AMQP types), :mod:`~docbus.local.emulator.frames`,
:mod:`~docbus.local.emulator.wire` (messages), :mod:`~docbus.local.emulator.connection` (links, CBS,
``$management``), and the broker engine (:mod:`~docbus.local.emulator.broker`,
:mod:`~docbus.local.emulator.entity`, :mod:`~docbus.local.emulator.sessions`,
:mod:`~docbus.local.emulator.rules`), with :mod:`~docbus.local.emulator.server` on top::

    async with Emulator(load_config("Config.json")) as emulator:
        client = ServiceBusClient.from_connection_string(emulator.connection_string)
"""

from __future__ import annotations

from docbus.local.emulator.config import ConfigError, NamespaceConfig, load_config, parse_config
from docbus.local.emulator.server import Emulator, EmulatorThread

__all__ = [
    "ConfigError",
    "Emulator",
    "EmulatorThread",
    "NamespaceConfig",
    "load_config",
    "parse_config",
]
