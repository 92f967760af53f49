"""Counters of the offline LLM server, for tests and benchmarks (``GET /_admin/stats``).

:class:`ServerStats` counts chat-completion requests by :class:`Outcome`, the tokens served (only
answered requests bill tokens), and tokens and requests per wall-clock minute. The server
(:mod:`docbus.local.llm_server.server`) records one outcome per request under its lock and adds the
rate limiter's window figures (:mod:`docbus.local.llm_server.limits`) to
:meth:`ServerStats.snapshot`.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable
from typing import Any


class Outcome(enum.StrEnum):
    """How one chat-completion request ended."""

    OK = "ok"
    LENGTH = "length"  # answered, cut at max_tokens
    MALFORMED = "malformed"  # answered with invalid JSON on purpose
    SCHEMA_VIOLATION = "schema_violation"  # answered with schema-breaking JSON on purpose
    RATE_LIMITED = "rate_limited"  # injected 429
    RATE_LIMITED_RPM = "rate_limited_rpm"
    RATE_LIMITED_TPM = "rate_limited_tpm"
    QUOTA_EXCEEDED = "quota_exceeded"
    SERVER_ERROR = "server_error"  # injected 500
    UNAVAILABLE = "unavailable"  # injected 503
    TIMEOUT = "timeout"  # held, then dropped
    UNAUTHORIZED = "unauthorized"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    MODEL_NOT_FOUND = "model_not_found"
    BAD_REQUEST = "bad_request"

    @property
    def answered(self) -> bool:
        return self in (Outcome.OK, Outcome.LENGTH, Outcome.MALFORMED, Outcome.SCHEMA_VIOLATION)


_MINUTES_KEPT = 60


class ServerStats:
    """Request outcomes and token usage since start (or the last reset)."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock
        self.outcomes: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._minutes: dict[int, list[int]] = {}  # minute -> [requests, tokens]

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def record(self, outcome: Outcome, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        self.outcomes[outcome.value] += 1
        minute = int(self._wall_clock() // 60)
        bucket = self._minutes.setdefault(minute, [0, 0])
        bucket[0] += 1
        if outcome.answered:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            bucket[1] += prompt_tokens + completion_tokens
        for old in [m for m in self._minutes if m <= minute - _MINUTES_KEPT]:
            del self._minutes[old]

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: ``requests``, ``outcomes``, ``tokens``, ``per_minute``."""
        return {
            "requests": self.requests,
            "outcomes": {o.value: self.outcomes.get(o.value, 0) for o in Outcome},
            "tokens": {
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
                "total": self.prompt_tokens + self.completion_tokens,
            },
            "per_minute": [
                {"minute": minute * 60, "requests": counts[0], "tokens": counts[1]}
                for minute, counts in sorted(self._minutes.items())
            ],
        }
