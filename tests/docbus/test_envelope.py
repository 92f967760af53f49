from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from docbus.envelope import (
    BATCH_ID_PATTERN,
    MAX_MESSAGE_ID_LENGTH,
    ClaimCheck,
    Envelope,
    InvalidEnvelope,
    Source,
    application_properties,
    claim_check_for,
    content_doc_id,
    message_id,
    new_batch_id,
)


def envelope(**fields: object) -> Envelope:
    values: dict[str, object] = {
        "doc_id": "doc-1",
        "batch_id": "b1",
        "topic": "documents",
        "content": "Acme Corp opened a plant in Lyon.",
    }
    values.update(fields)
    return Envelope.model_validate(values)


def test_round_trip_through_bytes_preserves_every_field() -> None:
    original = envelope(
        metadata={"country": "FR", "nested": {"x": None}},
        source=Source(path="news.jsonl", line=7),
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        session_id="supplier-9",
        generation=2,
        replay_of="b1:doc-1:1",
        replayed_at=datetime(2025, 1, 2, tzinfo=UTC),
        target_subscription="entities",
    )
    assert Envelope.from_bytes(original.to_bytes()) == original


def test_message_id_is_derived_from_batch_doc_and_generation() -> None:
    assert message_id("b1", "doc-1", 0) == "b1:doc-1:0"
    assert envelope().message_id == "b1:doc-1:0"
    assert envelope(generation=1).message_id == "b1:doc-1:1"
    # the same inputs always give the same id: duplicate detection and idempotent writes agree
    assert envelope().message_id == envelope(content="other text").message_id


def test_long_message_ids_are_hashed_to_fit_service_bus() -> None:
    long_doc = "d" * 200
    first = message_id("b1", long_doc, 0)
    assert len(first) <= MAX_MESSAGE_ID_LENGTH
    assert first == message_id("b1", long_doc, 0)
    assert first != message_id("b1", long_doc, 1)
    assert first.startswith("h:")


def test_a_body_from_an_older_publisher_with_an_attempt_field_still_reads() -> None:
    # Publishers before the abandoned complete-and-reschedule design was removed wrote
    # "attempt": 0 into every body; unknown fields are ignored, so those messages still read.
    body = json.loads(envelope().to_bytes()) | {"attempt": 0}
    read = Envelope.from_bytes(json.dumps(body).encode())
    assert read == envelope(published_at=read.published_at)
    assert "attempt" not in read.model_dump()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"doc_id": "x"}', "no schema_version"),
        (b'{"schema_version": 2, "doc_id": "x"}', "unknown envelope schema_version 2"),
        (
            b'{"schema_version": 1, "doc_id": "x", "batch_id": "b", "topic": "t"}',
            "exactly one of content and claim_check",
        ),
        (
            b'{"schema_version": 1, "doc_id": "x", "batch_id": "has:colon", "topic": "t",'
            b' "content": "c"}',
            "batch_id",
        ),
    ],
)
def test_unreadable_bodies_raise_invalid_envelope_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidEnvelope) as caught:
        Envelope.from_bytes(body)
    assert reason in caught.value.reason


def test_content_and_claim_check_are_exclusive() -> None:
    ref = claim_check_for("text")
    with pytest.raises(ValueError, match="exactly one"):
        envelope(claim_check=ref)
    checked = envelope(content=None, claim_check=ref)
    assert Envelope.from_bytes(checked.to_bytes()).claim_check == ref


def test_unknown_fields_from_newer_writers_are_ignored() -> None:
    raw = json.loads(envelope().to_bytes())
    raw["added_later"] = {"x": 1}
    assert Envelope.from_bytes(json.dumps(raw).encode()) == envelope(
        published_at=datetime.fromisoformat(raw["published_at"])
    )


def test_naive_datetimes_are_taken_as_utc() -> None:
    naive = envelope(published_at=datetime(2025, 5, 1, 12, 0))
    assert naive.published_at.tzinfo is not None
    assert naive.published_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_application_properties_route_broadcast_or_to_one_subscription() -> None:
    props = application_properties(envelope(generation=1))
    assert props == {
        "docbus-route": "*",
        "batch_id": "b1",
        "doc_id": "doc-1",
        "schema_version": 1,
        "generation": 1,
    }
    assert application_properties(envelope(target_subscription="entities"))["docbus-route"] == (
        "entities"
    )


def test_content_ids_and_claim_checks_are_content_hashes() -> None:
    assert content_doc_id("abc") == content_doc_id("abc")
    assert content_doc_id("abc") != content_doc_id("abd")
    assert len(content_doc_id("abc")) == 32
    ref = claim_check_for("héllo")
    assert ref == ClaimCheck(id=ref.sha256, sha256=ref.sha256, size=len("héllo".encode()))
    assert ref.sha256.startswith(content_doc_id("héllo"))


def test_new_batch_ids_are_valid_and_distinct() -> None:
    ids = {new_batch_id() for _ in range(20)}
    assert len(ids) == 20
    assert all(re.match(BATCH_ID_PATTERN, batch_id) for batch_id in ids)


def test_a_message_names_its_run_and_when_the_run_was_issued() -> None:
    published = datetime(2025, 1, 1, tzinfo=UTC)
    first = envelope(published_at=published)
    assert (first.run_id, first.run, first.issued_at) == (None, "b1", published)
    assert b"run_id" not in first.to_bytes()  # an optional field: absent unless set
    replayed = published.replace(day=2)
    replay = envelope(published_at=published, generation=1, replayed_at=replayed, run_id="replay-1")
    assert Envelope.from_bytes(replay.to_bytes()) == replay
    assert (replay.run, replay.issued_at) == ("replay-1", replayed)
    # a replay sent before runs were named belongs to no known run
    assert envelope(generation=1, replayed_at=replayed).run is None
    # schema version 1 still: a reader that does not know the field ignores it
    assert json.loads(replay.to_bytes())["schema_version"] == 1
