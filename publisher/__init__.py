"""publisher: turn files, JSONL and CSV into envelopes and send them to a topic in batches.

Load with :func:`iter_documents` / :func:`load_documents` / :func:`scan_documents`
(:mod:`publisher.loaders`), publish with :func:`publish_documents` (:mod:`publisher.publish`).
Every invalid input is reported as an :class:`InputProblem` with file, line and reason; what
the broker would drop silently (a topic without subscriptions, a batch id used before) is
refused with :class:`PublishRefused` (:mod:`publisher.preflight`).
"""

from __future__ import annotations

from publisher.inputs import DocumentChecker, DocumentInput, InputProblem, InvalidInput, as_input
from publisher.loaders import (
    Format,
    LoaderOptions,
    ScanResult,
    iter_documents,
    load_documents,
    scan_documents,
)
from publisher.preflight import PublishRefused
from publisher.publish import MessageSender, PublishReport, SenderFactory, publish_documents

__all__ = [
    "DocumentChecker",
    "DocumentInput",
    "Format",
    "InputProblem",
    "InvalidInput",
    "LoaderOptions",
    "MessageSender",
    "PublishRefused",
    "PublishReport",
    "ScanResult",
    "SenderFactory",
    "as_input",
    "iter_documents",
    "load_documents",
    "publish_documents",
    "scan_documents",
]
