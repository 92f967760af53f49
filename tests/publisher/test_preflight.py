"""Preflight decisions without I/O: which subscriptions take a topic's messages, what a failed
existence check means, and what resuming a batch does with each document."""

from __future__ import annotations

import pytest

from docbus.servicebus import MessagingAuthError, MessagingEntityNotFound, MessagingUnavailable
from docbus.topology import SubscriptionSpec, TopicSpec, Topology
from publisher.preflight import (
    PublishRefused,
    ResumePlan,
    fingerprint,
    subscription_check,
    text_sha256,
    topic_receivers,
)

TOPOLOGY = Topology(
    (
        TopicSpec("docs", (SubscriptionSpec("a"), SubscriptionSpec("b"))),
        TopicSpec("empty"),
    )
)


def test_every_topology_subscription_takes_broadcasts_and_its_own_route() -> None:
    assert [s.name for s in topic_receivers(TOPOLOGY, "DOCS")] == ["a", "b"]
    assert [s.name for s in topic_receivers(TOPOLOGY, "docs", route="b")] == ["b"]


@pytest.mark.parametrize(
    ("topic", "route", "says"),
    [
        ("nope", "*", "unknown topic 'nope'"),
        ("empty", "*", "has no subscriptions"),
        ("docs", "c", "has no subscription that would take"),
    ],
)
def test_a_topic_nothing_would_receive_is_refused(topic: str, route: str, says: str) -> None:
    with pytest.raises(PublishRefused, match=says):
        topic_receivers(TOPOLOGY, topic, route=route)


def test_what_a_subscription_check_means() -> None:
    assert subscription_check(None) == "ok"
    assert subscription_check(MessagingEntityNotFound("x")) == "missing"
    assert subscription_check(MessagingAuthError("x")) == "unauthorised"
    assert subscription_check(MessagingUnavailable("x")) == "unknown"


def test_resuming_sends_new_resends_unfinished_skips_finished_and_flags_changed() -> None:
    recorded = {
        doc_id: fingerprint(text_sha256(f"text {doc_id}"), {"k": 1}, "text/plain", None)
        for doc_id in ("done", "pending", "edited")
    }
    plan = ResumePlan("b1", recorded, {"done"})

    def decide(doc_id: str, text: str, metadata: dict[str, int] | None = None) -> str:
        return plan.decide(doc_id, text, metadata or {"k": 1}, "text/plain", None)

    assert decide("new", "anything") == "send"
    assert decide("pending", "text pending") == "resend"
    assert decide("done", "text done") == "done"
    assert "differs from document 'edited'" in decide("edited", "new words")
    assert "differs" in decide("pending", "text pending", {"k": 2})
