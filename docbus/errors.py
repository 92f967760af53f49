"""The root of docbus's own exception tree.

Every error docbus raises on purpose derives from :class:`DocbusError`, so callers can catch the
library's failures in one clause while foreign exceptions (azure, pymongo, openai) never leak
untranslated: :mod:`docbus.store` turns pymongo errors into :class:`~docbus.store.StoreError`,
:mod:`docbus.servicebus` turns azure errors into :class:`~docbus.servicebus.MessagingError`, and
:mod:`docbus.envelope` reports unreadable messages as :class:`~docbus.envelope.InvalidEnvelope`.
Handler outcomes (retry, dead-letter) are a separate vocabulary in :mod:`handlers.errors`.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "DocbusError"]


class DocbusError(Exception):
    """Base class of every error docbus raises deliberately."""


class ConfigurationError(DocbusError):
    """The settings are incomplete or contradictory; the message says what to set."""
