"""Fixtures of the docbus package's tests: an environment without docbus's own variables."""

from __future__ import annotations

import os

import pytest

ECOSYSTEM = (
    "MONGODB_URI",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_VERSION",
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
)
"""The ecosystem variables :class:`~docbus.settings.Settings` honours besides ``DOCBUS_*``."""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``DOCBUS_*`` nor ecosystem variable from the caller's shell reaches the test."""
    for name in list(os.environ):
        if name.startswith("DOCBUS_") or name in ECOSYSTEM:
            monkeypatch.delenv(name)
