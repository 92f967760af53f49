"""Audit: one ``llm_calls`` row per LLM request, and its cost added to the batch's totals.

:func:`audit_row` builds the :class:`~docbus.records.LLMCallRecord` of a request — who asked
(batch, document, replay generation, message, handler and version, step, delivery attempt), how
(re-ask and retry numbers, the spend category, the response format mode, the model), what was
said (messages and response, each trimmed to a length that fits a Mongo document), what came of
it (parsed output, finish reason, tokens, cost, latency, error) and when. :func:`write_audit`
stores it and adds its figures to the batch (:meth:`docbus.store.Store.add_batch_usage`), so a
batch's totals are always the sum of its rows. Called by :mod:`handlers.llm.client` for every
request, successful or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Literal

import openai
from bson import ObjectId
from pydantic import ValidationError

from docbus.records import LLMCallRecord, SpendCategory
from docbus.store import Store, StoreError
from handlers.llm.schema import describe_errors
from handlers.steps import current_step
from handlers.writes import durably, is_duplicate

if TYPE_CHECKING:
    from handlers.context import Context

__all__ = ["Filtered", "audit_row", "write_audit"]

_TRUNCATED = "…[truncated {} characters]"
_ERROR_LIMIT = 2000


class Filtered(Exception):
    """An answer withheld by the content filter, or refused by the model."""


def audit_row(  # noqa: PLR0913 - keyword-only fields of the audit record it builds
    ctx: Context | None,
    *,
    kind: Literal["extract", "complete"],
    reask: int,
    retry: int,
    model: str,
    mode: Literal["json_schema", "json_object", "text"],
    messages: list[dict[str, Any]],
    latency: float,
    max_chars: int,
    response_model: str | None = None,
    text: str | None = None,
    parsed: Any = None,
    finish_reason: str | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost: float = 0.0,
    request_id: str | None = None,
    error: BaseException | None = None,
) -> LLMCallRecord:
    """The audit row of one request (see the module docstring)."""
    attempt = ctx.delivery_count if ctx is not None else 1
    category: SpendCategory = "reask" if reask else "retry" if retry or attempt > 1 else "first"
    if error is not None and request_id is None:
        response = getattr(error, "response", None)
        request_id = response.headers.get("x-request-id") if response is not None else None
    return LLMCallRecord(
        batch_id=ctx.batch_id if ctx is not None else None,
        doc_id=ctx.doc_id if ctx is not None else None,
        generation=ctx.envelope.generation if ctx is not None else 0,
        message_id=ctx.message_id if ctx is not None else None,
        handler=ctx.handler_name if ctx is not None else None,
        handler_version=ctx.handler_version if ctx is not None else None,
        step=current_step(),
        attempt=attempt,
        reask=reask,
        retry=retry,
        category=category,
        kind=kind,
        mode=mode,
        model=model,
        response_model=response_model,
        messages=[_trimmed_message(message, max_chars) for message in messages],
        response_text=_trim(text, max_chars) if text is not None else None,
        parsed=parsed.model_dump(mode="json") if hasattr(parsed, "model_dump") else parsed,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost,
        latency_s=latency,
        error_type=_error_type(error),
        error_message=_trim(_error_message(error), _ERROR_LIMIT) if error is not None else None,
        request_id=request_id,
    )


async def write_audit(
    store: Store | None, row: LLMCallRecord, *, row_id: Any = None, usage: bool = True
) -> None:
    """Insert ``row`` and add its usage to its batch's totals (nothing without a store).

    An outage delays both, it does not lose them (:func:`handlers.writes.durably`): the row
    gets its id here, so a try whose outcome was unknown and a later one store it once. The
    usage increment has no such guard: after a timeout that hid its success it is counted
    twice (the rows stay the truth: ``docbus report`` sums them).

    ``row_id`` gives the row a fixed id, written once however often it is written (a batch
    answer read again by a redelivery); ``usage`` False leaves the batch's totals alone (a
    batch answer's cost was added when the submitter collected it).
    """
    if store is None:
        return
    fixed = row_id is not None
    document = {
        **row.model_dump(mode="python", exclude={"id"}),
        "_id": row_id if fixed else ObjectId(),
    }
    tried = False

    async def insert() -> None:
        nonlocal tried
        try:
            await store.record_llm_call(document)
        except StoreError as exc:
            if not ((tried or fixed) and is_duplicate(exc)):  # else: it is stored already
                raise
        finally:
            tried = True

    writes: list[Coroutine[Any, Any, object]] = [durably(store, insert, "llm call audit row")]
    if row.batch_id is not None and usage:
        batch_id = row.batch_id
        writes.append(
            durably(
                store,
                lambda: store.add_batch_usage(
                    batch_id,
                    usd=row.cost_usd,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    calls=1,
                    category=row.category,
                ),
                "batch usage",
            )
        )
    await asyncio.gather(*writes)


def _trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + _TRUNCATED.format(len(text) - limit)


def _trimmed_message(message: Mapping[str, Any], limit: int) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str) and len(content) > limit:
        return {**message, "content": _trim(content, limit)}
    return dict(message)


def _error_type(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, Filtered):
        return "ContentFiltered"
    if isinstance(error, openai.OpenAIError):
        return type(error).__name__
    return "SchemaValidationError"  # the parser's verdict on an answer


def _error_message(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        return describe_errors(error, limit=_ERROR_LIMIT)
    return " ".join(str(getattr(error, "message", None) or error).split())
