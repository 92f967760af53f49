"""Failure types: what kind of failure a dead letter is, in the words an LLM operator uses.

A dead letter's ``reason`` is precise (``SchemaValidationFailed``, ``MaxDeliveryCountExceeded``,
``TTLExpiredException``...) but there are many of them and some say the same thing;
:func:`failure_type` folds them into a handful of kinds an operator acts on differently
(:data:`FAILURE_TYPES`): the model's answer never fit the schema, the content filter refused,
the document is too long for the model, the LLM refused the request, every retry was spent,
the input itself is poison, the message expired, or a budget stopped it. A pure function of the
record. Neighbours: :mod:`docbus.ops.dead_letters` groups by it (``GROUPS["failure"]``), the
console's dead-letters page shows the groups.
"""

from __future__ import annotations

from docbus.records import DeadLetterRecord

__all__ = ["FAILURE_TYPES", "failure_type"]

FAILURE_TYPES: dict[str, str] = {
    "schema failure": "the model's answer did not fit the output schema, re-asks included",
    "content filter": "the provider's content filter refused the prompt or the answer",
    "context too long": "the document (with the prompt) is longer than the model takes",
    "LLM refused request": "the LLM endpoint refused the request itself (4xx)",
    "retries exhausted": "every delivery failed with a transient error",
    "poison input": "the message or the handler's output can never succeed as it is",
    "expired": "the message outlived its time to live on the broker",
    "over budget": "the document spent its LLM budget",
    "handler decision": "the handler dead-lettered it with a reason of its own",
}
"""Failure type → what it means; the order is the order the console lists them in."""

_BY_REASON = {
    "SchemaValidationFailed": "schema failure",
    "ContentFiltered": "content filter",
    "ContextLengthExceeded": "context too long",
    "LLMRequestTooLarge": "context too long",
    "LLMBadRequest": "LLM refused request",
    "RetriesExhausted": "retries exhausted",
    "MaxDeliveryCountExceeded": "retries exhausted",
    "InvalidEnvelope": "poison input",
    "ClaimCheckFailed": "poison input",
    "InvalidHandlerOutput": "poison input",
    "TTLExpiredException": "expired",
    "DocumentOverBudget": "over budget",
}


def failure_type(record: DeadLetterRecord) -> str:
    """The :data:`FAILURE_TYPES` key of a dead letter: by its reason; a reason docbus does not
    know is a handler's own ``DeadLetter`` (its input can never succeed), except that retries
    spent on a schema failure count as a schema failure."""
    kind = _BY_REASON.get(record.reason)
    if kind == "retries exhausted" and "SchemaValidation" in (record.description or ""):
        return "schema failure"
    return kind or "handler decision"
