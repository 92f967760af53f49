"""Configuration of the offline LLM server: latency, injected faults, limits, auth.

:class:`LLMServerConfig` is a small frozen object grouping :class:`Latency`, :class:`Faults` and
:class:`Limits`. The server (:mod:`docbus.local.llm_server.server`) reads the current object on
every request, so swapping it — in process with :meth:`LLMServer.configure`, or over HTTP through
``POST /_admin/config`` — changes behaviour at runtime; :meth:`LLMServerConfig.updated` is the one
place a partial JSON mapping is checked and merged. The CLI (:mod:`docbus.cli.llm_server`)
builds one from flags. Durations are seconds.
"""

from __future__ import annotations

import dataclasses
import math
import random
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from docbus.local.llm_server.batch_config import BatchConfig

OFFLINE_MODEL = "docbus-offline"

# z-score of the 95th percentile of a standard normal distribution.
_Z95 = 1.6448536269514722


@dataclass(frozen=True, slots=True)
class Latency:
    """How long the server waits before answering a chat completion.

    ``distribution`` picks which fields apply: ``fixed`` uses ``seconds``; ``uniform`` draws from
    ``[low, high]``; ``lognormal`` draws from the log-normal distribution whose median and 95th
    percentile are ``median`` and ``p95`` (the long tail real LLM APIs show). Draws come from the
    server's seeded per-request generator, so a run is reproducible.
    """

    distribution: Literal["fixed", "uniform", "lognormal"] = "fixed"
    seconds: float = 0.0
    low: float = 0.0
    high: float = 0.0
    median: float = 0.0
    p95: float = 0.0

    def __post_init__(self) -> None:
        if min(self.seconds, self.low, self.high, self.median, self.p95) < 0:
            raise ValueError("latency values must be >= 0")
        if self.distribution == "uniform" and self.low > self.high:
            raise ValueError("uniform latency needs low <= high")
        if self.distribution == "lognormal" and not 0 < self.median <= self.p95:
            raise ValueError("lognormal latency needs 0 < median <= p95")

    @classmethod
    def fixed(cls, seconds: float) -> Latency:
        return cls("fixed", seconds=seconds)

    @classmethod
    def uniform(cls, low: float, high: float) -> Latency:
        return cls("uniform", low=low, high=high)

    @classmethod
    def lognormal(cls, median: float, p95: float) -> Latency:
        return cls("lognormal", median=median, p95=p95)

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds."""
        if self.distribution == "uniform":
            return rng.uniform(self.low, self.high)
        if self.distribution == "lognormal":
            mu = math.log(self.median)
            sigma = (math.log(self.p95) - mu) / _Z95
            return rng.lognormvariate(mu, sigma)
        return self.seconds


@dataclass(frozen=True, slots=True)
class Faults:
    """Injected failures, as probabilities per chat-completion request.

    The status faults (``rate_429``, ``rate_500``, ``rate_503``, ``rate_timeout``) exclude each
    other and must sum to at most 1. A timeout holds the request ``timeout_hold`` seconds, then
    drops the connection (``timeout_mode="drop"``) or answers late (``"late"``). The content faults
    apply to JSON answers only: ``rate_malformed`` cuts the JSON short, ``rate_schema`` returns
    valid JSON that breaks the schema (a required field missing or a wrong type).
    ``quota_exhausted`` answers every request with OpenAI's ``insufficient_quota`` 429.
    """

    rate_429: float = 0.0
    retry_after: float = 1.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_timeout: float = 0.0
    timeout_hold: float = 30.0
    timeout_mode: Literal["drop", "late"] = "drop"
    rate_malformed: float = 0.0
    rate_schema: float = 0.0
    quota_exhausted: bool = False

    def __post_init__(self) -> None:
        rates = {
            "rate_429": self.rate_429,
            "rate_500": self.rate_500,
            "rate_503": self.rate_503,
            "rate_timeout": self.rate_timeout,
            "rate_malformed": self.rate_malformed,
            "rate_schema": self.rate_schema,
        }
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")
        if self.rate_429 + self.rate_500 + self.rate_503 + self.rate_timeout > 1.0 + 1e-9:
            raise ValueError("rate_429 + rate_500 + rate_503 + rate_timeout must be <= 1")
        if self.rate_malformed + self.rate_schema > 1.0 + 1e-9:
            raise ValueError("rate_malformed + rate_schema must be <= 1")
        if self.retry_after < 0 or self.timeout_hold < 0:
            raise ValueError("retry_after and timeout_hold must be >= 0")


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate and size limits, enforced like OpenAI's.

    ``tpm`` and ``rpm`` bound the tokens (prompt + completion) and requests admitted in any
    sliding ``window`` (60 s, as OpenAI's per-minute limits; shorten it only in tests); a request
    that would exceed either gets a 429 whose ``Retry-After`` is the exact wait until it fits.
    ``context_tokens`` bounds prompt plus requested completion tokens (400
    ``context_length_exceeded``). ``None`` means unlimited.
    """

    tpm: int | None = None
    rpm: int | None = None
    context_tokens: int = 128_000
    window: float = 60.0

    def __post_init__(self) -> None:
        if self.tpm is not None and self.tpm <= 0:
            raise ValueError("tpm must be > 0 or None")
        if self.rpm is not None and self.rpm <= 0:
            raise ValueError("rpm must be > 0 or None")
        if self.context_tokens <= 0 or self.window <= 0:
            raise ValueError("context_tokens and window must be > 0")


@dataclass(frozen=True, slots=True)
class LLMServerConfig:
    """Everything the offline LLM server does differently from its defaults.

    ``model`` is the one model ``/v1/models`` lists; any other requested name is accepted and
    echoed back unless ``strict_model``. ``api_key`` set means requests must carry it as
    ``Authorization: Bearer <key>`` (or ``api-key: <key>``) or get a 401. ``seed`` makes fault
    and latency draws reproducible; generated content depends on the request alone.
    ``json_schema`` False makes the server answer a ``json_schema`` response format with the 400
    that servers without structured outputs send (``json_object`` still works), so clients'
    fallbacks can be tested.
    """

    host: str = "127.0.0.1"
    port: int = 0
    model: str = OFFLINE_MODEL
    strict_model: bool = False
    api_key: str | None = None
    seed: int = 0
    json_schema: bool = True
    latency: Latency = field(default_factory=Latency)
    faults: Faults = field(default_factory=Faults)
    limits: Limits = field(default_factory=Limits)
    batch: BatchConfig = field(default_factory=BatchConfig)
    """The Batch API's times, limits and faults (:mod:`docbus.local.llm_server.batches`)."""

    def updated(self, changes: Mapping[str, Any]) -> LLMServerConfig:
        """A copy with ``changes`` applied; nested groups may be partial mappings.

        ``{"faults": {"rate_429": 0.5}, "latency": 0.2, "api_key": null}`` changes those fields
        and keeps the rest. A bare number for ``latency`` means a fixed delay. Unknown fields and
        wrong types raise :class:`ValueError`.
        """
        return _merge(self, changes, path="")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``GET /_admin/config`` returns (the API key is masked)."""
        data = dataclasses.asdict(self)
        if self.api_key is not None:
            data["api_key"] = mask_key(self.api_key)
        return data


def mask_key(key: str) -> str:
    """Show a key the way OpenAI's error messages do: ``sk-abc***wxyz``."""
    if len(key) <= 8:
        return "***"
    return f"{key[:3]}***{key[-4:]}"


def _merge(obj: Any, changes: Mapping[str, Any], path: str) -> Any:
    if not isinstance(changes, Mapping):
        raise ValueError(f"{path or 'config'} must be an object")
    hints = typing.get_type_hints(type(obj))
    updates: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in hints:
            raise ValueError(f"unknown config field {path}{name!r}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if isinstance(value, type(current)):
                updates[name] = value
            elif isinstance(current, Latency) and _is_number(value):
                updates[name] = Latency.fixed(float(value))
            else:
                updates[name] = _merge(current, value, path=f"{path}{name}.")
        else:
            updates[name] = _coerce(value, hints[name], f"{path}{name}")
    try:
        return dataclasses.replace(obj, **updates)
    except TypeError as exc:  # pragma: no cover - hints above cover every field
        raise ValueError(str(exc)) from exc


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, name)
            except ValueError:
                continue
        raise ValueError(f"{name}: {value!r} is not a {hint}")
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise ValueError(f"{name} must be one of {typing.get_args(hint)}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if _is_number(value) and float(value).is_integer():
            return int(value)
    elif hint is float:
        if _is_number(value):
            return float(value)
    elif hint is str and isinstance(value, str):
        return value
    raise ValueError(f"{name}: {value!r} is not a {getattr(hint, '__name__', hint)}")
