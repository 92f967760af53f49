"""The claim-check decision at the broker's own size limit: real SDK, emulator, SecantusDB.

The publisher decides inline or claim-check from a size bound without encoding a message twice
(:func:`docbus.servicebus.fits_in_message`); here documents sized to the byte around the limit
it keeps free must go inline just under it, by claim-check just over it, and never be refused.
"""

from __future__ import annotations

import time

from azure.servicebus.aio import ServiceBusClient
from pydantic import SecretStr

from docbus.envelope import Envelope
from docbus.servicebus import build_message, encoded_batch_size
from docbus.settings import PublisherSettings, ServiceBusSettings, Settings
from docbus.store import Store
from publisher import DocumentInput, publish_documents
from publisher.publish import _SIZE_MARGIN

TOPIC, SUBSCRIPTION = "documents", "entities"


def sized(doc_id: str, batch_id: str, size: int) -> DocumentInput:
    """A document whose message the SDK counts at exactly ``size`` bytes."""

    def count(text: str) -> int:
        doc = DocumentInput(text=text, doc_id=doc_id)
        envelope = Envelope(
            content=doc.text, doc_id=doc_id, batch_id=batch_id, topic=TOPIC,
            content_type=doc.content_type, metadata=doc.metadata, source=doc.source,
            session_id=doc.session_id,
        )  # fmt: skip
        return encoded_batch_size(build_message(envelope))

    base = "x" * 1000
    text = "x" * (1000 + size - count(base))
    assert count(text) == size
    return DocumentInput(text=text, doc_id=doc_id)


async def receive(connection_string: str, expected: int) -> dict[str, Envelope]:
    got: dict[str, Envelope] = {}
    deadline = time.monotonic() + 20
    async with ServiceBusClient.from_connection_string(connection_string) as client:
        async with client.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver:
            while len(got) < expected and time.monotonic() < deadline:
                for message in await receiver.receive_messages(
                    max_message_count=10, max_wait_time=1
                ):
                    envelope = Envelope.from_bytes(b"".join(message.body))
                    got[envelope.doc_id] = envelope
                    await receiver.complete_message(message)
    return got


async def test_documents_just_under_and_over_the_limit_go_inline_and_by_claim_check(
    store: Store, servicebus_connection_string: str
) -> None:
    settings = Settings(
        servicebus=ServiceBusSettings(connection_string=SecretStr(servicebus_connection_string)),
        publisher=PublisherSettings(send_concurrency=1),
    )
    async with ServiceBusClient.from_connection_string(servicebus_connection_string) as client:
        async with client.get_topic_sender(TOPIC) as sender:
            limit = (await sender.create_message_batch()).max_size_in_bytes
    keep = limit - _SIZE_MARGIN
    docs = [
        sized("under", "b1", keep),
        sized("overr", "b1", keep + 1),
        sized("limit", "b1", limit),
        DocumentInput(text="small", doc_id="small"),
    ]
    report = await publish_documents(
        docs, topic=TOPIC, batch_id="b1", settings=settings, store=store
    )
    assert (report.sent, report.claim_checked, report.failed) == (4, 2, {})
    got = await receive(servicebus_connection_string, 4)
    assert sorted(got) == ["limit", "overr", "small", "under"]
    assert got["under"].content == docs[0].text and got["under"].claim_check is None
    for doc_id in ("overr", "limit"):
        assert got[doc_id].content is None and got[doc_id].claim_check is not None
