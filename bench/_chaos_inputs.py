"""What the chaos suite sends: good documents, and a catalogue of bad inputs.

Three kinds of input, all derived from one seeded :class:`random.Random`:

- :func:`documents`: supplier-news items for the built-in handlers, each with a unique
  reference in its text so that a log scan can find a whole document cheaply
  (:data:`TEXT_MARKER`); a few are larger than a Service Bus message and travel by claim-check;
- :func:`publisher_cases`: small JSONL/CSV files, one bad line each between valid ones, for
  ``docbus publish --skip-invalid``: the bad line must be reported as ``file:line`` and the
  valid lines sent;
- :func:`raw_cases`: messages sent with the Service Bus SDK straight to the topic (bodies that
  are not JSON, AMQP value and sequence bodies, deep JSON, envelopes of the wrong version or
  missing fields, a claim-check pointing nowhere, oversized properties...): each must end as a
  dead letter with a Mongo record in every subscription (or, for the few that are valid
  envelopes with odd content, as a result).

Neighbours: ``bench/chaos.py`` publishes them; ``bench/_chaos_audit.py`` checks what became of
them.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from azure.servicebus import ServiceBusMessage
from azure.servicebus.amqp import AmqpAnnotatedMessage, AmqpMessageProperties

TOPIC = "documents"
ROUTE = {"docbus-route": "*"}
TEXT_MARKER = "chaos ref "
"""Every generated text holds ``chaos ref <hex>``: a log scan looks for the marker first and
compares whole texts only for the documents it names."""

SUPPLIERS = [
    ("Acme Industrial", "France"), ("Globex Components", "Germany"), ("Initech Metals", "Poland"),
    ("Umbrella Plastics", "Japan"), ("Stark Valves", "United States"), ("Wayne Castings", "Mexico"),
    ("Tyrell Semiconductors", "Taiwan"), ("Cyberdyne Motors", "South Korea"),
    ("Soylent Foods", "Brazil"), ("Hooli Cloud", "India"), ("Vandelay Imports", "Vietnam"),
]  # fmt: skip
EVENTS = [
    "a strike at its main plant halted production for three days",
    "a fire damaged one of its two warehouses near the port",
    "regulators opened an inquiry into its export licences",
    "it reported a quarterly loss and delayed payments to its own suppliers",
    "a ransomware attack disrupted its order system for a week",
    "it won a large contract and plans to double capacity",
    "floods cut the rail line that carries its shipments",
    "new tariffs on its main product take effect next month",
    "an audit found unpaid overtime at a subcontractor",
    "it completed a new certification for automotive parts",
]  # fmt: skip
FOLLOW_UPS = [
    "Buyers in Europe expect knock-on effects next quarter.",
    "The company said deliveries would resume shortly.",
    "Analysts cut their outlook for the sector.",
    "Customers were told to expect delays of two to four weeks.",
    "The share price fell 4 % on the news.",
    "A spokesperson declined to comment further.",
]  # fmt: skip


def documents(
    prefix: str, count: int, rng: random.Random, *, large: int = 0
) -> list[dict[str, Any]]:
    """``count`` supplier-news records ``{"id", "text", "title", "supplier", "country", ...}``;
    the last ``large`` of them are over 256 KB (sent by claim-check)."""
    docs = []
    for i in range(count):
        supplier, country = rng.choice(SUPPLIERS)
        event = rng.choice(EVENTS)
        follow = rng.sample(FOLLOW_UPS, 2)
        ref = f"{rng.getrandbits(48):012x}"
        text = (
            f"{supplier} ({country}): {event}. {follow[0]} {follow[1]} "
            f"Item {i} of the feed, {TEXT_MARKER}{ref}."
        )
        if i >= count - large:
            # Over the topic's 256 KB message limit: the publisher claim-checks it.
            filler = " ".join(rng.choice(FOLLOW_UPS) for _ in range(6000))
            text = f"{text} {filler} End of {TEXT_MARKER}{ref}."
        docs.append(
            {
                "id": f"{prefix}-{i:05d}",
                "text": text,
                "title": f"{supplier}: {event.split(' ')[1]} news",
                "supplier": supplier,
                "country": country,
                "published": f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}",
                "source": "chaos-feed",
            }
        )
    return docs


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


# -- bad inputs through the publisher --------------------------------------------------------


@dataclass
class PublisherCase:
    """One small input file for ``docbus publish --skip-invalid``: one bad line among valid ones."""

    kind: str
    filename: str
    content: bytes
    bad_lines: list[int]
    """Lines that must be reported as ``filename:line``."""
    valid: dict[int, dict[str, Any]]
    """Line → the valid record on it, which must be sent (or, at worst, reported)."""

    @property
    def batch_id(self) -> str:
        return f"chaos-pub-{self.kind.replace('_', '-')}"


def _bad_jsonl(kind: str, bad: bytes, good: list[dict[str, Any]]) -> PublisherCase:
    """Two valid lines, the bad one (line 3), two valid lines."""
    lines = [json.dumps(good[0]).encode(), json.dumps(good[1]).encode(), bad]
    lines += [json.dumps(good[2]).encode(), json.dumps(good[3]).encode()]
    valid = {1: good[0], 2: good[1], 4: good[2], 5: good[3]}
    return PublisherCase(kind, f"bad-{kind}.jsonl", b"\n".join(lines) + b"\n", [3], valid)


def publisher_cases(rng: random.Random) -> list[PublisherCase]:
    """The catalogue of bad input files (kinds named after what is wrong with line 3)."""
    deep = 100_000
    bad_lines: dict[str, bytes] = {
        "invalid_json": b'{"id": "X", "text": "a line cut short"',
        "missing_text": b'{"id": "X", "body": "the text is under the wrong field"}',
        "empty_text": b'{"id": "X", "text": "   "}',
        "text_not_string": b'{"id": "X", "text": 42}',
        "not_an_object": b"[1, 2, 3]",
        "missing_id": b'{"text": "a document without its id field"}',
        "lone_surrogate": b'{"id": "X", "text": "half a character: \\ud800 here"}',
        "deep_json": b'{"id": "X", "text": "deep", "meta": ' + b"[" * deep + b"]" * deep + b"}",
        "int_over_64_bits": b'{"id": "X", "text": "a big number", "count": '
        + str(2**70).encode()
        + b"}",
        "nul_in_key": b'{"id": "X", "text": "a NUL in a key", "a\\u0000b": 1}',
        "invalid_utf8": b'{"id": "X", "text": "bytes \xff\xfe that are not UTF-8"}',
        "id_too_long": b'{"id": "' + b"i" * 1100 + b'", "text": "an id of 1100 characters"}',
    }
    cases = []
    for kind, bad in bad_lines.items():
        good = documents(f"pub-{kind.replace('_', '-')}", 4, rng)
        cases.append(_bad_jsonl(kind, bad.replace(b'"X"', f'"{good[0]["id"]}-bad"'.encode()), good))
    # A duplicate id: line 3 repeats line 1's id.
    good = documents("pub-duplicate-id", 4, rng)
    duplicate = json.dumps({"id": good[0]["id"], "text": "the same id again"}).encode()
    cases.append(_bad_jsonl("duplicate_id", duplicate, good))
    # A CSV with an unterminated quote on line 3: the rows after it must not silently merge
    # into it (they may be sent, or reported; never dropped without a word).
    good = documents("pub-csv-quote", 4, rng)
    rows = ["id,text"] + [f'{d["id"]},"{d["text"]}"' for d in good[:1]]
    rows += [f'{good[1]["id"]},"an unterminated quote', f'{good[2]["id"]},"{good[2]["text"]}"']
    rows += [f'{good[3]["id"]},"{good[3]["text"]}"']
    text_only = [{"id": d["id"], "text": d["text"]} for d in good]
    cases.append(
        PublisherCase(
            "csv_unterminated_quote",
            "bad-csv-unterminated-quote.csv",
            ("\n".join(rows) + "\n").encode(),
            [3],
            {2: text_only[0], 4: text_only[2], 5: text_only[3]},
        )
    )
    return cases


# -- bad inputs as raw Service Bus messages --------------------------------------------------

Expect = Literal["dead_letter", "result_or_dead_letter"]


@dataclass
class RawCase:
    """One message sent with the SDK straight to the topic, routed to every subscription."""

    kind: str
    message_id: str
    body: Any
    """bytes/str for a data body; ``("value", x)`` or ``("sequence", [...])`` for AMQP bodies."""
    expect: Expect = "dead_letter"
    properties: dict[str, Any] = field(default_factory=dict)
    doc_id: str | None = None
    """For valid envelopes: the document a result may be written for."""

    def message(self) -> ServiceBusMessage | AmqpAnnotatedMessage:
        properties = {**ROUTE, **self.properties}
        if isinstance(self.body, tuple):
            body_type, value = self.body
            amqp_properties = AmqpMessageProperties(message_id=self.message_id)
            if body_type == "value":
                return AmqpAnnotatedMessage(
                    value_body=value,
                    properties=amqp_properties,
                    application_properties=properties,
                )
            return AmqpAnnotatedMessage(
                sequence_body=value, properties=amqp_properties, application_properties=properties
            )
        return ServiceBusMessage(
            self.body,
            message_id=self.message_id,
            application_properties=properties,  # type: ignore[arg-type]  # values are str/int
        )


def envelope(batch: str, doc: str, /, **fields: Any) -> dict[str, Any]:
    """A valid envelope (as the publisher writes it), with ``fields`` changed (``...``: the
    field is left out)."""
    body: dict[str, Any] = {
        "schema_version": 1,
        "doc_id": doc,
        "batch_id": batch,
        "topic": TOPIC,
        "content": f"{doc}: Acme Industrial reports a strike at its plant in Lyon.",
        "published_at": datetime.now(UTC).isoformat(),
    }
    for name, value in fields.items():
        if value is ...:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def raw_cases(batch_id: str, rng: random.Random) -> list[RawCase]:
    """The catalogue of bad messages; valid-envelope cases use documents of ``batch_id``."""

    def env(kind: str, **fields: Any) -> bytes:
        return json.dumps(envelope(batch_id, f"raw-{kind}", **fields)).encode()

    nowhere = hashlib.sha256(f"nowhere-{rng.random()}".encode()).hexdigest()
    deep = 30_000  # nested far past any parser's recursion limit, within 256 KB
    cases: list[tuple[str, Any]] = [
        ("not_json", b"this is not JSON at all"),
        ("not_utf8", b"\xff\xfe\x00\x01 binary garbage"),
        ("empty_body", b""),
        ("json_array", b"[1, 2, 3]"),
        ("json_string", b'"just a string"'),
        ("json_null", b"null"),
        ("json_number", b"12345"),
        ("amqp_value_int", ("value", 42)),
        ("amqp_value_string", ("value", "a string in an AMQP value body")),
        ("amqp_value_map", ("value", {"schema_version": 1, "doc_id": "x"})),
        ("amqp_sequence", ("sequence", [[1, 2, 3], ["a", "b"]])),
        ("deep_json_array", b"[" * deep + b"]" * deep),
        ("deep_json_object", b'{"a":' * deep + b"1" + b"}" * deep),
        ("deep_json_in_metadata", env("deep-meta", metadata={}).replace(
            b'"metadata": {}', b'"metadata": {"x": ' + b"[" * deep + b"]" * deep + b"}")),
        ("schema_version_2", env("v2", schema_version=2)),
        ("schema_version_string", env("v-string", schema_version="1")),
        ("schema_version_0", env("v0", schema_version=0)),
        ("no_schema_version", env("no-version", schema_version=...)),
        ("no_doc_id", env("no-doc", doc_id=...)),
        ("empty_doc_id", env("empty-doc", doc_id="")),
        ("no_batch_id", env("no-batch", batch_id=...)),
        ("bad_batch_id", env("bad-batch", batch_id="has:colons")),
        ("no_topic", env("no-topic", topic=...)),
        ("no_content", env("no-content", content=...)),
        ("content_and_claim_check", env("both", claim_check={
            "id": nowhere, "sha256": nowhere, "size": 10})),
        ("content_not_string", env("content-int", content=12345)),
        ("negative_generation", env("neg-gen", generation=-1)),
        ("bad_published_at", env("bad-date", published_at="yesterday")),
        ("doc_id_too_long", env("long", doc_id="d" * 1100)),
        ("claim_check_nowhere", env("nowhere", content=..., claim_check={
            "id": nowhere, "sha256": nowhere, "size": 1234})),
        ("claim_check_bad_sha", env("bad-sha", content=..., claim_check={
            "id": "not-a-digest", "sha256": "zz", "size": 1})),
        ("trailing_garbage", env("trailing") + b" }}} garbage"),
    ]  # fmt: skip
    out = [RawCase(kind, f"chaos-raw-{kind}", body) for kind, body in cases]
    # Valid envelopes (by the worker's reading) with odd content or odd message properties: a
    # result is as good an end as a dead letter. Oversized properties may also be refused by
    # the broker at send time: then nothing entered, and nothing is expected.
    lenient: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("lone_surrogate_content", {"content": "half a character: \ud800 here"}, {}),
        ("int_over_64_bits_metadata", {"metadata": {"count": 2**70}}, {}),
        ("nul_in_metadata_key", {"metadata": {"a\u0000b": 1}}, {}),
        ("unknown_fields", {"future_field": {"x": 1}}, {}),
        ("nan_in_metadata", {"metadata": {"x": float("nan")}}, {}),
        ("huge_property", {}, {"blob": "p" * 200_000}),
        ("many_properties", {}, {f"p{i}": i for i in range(2000)}),
    ]
    for kind, fields, properties in lenient:
        doc_id = f"raw-{kind.replace('_', '-')}"
        body = json.dumps(envelope(batch_id, doc_id, **fields)).encode()  # NaN stays NaN
        mid = f"{batch_id}:{doc_id}:0"
        out.append(RawCase(kind, mid, body, "result_or_dead_letter", properties, doc_id))
    doc_id = "raw-bom-prefix"
    body = b"\xef\xbb\xbf" + json.dumps(envelope(batch_id, doc_id)).encode()
    out.append(RawCase("bom_prefix", "chaos-raw-bom", body, "result_or_dead_letter", {}, doc_id))
    return out
