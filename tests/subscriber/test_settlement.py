"""The pure decisions of the worker: backoff delays and settlement, with no I/O."""

from __future__ import annotations

import random

import pytest

from docbus.backoff import BackoffPolicy, backoff_delay
from docbus.envelope import InvalidEnvelope
from docbus.store import PayloadError
from handlers.errors import DeadLetter, OverBudget, Retry, SystemicFailure
from subscriber.settlement import Action, decide

NO_JITTER = BackoffPolicy(base=1.0, cap=30.0, jitter=0.0)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0)])
def test_backoff_doubles_per_attempt_up_to_the_cap(attempt: int, delay: float) -> None:
    assert backoff_delay(attempt, NO_JITTER) == delay


def test_jitter_spreads_delays_within_its_fraction() -> None:
    policy = BackoffPolicy(base=10.0, cap=1000.0, jitter=0.2)
    rng = random.Random(7)
    delays = {backoff_delay(1, policy, rng=rng) for _ in range(200)}
    assert min(delays) >= 8.0 and max(delays) <= 12.0
    assert len(delays) > 100  # not a constant


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    assert backoff_delay(1, NO_JITTER, retry_after=45.0) == 45.0
    assert backoff_delay(4, NO_JITTER, retry_after=0.5) == 8.0


@pytest.mark.parametrize("bad", [0, -1])
def test_attempts_start_at_one(bad: int) -> None:
    with pytest.raises(ValueError):
        backoff_delay(bad, NO_JITTER)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(base=0)
    with pytest.raises(ValueError):
        BackoffPolicy(jitter=1.5)


def decide_for(exc: BaseException, attempt: int = 1, max_attempts: int = 5):  # type: ignore[no-untyped-def]
    return decide(exc, attempt=attempt, max_attempts=max_attempts, policy=NO_JITTER)


def test_unknown_errors_retry_with_backoff_until_the_last_delivery() -> None:
    first = decide_for(RuntimeError("flaky"), attempt=1)
    assert (first.action, first.delay) == (Action.RETRY, 1.0)
    assert decide_for(RuntimeError("flaky"), attempt=4).delay == 8.0
    last = decide_for(RuntimeError("still broken"), attempt=5)
    assert last.action is Action.DEAD_LETTER and last.reason == "RetriesExhausted"
    assert "RuntimeError: still broken" in last.description
    assert "5 deliveries" in last.description


def test_retry_honours_the_handlers_delay() -> None:
    decision = decide_for(Retry(after=20, reason="RateLimited"), attempt=1)
    assert (decision.action, decision.delay) == (Action.RETRY, 20.0)


def test_dead_letter_is_immediate_with_the_handlers_reason() -> None:
    decision = decide_for(DeadLetter("WrongType", "an invoice, not a news item"), attempt=1)
    assert decision.action is Action.DEAD_LETTER
    assert (decision.reason, decision.description) == ("WrongType", "an invoice, not a news item")


def test_invalid_envelopes_and_lost_payloads_are_poison() -> None:
    assert decide_for(InvalidEnvelope("not JSON")).reason == "InvalidEnvelope"
    assert decide_for(PayloadError("payload missing")).reason == "ClaimCheckFailed"


def test_long_descriptions_are_trimmed_to_one_line() -> None:
    decision = decide_for(DeadLetter("R", "line one\nline two " + "x" * 5000))
    assert "\n" not in decision.description and len(decision.description) <= 1000


def test_systemic_failures_and_spent_batch_budgets_park_without_spending_attempts() -> None:
    systemic = decide_for(SystemicFailure("AuthenticationFailed", "bad key"), attempt=5)
    assert (systemic.action, systemic.reason) == (Action.PARK, "SystemicFailure")
    budget = decide_for(OverBudget("b1", spent=2.0, budget=1.0), attempt=5)
    assert (budget.action, budget.reason) == (Action.PARK, "OverBudget")


def test_a_document_over_its_own_budget_is_dead_lettered_with_that_reason() -> None:
    decision = decide_for(OverBudget("b1", spent=0.2, budget=0.1, doc_id="d7"))
    assert (decision.action, decision.reason) == (Action.DEAD_LETTER, "DocumentOverBudget")


def test_an_ordered_handlers_parking_is_held_and_retried_in_order() -> None:
    exc = SystemicFailure("AuthenticationFailed", "bad key")
    decision = decide(exc, attempt=5, max_attempts=5, policy=NO_JITTER, ordered=True)
    assert (decision.action, decision.delay, decision.reason) == (
        Action.RETRY,
        NO_JITTER.cap,
        "SystemicFailure",
    )
    unordered = decide(exc, attempt=5, max_attempts=5, policy=NO_JITTER)
    assert unordered.action is Action.PARK


@pytest.mark.parametrize(
    "exc", [DeadLetter("WrongType", "not an invoice"), RuntimeError("still broken")]
)
def test_a_dead_letter_of_a_document_done_elsewhere_completes(exc: BaseException) -> None:
    decision = decide(exc, attempt=5, max_attempts=5, policy=NO_JITTER, result_stored=True)
    assert decision.action is Action.COMPLETE


def test_a_result_stored_elsewhere_changes_no_retry_nor_parking() -> None:
    retry = decide(RuntimeError("flaky"), attempt=1, max_attempts=5, policy=NO_JITTER,
                   result_stored=True)  # fmt: skip
    assert retry.action is Action.RETRY
    park = decide(SystemicFailure("AuthenticationFailed", "bad key"), attempt=1, max_attempts=5,
                  policy=NO_JITTER, result_stored=True)  # fmt: skip
    assert park.action is Action.PARK


def test_nothing_is_dead_lettered_that_mongo_did_not_record() -> None:
    refused = ConnectionError("mongo is down")
    decision = decide(DeadLetter("WrongType", "not an invoice"), attempt=1, max_attempts=5,
                      policy=NO_JITTER, unrecordable=refused)  # fmt: skip
    assert (decision.action, decision.delay) == (Action.RETRY, NO_JITTER.base)
    assert "could not be recorded" in decision.description
    assert "WrongType" in decision.description
    # the same facts with a result stored elsewhere: done, not retried
    done = decide(DeadLetter("WrongType", "x"), attempt=1, max_attempts=5, policy=NO_JITTER,
                  result_stored=True, unrecordable=refused)  # fmt: skip
    assert done.action is Action.COMPLETE
