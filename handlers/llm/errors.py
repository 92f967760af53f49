"""LLM failures: the one place ``openai`` exceptions become docbus's handler outcomes.

:func:`translate` maps every ``openai`` SDK exception onto the vocabulary of
:mod:`handlers.errors`::

    429 (rate limit), 5xx, 408, 409, timeouts,
    connection errors, malformed responses   -> Retry(after=Retry-After if the server sent one)
    400 context_length_exceeded              -> DeadLetter("ContextLengthExceeded")
    400 content_filter                       -> DeadLetter("ContentFiltered")
    429 request larger than the TPM limit    -> DeadLetter("LLMRequestTooLarge")
    other 400s and 4xx                       -> DeadLetter("LLMBadRequest")
    401                                      -> SystemicFailure("AuthenticationFailed")
    403                                      -> SystemicFailure("PermissionDenied")
    429 insufficient_quota                   -> SystemicFailure("QuotaExhausted")
    404 model or deployment not found        -> SystemicFailure("ModelNotFound")
    other 404s (a wrong base URL)            -> SystemicFailure("EndpointNotFound")

An endpoint that refuses connections again and again becomes
``SystemicFailure("EndpointUnreachable")`` in the client, which counts them
(:mod:`handlers.llm.client`). :func:`retry_after` reads the waiting time from a response's
headers; :func:`unsupported_parameter` recognises the 400s of servers that lack a feature the
client can do without (structured outputs, ``temperature``, ``max_completion_tokens``).
Pure functions, no I/O.
"""

from __future__ import annotations

import email.utils
import re
import socket
import time
from collections.abc import Iterator, Mapping

import openai
from aiohttp import ClientConnectorError

from docbus.errors import DocbusError
from handlers.errors import DeadLetter, HandlerOutcome, Retry, SystemicFailure

__all__ = [
    "LLMConfigError",
    "connection_failure",
    "parse_duration",
    "retry_after",
    "translate",
    "unsupported_parameter",
]

_DESCRIPTION_LIMIT = 500
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class LLMConfigError(DocbusError):
    """The LLM client is not configured well enough to be built."""


def translate(exc: BaseException) -> HandlerOutcome:
    """The handler outcome an ``openai`` exception stands for (see the module docstring)."""
    if isinstance(exc, HandlerOutcome):
        return exc
    if never_connected(exc):
        return Retry(reason="LLMConnectionError")
    if isinstance(exc, openai.APITimeoutError):
        return Retry(reason="LLMTimeout")
    if isinstance(exc, openai.APIStatusError):
        return _status(exc)
    if isinstance(exc, openai.APIResponseValidationError):
        return Retry(reason="LLMInvalidResponse")
    if isinstance(exc, openai.ContentFilterFinishReasonError):
        return DeadLetter("ContentFiltered", _describe(exc))
    return Retry(reason=f"LLM{type(exc).__name__}")


def connection_failure(exc: BaseException) -> str:
    """What a request that never connected ran into, in words a person can act on.

    The aiohttp transport's message is "Request timed out." even for a refused connection;
    the cause chain holds what really happened ("Connect call failed ('127.0.0.1', 9)").
    """
    chain = list(_causes(exc))
    for kind, words in (
        (ConnectionRefusedError, "connection refused"),
        (socket.gaierror, "host name not resolved"),
        (ClientConnectorError, "could not connect"),
    ):
        found = next((cause for cause in chain if isinstance(cause, kind)), None)
        if found is not None:
            return f"{words} ({found})"
    return str(exc)


def never_connected(exc: BaseException) -> bool:
    """True for a request that never reached the server: refused, unresolvable, unroutable.

    The SDK says ``APIConnectionError`` for these over httpx, but its aiohttp transport maps
    every aiohttp connection error to a connect *timeout*, so the cause chain decides: a
    refused or failed connection under a timeout is still a connection that never happened.
    """
    if not isinstance(exc, openai.APIConnectionError):
        return False
    if not isinstance(exc, openai.APITimeoutError):
        return True
    for cause in _causes(exc):
        if isinstance(cause, TimeoutError):
            return False  # a real timeout on the way (asyncio's and aiohttp's included)
        if isinstance(cause, ConnectionRefusedError | socket.gaierror | ClientConnectorError):
            return True
    return False


def _causes(exc: BaseException, depth: int = 8) -> Iterator[BaseException]:
    """What ``exc`` was raised from or during, nearest first (at most ``depth`` of them)."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None and depth > 0:
        yield cause
        cause, depth = cause.__cause__ or cause.__context__, depth - 1


def _status(exc: openai.APIStatusError) -> HandlerOutcome:
    status = exc.status_code
    code = (exc.code or "").lower()
    kind = (exc.type or "").lower()
    message = _describe(exc)
    headers = exc.response.headers
    if status == 401:
        return SystemicFailure("AuthenticationFailed", message)
    if status == 403:
        return SystemicFailure("PermissionDenied", message)
    if status == 404:
        if code in ("model_not_found", "deploymentnotfound") or "model" in message.lower():
            return SystemicFailure("ModelNotFound", message)
        return SystemicFailure("EndpointNotFound", message)
    if status == 429:
        if code == "insufficient_quota" or kind == "insufficient_quota":
            return SystemicFailure("QuotaExhausted", message)
        if headers.get("x-should-retry", "").lower() == "false":
            return DeadLetter("LLMRequestTooLarge", message)
        return Retry(after=retry_after(headers), reason="LLMRateLimited")
    if status >= 500 or status in (408, 409):
        return Retry(after=retry_after(headers), reason=f"LLMServerError{status}")
    lowered = message.lower()
    if code == "context_length_exceeded" or "maximum context length" in lowered:
        return DeadLetter("ContextLengthExceeded", message)
    if code in ("content_filter", "content_policy_violation") or "content management" in lowered:
        return DeadLetter("ContentFiltered", message)
    return DeadLetter("LLMBadRequest", f"HTTP {status}: {message}")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    if len(text) > _DESCRIPTION_LIMIT:
        text = text[: _DESCRIPTION_LIMIT - 1] + "…"
    return text


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait before retrying, from ``retry-after-ms``, ``retry-after`` (seconds or an
    HTTP date) or the ``x-ratelimit-reset-*`` of a limit whose remaining count is 0."""
    milliseconds = _float(headers.get("retry-after-ms"))
    if milliseconds is not None and milliseconds >= 0:
        return milliseconds / 1000
    value = headers.get("retry-after")
    if value:
        seconds = _float(value)
        if seconds is None:
            try:
                when = email.utils.parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError):
                when = None
            if when is not None:
                seconds = when - (time.time() if now is None else now)
        if seconds is not None:
            return max(0.0, seconds)
    resets = [
        parse_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
        for kind in ("requests", "tokens")
        if headers.get(f"x-ratelimit-remaining-{kind}") == "0"
    ]
    known = [reset for reset in resets if reset is not None]
    return max(known) if known else None


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: ``"20ms"``, ``"6.5s"``, ``"1m0s"``, ``"1h2m3s"``; or seconds."""
    text = text.strip()
    if not text:
        return None
    plain = _float(text)
    if plain is not None:
        return plain
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def unsupported_parameter(exc: BaseException) -> str | None:
    """The request parameter a 400/422 says the server does not support, if it says one.

    Returns ``"response_format"`` (no structured outputs / JSON mode), ``"temperature"`` (a
    model that only takes its default), ``"max_completion_tokens"`` (a server that wants
    ``max_tokens``) or ``"max_tokens"`` (a model that wants ``max_completion_tokens``).
    """
    if not isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        return None
    param = (exc.param or "").lower()
    message = str(getattr(exc, "message", "") or exc).lower()
    if (exc.code or "").lower() == "context_length_exceeded":
        return None
    if param.startswith("response_format") or "response_format" in message:
        return "response_format"
    if param == "temperature" or ("temperature" in message and "support" in message):
        return "temperature"
    if param == "max_tokens" and "max_completion_tokens" in message:
        return "max_tokens"
    if param == "max_completion_tokens" or (
        "max_completion_tokens" in message and ("unknown" in message or "unrecognized" in message)
    ):
        return "max_completion_tokens"
    if "max_tokens" in message and "max_completion_tokens" in message:
        return "max_tokens"
    return None
