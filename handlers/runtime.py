"""The runtime side of the handler SDK: what a worker (or replay) needs, a handler author not.

The worker finds handlers (:func:`discover_handlers` → :class:`RegisteredHandler`), turns a
message into the handler's :class:`~handlers.document.Document` (:func:`resolve_document`),
builds its context with the delivery state behind it (:func:`open_context`,
:func:`delivery_of`: pending writes to flush before the result is stored), checks and stores
what the handler returned (:func:`declared_output`, :func:`serialize_output`), settles by the
:class:`HandlerOutcome` a handler raised, and stores what an outage held back before it exits
(:func:`drain_backlog`). Handler authors import :mod:`handlers`; this module is the worker's.
"""

from __future__ import annotations

from handlers.decorator import HandlerFunction, HandlerSpec, HandlerTimeout, handler_spec
from handlers.delivery import Delivery, delivery_of, open_context
from handlers.discovery import HandlerDiscoveryError, RegisteredHandler, discover_handlers
from handlers.document import resolve_document
from handlers.errors import HandlerOutcome, InvalidOutput
from handlers.output import declared_output, serialize_output
from handlers.writes import drain_backlog

__all__ = [
    "Delivery",
    "HandlerDiscoveryError",
    "HandlerFunction",
    "HandlerOutcome",
    "HandlerSpec",
    "HandlerTimeout",
    "InvalidOutput",
    "RegisteredHandler",
    "declared_output",
    "delivery_of",
    "discover_handlers",
    "drain_backlog",
    "handler_spec",
    "open_context",
    "resolve_document",
    "serialize_output",
]
