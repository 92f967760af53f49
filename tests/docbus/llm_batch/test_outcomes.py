"""The batch-mode taxonomy: what every provider outcome means for each request of a batch."""

from __future__ import annotations

import random

import pytest

from docbus.llm_batch import (
    Failure,
    History,
    Kind,
    LineAnswer,
    LineError,
    SettleLimits,
    UnreadableLine,
    classify_batch_errors,
    classify_status,
    poll_delay,
    settle,
    submission_delay,
)

KEYS = ["k1", "k2", "k3", "k4"]


def answer(key: str) -> LineAnswer:
    return LineAnswer(key, {"choices": []}, "req", 10, 2)


def error(key: str, status: int | None, code: str | None = None, message: str = "m") -> LineError:
    return LineError(key, status, code, message)


@pytest.mark.parametrize(
    ("status", "code", "kind", "reason"),
    [
        (429, "rate_limit_exceeded", Kind.TRANSIENT, "LLMRateLimited"),
        (500, None, Kind.TRANSIENT, "LLMServerError500"),
        (503, None, Kind.TRANSIENT, "LLMServerError503"),
        (408, None, Kind.TRANSIENT, "LLMServerError408"),
        (400, "context_length_exceeded", Kind.PERMANENT, "ContextLengthExceeded"),
        (400, "content_filter", Kind.PERMANENT, "ContentFiltered"),
        (400, "invalid_value", Kind.PERMANENT, "LLMBadRequest"),
        (422, None, Kind.PERMANENT, "LLMBadRequest"),
        (401, "invalid_api_key", Kind.SYSTEMIC, "AuthenticationFailed"),
        (403, None, Kind.SYSTEMIC, "PermissionDenied"),
        (404, "model_not_found", Kind.SYSTEMIC, "ModelNotFound"),
        (404, None, Kind.SYSTEMIC, "EndpointNotFound"),
        (429, "insufficient_quota", Kind.SYSTEMIC, "QuotaExhausted"),
        (429, "token_limit_exceeded", Kind.SYSTEMIC, "QueuedTokenQuotaExhausted"),
    ],
)
def test_statuses_map_onto_the_live_taxonomy(
    status: int, code: str | None, kind: Kind, reason: str
) -> None:
    failure = classify_status(status, code, message="what the provider said")
    assert (failure.kind, failure.reason) == (kind, reason)
    assert "what the provider said" in failure.description


def test_a_completed_batch_keeps_answers_resubmits_transient_and_dead_letters_permanent() -> None:
    lines = [
        answer("k1"),
        error("k2", 500),
        error("k3", 400, "context_length_exceeded", "too long for the model"),
        answer("k4"),
    ]
    out = settle("completed", KEYS, lines)
    assert set(out.answers) == {"k1", "k4"}
    assert out.resubmit == {"k2": Failure(Kind.TRANSIENT, "LLMServerError500", "m")}
    assert out.dead["k3"].reason == "ContextLengthExceeded"
    assert "too long for the model" in out.dead["k3"].description
    assert out.systemic is None and not out.released


def test_a_transient_failure_is_dead_lettered_with_its_reason_once_out_of_attempts() -> None:
    out = settle(
        "completed",
        ["k1"],
        [error("k1", 503)],
        history={"k1": History(attempts=2)},
        limits=SettleLimits(max_attempts=3),
    )
    assert not out.resubmit
    assert out.dead["k1"].reason == "LLMServerError503"
    assert "3 provider batches" in out.dead["k1"].description


def test_expiry_keeps_the_answers_and_resubmits_only_the_missing() -> None:
    lines = [answer("k1"), answer("k2"), error("k3", None, "batch_expired")]  # k4: no line
    out = settle("expired", KEYS, lines)
    assert set(out.answers) == {"k1", "k2"}
    assert set(out.resubmit) == {"k3", "k4"}
    assert {f.kind for f in out.resubmit.values()} == {Kind.EXPIRED}
    assert not out.dead


def test_expiring_past_the_limit_dead_letters_as_batch_expired() -> None:
    out = settle(
        "expired",
        ["k1", "k2"],
        [],
        history={"k1": History(expiries=2), "k2": History(expiries=1)},
        limits=SettleLimits(max_expiries=2),
    )
    assert out.dead["k1"].reason == "BatchExpired"
    assert "3 provider batches" in out.dead["k1"].description
    assert set(out.resubmit) == {"k2"}


def test_a_cancelled_batch_keeps_what_was_done_and_holds_the_rest() -> None:
    lines = [answer("k1"), error("k2", None, "batch_cancelled")]
    out = settle("cancelled", KEYS, lines)
    assert set(out.answers) == {"k1"}
    assert out.cancelled == ["k2", "k3", "k4"]
    assert not out.resubmit and not out.dead


def test_a_systemic_line_error_releases_uncounted_and_asks_for_a_back_off() -> None:
    out = settle("completed", ["k1", "k2"], [answer("k1"), error("k2", 401, "invalid_api_key")])
    assert out.released == ["k2"]
    assert out.systemic is not None and out.systemic.reason == "AuthenticationFailed"
    assert not out.dead and not out.resubmit


def test_a_missing_line_in_a_completed_batch_is_transient() -> None:
    out = settle("completed", ["k1"], [])
    assert out.resubmit["k1"].reason == "LLMBatchLineMissing"


def test_request_timeout_is_transient() -> None:
    out = settle("completed", ["k1"], [error("k1", None, "request_timeout")])
    assert out.resubmit["k1"].reason == "LLMTimeout"


def test_queued_token_quota_failure_backs_off_and_dead_letters_nothing() -> None:
    errors = [{"code": "token_limit_exceeded", "message": "Enqueued token limit reached"}]
    out = settle("failed", KEYS, batch_errors=errors, history={"k1": History(attempts=9)})
    assert out.systemic is not None and out.systemic.reason == "QueuedTokenQuotaExhausted"
    assert out.released == KEYS
    assert not out.dead and not out.resubmit


def test_a_failed_validation_naming_a_line_dead_letters_that_request_only() -> None:
    errors = [{"code": "invalid_json_line", "message": "not parseable", "line": 3}]
    out = settle("failed", KEYS, batch_errors=errors)
    assert list(out.dead) == ["k3"]
    assert out.dead["k3"].reason == "LLMBatchLineRejected"
    assert "invalid_json_line" in out.dead["k3"].description
    assert out.released == ["k1", "k2", "k4"]
    assert out.systemic is None


def test_file_limit_failures_are_systemic_so_the_operator_can_lower_the_limits() -> None:
    verdict = classify_batch_errors([{"code": "too_many_tasks", "message": "limit 50000"}])
    assert (verdict.failure.kind, verdict.failure.reason) == (Kind.SYSTEMIC, "BatchFileRejected")


def test_an_unexplained_failure_is_transient_and_counted() -> None:
    out = settle("failed", ["k1", "k2"], batch_errors=[], history={"k2": History(attempts=2)})
    assert out.resubmit["k1"].reason == "LLMBatchFailed"
    assert out.dead["k2"].reason == "LLMBatchFailed"


def test_lines_of_other_requests_and_unreadable_lines_are_counted_apart() -> None:
    out = settle("completed", ["k1"], [answer("k1"), answer("zz"), UnreadableLine(2, "not JSON")])
    assert out.strangers == ["zz"] and out.unreadable == 1
    assert set(out.answers) == {"k1"}


def test_an_answer_wins_over_an_error_line_for_the_same_request() -> None:
    out = settle("completed", ["k1"], [error("k1", 500), answer("k1")])
    assert set(out.answers) == {"k1"} and not out.resubmit


def test_delays_grow_and_honour_retry_after() -> None:
    rng = random.Random(1)
    assert submission_delay(1, rng=rng) < submission_delay(4, rng=rng) <= 1800
    assert submission_delay(1, retry_after=900, rng=rng) >= 900
    assert poll_delay(1, rng=rng) < poll_delay(6, rng=rng) <= 300


def test_a_partial_read_settles_only_the_lines_read() -> None:
    lines = [answer("k1"), error("k2", 500)]
    out = settle("expired", KEYS, lines, complete=False)
    assert set(out.answers) == {"k1"} and set(out.resubmit) == {"k2"}
    assert "k3" not in out.resubmit and "k4" not in out.resubmit
