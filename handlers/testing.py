"""Testing: run one handler on one document with no broker, for users' unit tests.

:func:`run_handler` builds the :class:`~handlers.document.Document` and
:class:`~handlers.context.Context` a worker would build, awaits the handler, checks that its
output can be stored (:func:`handlers.output.serialize_output`) and returns it — or lets the
handler's :class:`~handlers.errors.DeadLetter` / :class:`~handlers.errors.Retry` propagate so a
test can assert on it. Like Temporal's ``ActivityEnvironment``: no worker, no Service Bus.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from docbus.envelope import Envelope, content_doc_id
from docbus.store import Store
from handlers.context import Context
from handlers.decorator import HandlerFunction, HandlerSpec, handler_spec
from handlers.document import Document
from handlers.output import declared_output, serialize_output

__all__ = ["run_handler"]


async def run_handler(
    fn: HandlerFunction,
    document: Document | str,
    *,
    doc_id: str | None = None,
    batch_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    content_type: str | None = None,
    delivery_count: int = 1,
    store: Store | None = None,
    llm: Any = None,
) -> Any:
    """Run ``fn`` on ``document`` (a :class:`Document` or its text) and return its output.

    Keyword arguments override the document's fields and the context's; ``store`` enables
    checkpoints against a real Mongo, ``llm`` stands in for the worker's LLM client.
    """
    spec = handler_spec(fn) or HandlerSpec(
        name=getattr(fn, "__name__", "handler"), topic="test", subscription="test"
    )
    if isinstance(document, str):
        document = Document(
            doc_id=doc_id or content_doc_id(document),
            batch_id=batch_id or "test",
            text=document,
            content_type=content_type or "text/plain",
            metadata=dict(metadata or {}),
        )
    else:
        overrides: dict[str, Any] = {
            key: value
            for key, value in (
                ("doc_id", doc_id),
                ("batch_id", batch_id),
                ("metadata", metadata),
                ("content_type", content_type),
            )
            if value is not None
        }
        document = dataclasses.replace(document, **overrides)
    envelope = Envelope(
        doc_id=document.doc_id,
        batch_id=document.batch_id,
        topic=spec.topic,
        content=document.text,
        content_type=document.content_type,
        metadata=document.metadata,
        source=document.source,
    )
    ctx = Context(envelope, spec, delivery_count=delivery_count, store=store, llm=llm)
    output = await fn(document, ctx)
    serialize_output(output, declared_output(fn))
    return output
