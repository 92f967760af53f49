"""The document: what a handler receives, with its content already resolved.

A :class:`Document` is the handler-facing view of an :class:`~docbus.envelope.Envelope`: the text
(fetched from Mongo when the message carried a claim-check, by :func:`resolve_document`), the ids,
the content type, the metadata and where it came from. Neighbours: :mod:`handlers.context` holds
the rest of what a handler may use; the worker builds both per message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from docbus.envelope import Envelope, Source
from docbus.store import Store

__all__ = ["Document", "resolve_document"]


@dataclass(frozen=True, slots=True)
class Document:
    """One document as a handler sees it."""

    doc_id: str
    batch_id: str
    text: str
    content_type: str = "text/plain"
    metadata: dict[str, Any] = field(default_factory=dict)
    source: Source | None = None

    @classmethod
    def from_envelope(cls, envelope: Envelope, text: str | None = None) -> Document:
        """The document of an envelope; ``text`` is required when the envelope is claim-checked."""
        if text is None:
            if envelope.content is None:
                raise ValueError(
                    f"document {envelope.doc_id} travelled by claim-check: "
                    "resolve it first (resolve_document)"
                )
            text = envelope.content
        return cls(
            doc_id=envelope.doc_id,
            batch_id=envelope.batch_id,
            text=text,
            content_type=envelope.content_type,
            metadata=dict(envelope.metadata),
            source=envelope.source,
        )


async def resolve_document(envelope: Envelope, store: Store) -> Document:
    """The document of an envelope, loading claim-checked content from the store.

    Raises :class:`docbus.store.PayloadError` when the payload is missing or corrupt.
    """
    if envelope.claim_check is None:
        return Document.from_envelope(envelope)
    return Document.from_envelope(envelope, await store.load_payload(envelope.claim_check))
