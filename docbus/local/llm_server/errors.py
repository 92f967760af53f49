"""OpenAI's error responses, as the offline LLM server sends them.

:class:`APIError` carries the HTTP status, OpenAI's ``{"error": {message, type, param, code}}``
body, extra headers (``Retry-After``, ``x-ratelimit-*``) and the outcome to count
(:class:`~docbus.local.llm_server.stats.Outcome`). The constructors below reproduce the messages and
codes the ``openai`` SDK maps to its exceptions (401 ``AuthenticationError``, 429
``RateLimitError``, 400 ``BadRequestError``...), so a client's error handling sees what it would
see from OpenAI. Raised by :mod:`docbus.local.llm_server.completions` and
:mod:`docbus.local.llm_server.server`; rendered by the latter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from docbus.local.llm_server.config import mask_key
from docbus.local.llm_server.stats import Outcome


class APIError(Exception):
    """An HTTP error answer in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        outcome: Outcome = Outcome.BAD_REQUEST,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.outcome = outcome
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def invalid_api_key(given: str | None) -> APIError:
    if not given:
        return APIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            outcome=Outcome.UNAUTHORIZED,
        )
    return APIError(
        401,
        f"Incorrect API key provided: {mask_key(given)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
        outcome=Outcome.UNAUTHORIZED,
    )


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        outcome=Outcome.MODEL_NOT_FOUND,
    )


def context_length_exceeded(limit: int, prompt: int, completion: int | None) -> APIError:
    if completion:
        detail = (
            f"However, you requested {prompt + completion} tokens ({prompt} in the messages, "
            f"{completion} in the completion). Please reduce the length of the messages or "
            "completion."
        )
    else:
        detail = (
            f"However, your messages resulted in {prompt} tokens. Please reduce the length of "
            "the messages."
        )
    return APIError(
        400,
        f"This model's maximum context length is {limit} tokens. {detail}",
        param="messages",
        code="context_length_exceeded",
        outcome=Outcome.CONTEXT_LENGTH_EXCEEDED,
    )


def rate_limited(
    model: str,
    kind: str,
    *,
    limit: int,
    used: int,
    requested: int,
    retry_after: float | None,
    outcome: Outcome,
    headers: Mapping[str, str],
) -> APIError:
    """429 for a requests or tokens limit; ``retry_after`` None means it never fits."""
    label = "tokens per min (TPM)" if kind == "tokens" else "requests per min (RPM)"
    extra = dict(headers)
    if retry_after is None:
        message = (
            f"Request too large for {model} in organization org-docbus-offline on {label}: "
            f"Limit {limit}, Requested {requested}. The input or output tokens must be reduced "
            "in order to run successfully."
        )
        extra["x-should-retry"] = "false"
    else:
        message = (
            f"Rate limit reached for {model} in organization org-docbus-offline on {label}: "
            f"Limit {limit}, Used {used}, Requested {requested}. "
            f"Please try again in {retry_after:.3f}s."
        )
    return APIError(
        429, message, type=kind, code="rate_limit_exceeded", outcome=outcome, headers=extra
    )


def insufficient_quota() -> APIError:
    return APIError(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        type="insufficient_quota",
        code="insufficient_quota",
        outcome=Outcome.QUOTA_EXCEEDED,
        headers={"x-should-retry": "false"},
    )


def server_error() -> APIError:
    return APIError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        type="server_error",
        outcome=Outcome.SERVER_ERROR,
    )


def overloaded() -> APIError:
    return APIError(
        503,
        "The engine is currently overloaded, please try again later.",
        type="server_error",
        outcome=Outcome.UNAVAILABLE,
    )


def injected_rate_limit(model: str, headers: Mapping[str, str]) -> APIError:
    return APIError(
        429,
        f"Rate limit reached for {model} in organization org-docbus-offline on requests per min "
        "(RPM). Please try again later. (injected by the offline server)",
        type="requests",
        code="rate_limit_exceeded",
        outcome=Outcome.RATE_LIMITED,
        headers=headers,
    )
