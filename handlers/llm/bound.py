"""The bound LLM: what a handler calls as ``ctx.llm`` — validated extraction and free text.

:class:`BoundLLM` is the process's :class:`~handlers.llm.client.LLMClient` tied to one delivery
(its :class:`~handlers.context.Context`), so every call's audit row names the batch, document,
handler, step and attempt. :meth:`BoundLLM.extract` asks for a pydantic model through
structured outputs (falling back to JSON mode, then to plain text, on servers without them),
validates the answer, and on invalid JSON or a schema violation re-asks with the validation
error, up to ``max_reasks`` times, before raising
``DeadLetter("SchemaValidationFailed", ...)``. :meth:`BoundLLM.complete` returns free text.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from handlers.context import PromptOrMessages
from handlers.errors import DeadLetter
from handlers.llm.client import Ask, LLMClient
from handlers.llm.schema import ResponseSchema, describe_errors, parse_answer
from handlers.steps import current_step

if TYPE_CHECKING:
    from handlers.context import Context

__all__ = ["BoundLLM", "PromptOrMessages"]

M = TypeVar("M", bound=BaseModel)

_REASK = (
    "Your previous answer is not valid: {errors}. Answer again with only the corrected JSON "
    "object, matching the schema exactly."
)
_DESCRIPTION_LIMIT = 900


class BoundLLM:
    """The LLM client for one delivery of one message; build it with ``LLMClient.bind``."""

    def __init__(self, client: LLMClient, ctx: Context | None = None) -> None:
        self.client = client
        self.ctx = ctx

    def __repr__(self) -> str:
        where = f"{self.ctx.batch_id}/{self.ctx.doc_id}" if self.ctx is not None else "unbound"
        return f"BoundLLM({self.client!r}, {where})"

    async def extract(
        self,
        model_cls: type[M],
        prompt_or_messages: PromptOrMessages,
        *,
        system: str | None = None,
        model: str | None = None,
        max_reasks: int = 2,
        temperature: float | None = 0.0,
        max_tokens: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> M:
        """An instance of ``model_cls`` read from the document by the LLM, validated.

        Re-asks up to ``max_reasks`` times with the validation error; then raises
        ``DeadLetter("SchemaValidationFailed", "<step>: <what failed>")``. Also raises what
        :mod:`handlers.llm.errors` translates failures into, and
        :class:`~handlers.errors.OverBudget` before a call the budget does not allow.
        """
        if max_reasks < 0:
            raise ValueError("max_reasks must be >= 0")
        schema = ResponseSchema.of(model_cls)
        messages = _messages(prompt_or_messages, system)
        parse = functools.partial(parse_answer, model_cls)
        last_error = "no answer"
        for reask in range(max_reasks + 1):
            answer = await self.client.exchange(
                self.ctx,
                Ask(
                    kind="extract",
                    messages=messages,
                    model=model,
                    schema=schema,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    reask=reask,
                    extra_headers=extra_headers,
                    parse=parse,
                ),
            )
            if answer.error is None:
                result: M = answer.parsed
                return result
            last_error = _explain(answer.error, answer.finish_reason)
            messages = [
                *messages,
                {"role": "assistant", "content": answer.text},
                {"role": "user", "content": _REASK.format(errors=last_error)},
            ]
        where = current_step() or (self.ctx.handler_name if self.ctx is not None else "extract")
        asks = "once" if max_reasks == 0 else f"after {max_reasks} re-ask(s)"
        description = f"{where}: {model_cls.__name__} still invalid {asks}: {last_error}"
        raise DeadLetter("SchemaValidationFailed", description[:_DESCRIPTION_LIMIT])

    async def complete(
        self,
        prompt_or_messages: PromptOrMessages,
        *,
        system: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> str:
        """The LLM's free-text answer (cut at ``max_tokens`` if given)."""
        answer = await self.client.exchange(
            self.ctx,
            Ask(
                kind="complete",
                messages=_messages(prompt_or_messages, system),
                model=model,
                temperature=temperature,
                max_tokens=max_tokens,
                extra_headers=extra_headers,
            ),
        )
        return answer.text


def _messages(prompt_or_messages: PromptOrMessages, system: str | None) -> list[dict[str, Any]]:
    if isinstance(prompt_or_messages, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt_or_messages}]
    else:
        messages = [dict(message) for message in prompt_or_messages]
        if not messages:
            raise ValueError("no messages to send")
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _explain(error: Exception, finish_reason: str | None) -> str:
    text = describe_errors(error) if isinstance(error, ValidationError) else str(error)
    if finish_reason == "length":
        text = f"the answer was cut off at max_tokens ({text})"
    return text
