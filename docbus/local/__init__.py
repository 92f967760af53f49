"""The local stand-ins: what docbus runs instead of Azure, MongoDB and an LLM provider.

Nothing here is used in production. :mod:`docbus.local.emulator` is an Azure Service Bus
emulator that the real ``azure-servicebus`` SDK talks to over AMQP/TCP;
:mod:`docbus.local.llm_server` an offline OpenAI-compatible server with injectable latency and
faults; :mod:`docbus.local.mongo` runs SecantusDB (GPL-2.0, an optional extra) as a separate
process; :mod:`docbus.local.stack` starts all three for ``docbus up``, the demo and tests. The
pytest fixtures built on them are in :mod:`docbus.testing`. The names below load on first use,
so importing one stand-in does not import the others.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from docbus.local.emulator import Emulator, EmulatorThread
    from docbus.local.llm_server import LLMServer, LLMServerConfig
    from docbus.local.mongo import LocalMongo, LocalMongoError
    from docbus.local.stack import LocalStack, StackOptions

__all__ = [
    "Emulator",
    "EmulatorThread",
    "LLMServer",
    "LLMServerConfig",
    "LocalMongo",
    "LocalMongoError",
    "LocalStack",
    "StackOptions",
]

_HOMES = {
    "Emulator": "emulator",
    "EmulatorThread": "emulator",
    "LLMServer": "llm_server",
    "LLMServerConfig": "llm_server",
    "LocalMongo": "mongo",
    "LocalMongoError": "mongo",
    "LocalStack": "stack",
    "StackOptions": "stack",
}


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'docbus.local' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"docbus.local.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
