"""A local Azure Service Bus namespace that the real ``azure-servicebus`` SDK talks to.

AMQP 1.0 over plain TCP (``UseDevelopmentEmulator=true`` connection strings), entities from a
file in the schema of Microsoft's emulator Config.json, state in memory or in SQLite. Layers,
bottom up: :mod:`~docbus.emulator.codec` (AMQP types), :mod:`~docbus.emulator.frames`,
:mod:`~docbus.emulator.wire` (messages), :mod:`~docbus.emulator.connection` (links, CBS,
``$management``), and the broker engine (:mod:`~docbus.emulator.broker`,
:mod:`~docbus.emulator.entity`, :mod:`~docbus.emulator.sessions`,
:mod:`~docbus.emulator.rules`), with :mod:`~docbus.emulator.server` on top::

    async with Emulator(load_config("Config.json")) as emulator:
        client = ServiceBusClient.from_connection_string(emulator.connection_string)
"""

from __future__ import annotations

from docbus.emulator.config import ConfigError, NamespaceConfig, load_config, parse_config
from docbus.emulator.server import Emulator, EmulatorThread

__all__ = [
    "ConfigError",
    "Emulator",
    "EmulatorThread",
    "NamespaceConfig",
    "load_config",
    "parse_config",
]
