"""Pricing: what an LLM call costs, from the model's price per million tokens and its usage.

:data:`DEFAULT_PRICES` is a table of list prices (USD per 1M input and output tokens, as
published by OpenAI for its API in 2025; Azure OpenAI's global deployments cost the same).
They change: check them, and override or extend them with ``llm.pricing`` in the settings
(``DOCBUS_LLM__PRICING='{"my-deployment": {"input": 0.15, "output": 0.6}}'``).
``docbus-offline``, the offline server's model, is priced like gpt-4o-mini **on purpose**, so a
demo shows a realistic figure — no money is spent on it.

:class:`PriceTable` looks a model up exactly, then by the longest known name it starts with
followed by ``-`` (so ``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``). The LLM client
(:mod:`handlers.llm.client`) prices each call by the model the server says answered, falling
back to the one asked for (an Azure deployment name). Unknown models cost 0, with one warning
per model. Cached-input discounts are not modelled: cached prompt tokens are priced in full.
Calls answered through the Batch API cost ``batch_input``/``batch_output`` (default: half the
live price): ``cost(..., llm_mode="batch")``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from docbus.settings import LLMSettings, Settings

__all__ = ["DEFAULT_PRICES", "OFFLINE_MODEL_PRICE", "Price", "PriceTable"]

logger = logging.getLogger(__name__)

_PER_TOKENS = 1_000_000

LLMMode = Literal["live", "batch"]


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million prompt (``input``) and completion (``output``) tokens, live and through
    the Batch API (``batch_input``/``batch_output``; None: half the live price, as OpenAI and
    Azure OpenAI Global Batch charge)."""

    input: float
    output: float
    batch_input: float | None = None
    batch_output: float | None = None

    def __post_init__(self) -> None:
        prices = (self.input, self.output, self.batch_input or 0.0, self.batch_output or 0.0)
        if min(prices) < 0:
            raise ValueError("prices must be zero or positive")

    def cost(
        self, prompt_tokens: int, completion_tokens: int, *, llm_mode: LLMMode = "live"
    ) -> float:
        """USD for this many tokens, sent live or in a provider batch."""
        if llm_mode == "batch":
            per_input = self.input / 2 if self.batch_input is None else self.batch_input
            per_output = self.output / 2 if self.batch_output is None else self.batch_output
        else:
            per_input, per_output = self.input, self.output
        return (prompt_tokens * per_input + completion_tokens * per_output) / _PER_TOKENS


OFFLINE_MODEL_PRICE = Price(0.15, 0.60)
"""The offline server's price: gpt-4o-mini's, for a realistic demo (nothing is charged)."""

DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        "gpt-4o": Price(2.50, 10.00),
        "gpt-4o-mini": Price(0.15, 0.60),
        "gpt-4.1": Price(2.00, 8.00),
        "gpt-4.1-mini": Price(0.40, 1.60),
        "gpt-4.1-nano": Price(0.10, 0.40),
        "o3": Price(2.00, 8.00),
        "o3-mini": Price(1.10, 4.40),
        "o4-mini": Price(1.10, 4.40),
        "gpt-5": Price(1.25, 10.00),
        "gpt-5-mini": Price(0.25, 2.00),
        "gpt-5-nano": Price(0.05, 0.40),
        "docbus-offline": OFFLINE_MODEL_PRICE,  # offline stand-in: gpt-4o-mini's price, on purpose
    }
)


class PriceTable:
    """Model prices: the built-in table with overrides; safe to share across tasks."""

    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        table = dict(DEFAULT_PRICES if prices is None else prices)
        for model, price in (overrides or {}).items():
            table[model] = _as_price(price)
        self._prices = table
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings | LLMSettings) -> PriceTable:
        llm = settings.llm if isinstance(settings, Settings) else settings
        return cls(overrides=llm.pricing)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.price(model) is not None

    def price(self, model: str) -> Price | None:
        """The price of ``model``: exact name, else the longest known ``<name>-...`` prefix."""
        exact = self._prices.get(model)
        if exact is not None:
            return exact
        best: str | None = None
        for name in self._prices:
            if model.startswith(f"{name}-") and (best is None or len(name) > len(best)):
                best = name
        return self._prices[best] if best is not None else None

    def cost(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        fallback: str | None = None,
        llm_mode: LLMMode = "live",
    ) -> float:
        """USD for a call answered by ``model`` (else priced as ``fallback``), sent live or in
        a provider batch (``llm_mode="batch"``: the batch price); unknown: 0."""
        price = self.price(model)
        if price is None and fallback is not None:
            price = self.price(fallback)
        if price is None:
            self._warn_once(model if fallback is None else f"{model} ({fallback})")
            return 0.0
        return price.cost(prompt_tokens, completion_tokens, llm_mode=llm_mode)

    def _warn_once(self, model: str) -> None:
        with self._lock:
            if model in self._warned:
                return
            self._warned.add(model)
        logger.warning(
            "no price known for LLM model %s: its calls are counted at $0; "
            "add it to DOCBUS_LLM__PRICING",
            model,
        )


def _as_price(value: Any) -> Price:
    if isinstance(value, Price):
        return value
    if isinstance(value, Mapping):
        return Price(
            float(value["input"]),
            float(value["output"]),
            _optional(value.get("batch_input")),
            _optional(value.get("batch_output")),
        )
    return Price(
        float(value.input),
        float(value.output),
        _optional(getattr(value, "batch_input", None)),
        _optional(getattr(value, "batch_output", None)),
    )


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)
