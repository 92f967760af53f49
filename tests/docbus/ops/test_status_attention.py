"""What makes a batch need attention in ``docbus status`` (exit 1): documents a rollback
withdrew, and a publish that stopped before the end — both left no worker anything to do, so
without a word they would look like work in progress for ever."""

from __future__ import annotations

from docbus.ops.status import BatchStatus
from docbus.records import BatchCounts, BatchRecord, HandlerCounts


def status(record: BatchRecord, counts: BatchCounts) -> BatchStatus:
    return BatchStatus(record=record, counts=counts)


def test_a_rolled_back_batch_is_rolled_back_and_needs_attention() -> None:
    record = BatchRecord(id="b1", topic="docs", status="published", counts={"sent": 20})
    counts = BatchCounts(
        batch_id="b1", published=20, done=0, dead_lettered=0, rolled_back=20, pending=0,
        handlers={"work": HandlerCounts(rolled_back=20)},
    )  # fmt: skip
    seen = status(record, counts)
    assert seen.state == "rolled back"
    assert seen.pending() == 0
    assert any("20 rolled back" in a and "docbus replay --batch b1" in a for a in seen.attention)


def test_an_interrupted_publish_says_how_many_were_not_sent_and_how_to_finish() -> None:
    record = BatchRecord(id="b2", topic="docs", status="failed", counts={"sent": 1375})
    counts = BatchCounts(batch_id="b2", published=3000, done=1375, dead_lettered=0, pending=1625)
    [what] = status(record, counts).attention
    assert "1625 recorded documents not sent" in what and "--batch-id b2 --resume" in what


def test_a_publish_that_ended_with_unsent_documents_is_not_called_interrupted() -> None:
    record = BatchRecord(id="b3", topic="docs", status="failed", counts={"sent": 8, "failed": 2})
    counts = BatchCounts(batch_id="b3", published=10, done=8, dead_lettered=0, pending=2)
    assert status(record, counts).attention == ["2 not sent"]
