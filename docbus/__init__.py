"""docbus: the small shared core — settings, the envelope, the Mongo store, the Service Bus client.

The names below are imported lazily (on first use), so ``import docbus.local.emulator`` or the CLI's
``--help`` do not pay for the Azure SDK and pymongo. ``publisher``, ``subscriber`` and
``handlers`` import from here; docbus imports none of them.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from docbus.envelope import (
        ClaimCheck,
        Envelope,
        InvalidEnvelope,
        Source,
        application_properties,
        message_id,
    )
    from docbus.errors import ConfigurationError, DocbusError
    from docbus.records import (
        BatchCounts,
        BatchRecord,
        CheckpointKey,
        DeadLetterRecord,
        ResultRecord,
    )
    from docbus.servicebus import MessagingError, build_message, servicebus_client
    from docbus.settings import Settings, masked
    from docbus.store import PayloadError, Store, StoreError, StoreUnavailable

__all__ = [
    "BatchCounts",
    "BatchRecord",
    "CheckpointKey",
    "ClaimCheck",
    "ConfigurationError",
    "DeadLetterRecord",
    "DocbusError",
    "Envelope",
    "InvalidEnvelope",
    "MessagingError",
    "PayloadError",
    "ResultRecord",
    "Settings",
    "Source",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "application_properties",
    "build_message",
    "masked",
    "message_id",
    "servicebus_client",
]

_HOMES = {
    "BatchCounts": "records",
    "BatchRecord": "records",
    "CheckpointKey": "records",
    "ClaimCheck": "envelope",
    "ConfigurationError": "errors",
    "DeadLetterRecord": "records",
    "DocbusError": "errors",
    "Envelope": "envelope",
    "InvalidEnvelope": "envelope",
    "MessagingError": "servicebus",
    "PayloadError": "store",
    "ResultRecord": "records",
    "Settings": "settings",
    "Source": "envelope",
    "Store": "store",
    "StoreError": "store",
    "StoreUnavailable": "store",
    "application_properties": "envelope",
    "build_message": "servicebus",
    "masked": "settings",
    "message_id": "envelope",
    "servicebus_client": "servicebus",
}


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'docbus' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"docbus.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
