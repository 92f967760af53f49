"""handlers.llm: the LLM client behind ``ctx.llm`` — validated extraction, audit, cost, limits.

One :class:`LLMClient` per worker process (``LLMClient.from_settings(settings, store)``) over
the ``openai`` SDK — OpenAI, Azure OpenAI (key or Entra ID) or any OpenAI-compatible server —
holds the shared :class:`RateLimiter`, :class:`PriceTable` and what it learnt about the server;
``client.bind(ctx)`` gives the :class:`BoundLLM` a handler calls as ``ctx.llm``::

    invoice = await ctx.llm.extract(Invoice, doc.text, system="Extract the invoice.")
    summary = await ctx.llm.complete(f"Summarise: {doc.text}", max_tokens=200)

Every request is audited in ``llm_calls`` and priced into the batch's totals; budgets are
checked before each one. Failures arrive in the vocabulary of :mod:`handlers.errors`
(:func:`translate` is the one place ``openai`` exceptions are mapped). Modules: ``client``,
``bound``, ``schema``, ``audit``, ``errors``, ``pricing``, ``ratelimit``, ``tokens``, and for
batch mode (calls through the provider's Batch API at half the price) ``mode`` and ``batch``.

The names load on first use, so ``import handlers.llm`` costs nothing and ``openai`` (about
half a second to import) is imported only by a module that needs it.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from handlers.llm.bound import BoundLLM, PromptOrMessages
    from handlers.llm.client import AZURE_SCOPE, LLMClient, LLMOptions
    from handlers.llm.errors import LLMConfigError, parse_duration, retry_after, translate
    from handlers.llm.pricing import DEFAULT_PRICES, OFFLINE_MODEL_PRICE, Price, PriceTable
    from handlers.llm.ratelimit import ModelLimits, RateLimiter, Reservation
    from handlers.llm.schema import ResponseSchema, describe_errors, parse_answer
    from handlers.llm.tokens import TokenCounter, heuristic_tokens

_MODULE_OF = {
    "AZURE_SCOPE": "client",
    "DEFAULT_PRICES": "pricing",
    "OFFLINE_MODEL_PRICE": "pricing",
    "BoundLLM": "bound",
    "LLMClient": "client",
    "LLMConfigError": "errors",
    "LLMOptions": "client",
    "ModelLimits": "ratelimit",
    "Price": "pricing",
    "PriceTable": "pricing",
    "PromptOrMessages": "bound",
    "RateLimiter": "ratelimit",
    "Reservation": "ratelimit",
    "ResponseSchema": "schema",
    "TokenCounter": "tokens",
    "describe_errors": "schema",
    "heuristic_tokens": "tokens",
    "parse_answer": "schema",
    "parse_duration": "errors",
    "retry_after": "errors",
    "translate": "errors",
}

__all__ = [
    "AZURE_SCOPE",
    "DEFAULT_PRICES",
    "OFFLINE_MODEL_PRICE",
    "BoundLLM",
    "LLMClient",
    "LLMConfigError",
    "LLMOptions",
    "ModelLimits",
    "Price",
    "PriceTable",
    "PromptOrMessages",
    "RateLimiter",
    "Reservation",
    "ResponseSchema",
    "TokenCounter",
    "describe_errors",
    "heuristic_tokens",
    "parse_answer",
    "parse_duration",
    "retry_after",
    "translate",
]


def __getattr__(name: str) -> _typing.Any:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
