"""Reading what any sender sent, with no broker: envelopes refuse cleanly, properties store."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from docbus.envelope import Envelope, InvalidEnvelope
from docbus.records import DeadLetterRecord
from docbus.store import DeadLetterFilter, Store
from subscriber.received import record_dead_letter, storable
from tests.subscriber.poison_messages import DEEP, envelope_json


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (DEEP, "nested too deeply"),
        (b'{"schema_version": 1, "m": ' + DEEP + b"}", "nested too deeply"),
        (b"\xff\xfe\x00 not text", "not UTF-8"),
        (envelope_json().replace(b'"fine"', b'"\\ud800"'), "unpaired surrogate"),
        (envelope_json().replace(b'"text"', b'"a \\uDC00 b"'), "unpaired surrogate"),
        (envelope_json()[:-1] + b',"generation":' + b"9" * 5000 + b"}", "not JSON"),
        (b'{"schema_version": "' + b"v" * 10_000 + b'"}', "unknown envelope schema_version"),
    ],
)
def test_any_unreadable_body_is_an_invalid_envelope_saying_why(body: bytes, says: str) -> None:
    with pytest.raises(InvalidEnvelope) as caught:
        Envelope.from_bytes(body)
    assert says in caught.value.reason
    assert len(caught.value.reason) < 300  # one readable line, not the body echoed back


def test_paired_surrogate_escapes_and_a_bom_are_read() -> None:
    body = envelope_json().replace(b'"text"', b'"smile \\ud83d\\ude00"')
    assert Envelope.from_bytes(body).content == "smile \U0001f600"
    assert Envelope.from_bytes(b"\xef\xbb\xbf" + envelope_json()).doc_id == "fine"


def test_storable_keeps_what_bson_holds_and_turns_the_rest_into_text() -> None:
    when = dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    assert storable(
        {
            b"key": [1, 2.5, True, None, when, b"ok"],
            1: uuid.UUID(int=1),
            "big": 2**64 - 1,
            "small": -(2**63),
            "nul\x00key": "lone \ud800",
            "raw": b"\xff",
        }
    ) == {
        "key": [1, 2.5, True, None, when, "ok"],
        "1": str(uuid.UUID(int=1)),
        "big": str(2**64 - 1),
        "small": -(2**63),
        "nul\\x00key": "lone \\ud800",
        "raw": b"\xff",
    }
    deep: list[object] = []
    for _ in range(10_000):
        deep = [deep]
    assert isinstance(storable(deep), list)  # cut to text at some depth, never a RecursionError


async def test_a_dead_letter_too_large_to_store_is_recorded_without_its_body(
    store: Store,
) -> None:
    record = DeadLetterRecord(
        message_id="huge", subscription="work", reason="InvalidEnvelope", description="too big",
        body=b"x" * 17_000_000, properties={"p": "v"},
    )  # fmt: skip
    assert await record_dead_letter(store, record)
    (stored,) = await store.dead_letters(DeadLetterFilter(subscription="work"))
    assert stored.body == b"" and stored.properties == {}
    assert stored.description.startswith("too big [not stored: 1 properties and the 17000000-byte")
