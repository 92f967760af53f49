"""The LLM mode of a call: live, or batch through the provider's Batch API at half the price.

The mode is chosen where the urgency is known, and the nearest choice wins: the batch's
(``docbus publish --llm-mode``, kept on its batch record so a replay keeps it), else the
handler's (``@handler(llm_mode=...)``), else the settings' (``llm.mode``). An ordered handler
always runs live: its session cannot wait hours for a round (``@handler`` refuses
``llm_mode="batch"`` with ``ordered_by``; the worker refuses to start one when the settings say
batch). :func:`resolve_llm_mode` is that rule, without I/O; the LLM client reads the batch's
mode once per batch id (:meth:`docbus.store.Store.batch_llm_mode`) and asks it.
"""

from __future__ import annotations

from typing import Literal, cast

__all__ = ["LLMMode", "resolve_llm_mode"]

LLMMode = Literal["live", "batch"]
_MODES = ("live", "batch")


def resolve_llm_mode(
    batch: str | None,
    handler: str | None,
    settings: str,
    *,
    ordered: bool = False,
) -> LLMMode:
    """The mode of a call: ``batch`` (the batch record's), else ``handler``, else
    ``settings``; ``live`` for an ordered handler whatever they say. Unknown values are
    skipped (a record written by a newer docbus)."""
    if ordered:
        return "live"
    for choice in (batch, handler, settings):
        if choice in _MODES:
            return cast(LLMMode, choice)
    return "live"
