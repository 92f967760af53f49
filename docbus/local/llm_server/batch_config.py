"""Knobs of the offline LLM server's Batch API: processing times, file limits and batch faults.

:class:`BatchConfig` is the ``batch`` group of
:class:`~docbus.local.llm_server.config.LLMServerConfig`, so ``server.configure(batch={...})``
and ``POST /_admin/config`` change it at runtime like every other knob.
:mod:`docbus.local.llm_server.batches` reads it when a batch is created (its times and faults
are fixed then, so a test can change the knobs for the next batch without disturbing one under
way). Durations are seconds; shares are fractions in ``[0, 1]`` of a batch's requests, chosen
deterministically from the batch id and custom ids (exact counts, so a test can assert them; a
resubmission under a new batch id is drawn afresh).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BatchFailure = Literal["invalid_file", "token_limit_exceeded"]
HangPoint = Literal["upload", "create", "download"]


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """How the offline server's batches behave.

    Lifecycle: ``validating`` for ``validating_seconds``, ``in_progress`` for
    ``in_progress_seconds``, ``finalizing`` for ``finalizing_seconds`` (raise it for a slow
    finalisation), then ``completed``. ``cancelling_seconds`` is how long a cancelled batch stays
    ``cancelling``. Limits: an input file over ``max_requests`` lines or ``max_file_bytes`` bytes
    fails validation (``too_many_tasks`` / ``file_too_large``), as OpenAI's 50,000 requests and
    200 MB do.

    Faults: ``expire_share`` of the requests are left unanswered and the batch ends ``expired``
    instead of ``completed`` (the rest answered); ``line_400_share`` and ``line_500_share`` of
    the requests are answered with a 400 (permanent) or 500 (transient) error in the error file;
    ``fail`` fails the whole batch at validation: ``invalid_file`` (``invalid_json_line`` on line
    1) or ``token_limit_exceeded`` (the enqueued-token quota, as Azure Global Batch and OpenAI
    report it); ``quota_at_create`` refuses ``POST /batches`` itself with a 429
    ``insufficient_quota``. ``queued_tokens`` is an enqueued-token quota enforced as Azure
    Global Batch does: a batch whose prompt tokens, added to those of the model's batches not
    yet ended, would pass it fails validation with ``token_limit_exceeded`` (``None``: no
    quota; ``stats()["over_quota"]`` counts them). The live
    ``faults.rate_schema``/``rate_malformed`` apply to batch answers too.

    Crash points: while ``hang`` names a step, the server carries that step out — stores the
    uploaded file (``upload``), creates the batch (``create``), sends the first half of a file's
    content (``download``) — and then holds its answer until ``hang`` changes, so a client
    killed meanwhile dies exactly after the step took effect (``stats()["hung"]`` counts them).
    """

    validating_seconds: float = 0.0
    in_progress_seconds: float = 0.0
    finalizing_seconds: float = 0.0
    cancelling_seconds: float = 0.0
    max_requests: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024
    expire_share: float = 0.0
    line_400_share: float = 0.0
    line_500_share: float = 0.0
    fail: BatchFailure | None = None
    quota_at_create: bool = False
    queued_tokens: int | None = None
    hang: HangPoint | None = None

    def __post_init__(self) -> None:
        times = (
            self.validating_seconds,
            self.in_progress_seconds,
            self.finalizing_seconds,
            self.cancelling_seconds,
        )
        if min(times) < 0:
            raise ValueError("batch durations must be >= 0")
        if self.queued_tokens is not None and self.queued_tokens < 0:
            raise ValueError("queued_tokens must be >= 0")
        if self.max_requests < 1 or self.max_file_bytes < 1:
            raise ValueError("max_requests and max_file_bytes must be >= 1")
        for name, share in (
            ("expire_share", self.expire_share),
            ("line_400_share", self.line_400_share),
            ("line_500_share", self.line_500_share),
        ):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {share}")
        if self.expire_share + self.line_400_share + self.line_500_share > 1.0 + 1e-9:
            raise ValueError("expire_share + line_400_share + line_500_share must be <= 1")
