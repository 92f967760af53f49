"""pytest fixtures for the offline LLM server, for docbus's tests and its users'.

``llm_server`` yields a running :class:`~docbus.local.llm_server.LLMServer` on a free port of
127.0.0.1, served from its own thread so that both synchronous ``openai.OpenAI`` clients and
``openai.AsyncOpenAI`` on the test's event loop can call it. Override ``llm_server_config`` (in a
conftest or a test module, or with ``@pytest.mark.parametrize("llm_server_config", [...])``) to
start it with other knobs, or change them during a test with ``llm_server.configure(...)``.
Enable with ``from docbus.testing.llm import llm_server, llm_server_config`` in a
``conftest.py`` (or list this module in ``pytest_plugins`` of the root conftest).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from docbus.local.llm_server import LLMServer, LLMServerConfig

__all__ = ["llm_server", "llm_server_config"]


@pytest.fixture
def llm_server_config() -> LLMServerConfig:
    """The configuration ``llm_server`` starts with (defaults: no faults, no limits)."""
    return LLMServerConfig()


@pytest.fixture
def llm_server(llm_server_config: LLMServerConfig) -> Iterator[LLMServer]:
    """A running offline LLM server; point clients at ``llm_server.base_url``."""
    with LLMServer(llm_server_config).in_thread() as server:
        yield server
