"""Fixtures for the offline LLM server tests: the server (from docbus.testing.llm) and clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from docbus.local.llm_server import LLMServer
from tests.local.llm_server.llm_samples import API_KEY

__all__ = ["aclient", "client"]


@pytest.fixture
def client(llm_server: LLMServer) -> Iterator[openai.OpenAI]:
    """A sync OpenAI client without retries, so each fault surfaces as it happened."""
    with openai.OpenAI(base_url=llm_server.base_url, api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def aclient(llm_server: LLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """An async OpenAI client without retries."""
    async with openai.AsyncOpenAI(
        base_url=llm_server.base_url, api_key=API_KEY, max_retries=0
    ) as sdk:
        yield sdk
