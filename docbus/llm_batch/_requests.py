"""Batch requests: one LLM call waiting for a provider batch, and the key that finds it again.

A :class:`BatchRequest` is what ``ctx.llm`` registers in batch mode instead of calling the live
endpoint: the endpoint, the model and the exact request body it would have sent, and the
identity of the step that asked (:class:`docbus.records.CheckpointKey`'s id). Its
:func:`request_key` hashes the step identity with the request content, so the same call on a
redelivery of the same message finds the same pending record (and its answer, once there), while
a re-ask after a schema failure — different messages — is a new request. The key is also the
``custom_id`` of the request's line in a provider file, so an output line leads straight back
to it. :func:`input_line` renders that line. Pure: the store keeps these records
(:mod:`docbus.store`), :mod:`docbus.llm_batch._plan` groups them into files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CHAT_COMPLETIONS = "/v1/chat/completions"


def canonical_json(value: Any) -> str:
    """The one JSON spelling of ``value`` hashed for keys and sent in files (keys sorted)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(step_id: str, endpoint: str, body: Mapping[str, Any]) -> str:
    """The stable key of one call: the step that makes it plus what it asks (a SHA-256 hex).

    ``step_id`` is the step's :class:`~docbus.records.CheckpointKey` id (document, handler,
    handler version, step, step input). Two calls of one step with the same body are one
    request: they would get the same answer.
    """
    joined = "\x1f".join((step_id, endpoint, canonical_json(body)))
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One pending LLM call, as the submitter sees it."""

    key: str
    """:func:`request_key`; also the ``custom_id`` of its line in a provider file."""
    endpoint: str
    model: str
    body: Mapping[str, Any] = field(hash=False)
    """The request body the live call would have sent (``model`` included)."""
    estimated_tokens: int = 0
    """Prompt plus expected completion tokens, for budgets and queued-token quotas."""

    @classmethod
    def of(
        cls,
        step_id: str,
        body: Mapping[str, Any],
        *,
        endpoint: str = CHAT_COMPLETIONS,
        estimated_tokens: int = 0,
    ) -> BatchRequest:
        """The request a step makes with ``body`` (which must name its ``model``)."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("a batch request body must name its model")
        return cls(
            key=request_key(step_id, endpoint, body),
            endpoint=endpoint,
            model=model,
            body=body,
            estimated_tokens=estimated_tokens,
        )


def input_line(request: BatchRequest, *, url: str | None = None) -> bytes:
    """The request's line of a provider input file (with its newline).

    ``url`` overrides the path in the line (Azure's deployments take ``/chat/completions``);
    by default it is the request's endpoint.
    """
    line = {
        "custom_id": request.key,
        "method": "POST",
        "url": url or request.endpoint,
        "body": request.body,
    }
    return (canonical_json(line) + "\n").encode("utf-8")
