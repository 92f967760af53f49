"""A dead-letter replay as an operator previews it: exactly the plan a dry run lists, the
dead letters picked from it, and roughly what it will cost.

:func:`preview_dead_letter_replay` plans with :func:`publisher.replay.plan_dead_letter_replay`
— the function ``docbus replay --dry-run`` lists — for a
:class:`~docbus.store.DeadLetterFilter`, optionally keeps only the dead letters picked by id
(:func:`pick`, pure), and estimates the cost from the LLM audit: what each replayed message cost
before it was dead-lettered (its handler's calls for the document in that generation).
Confirming sends the same plan (:func:`publisher.replay.send_replay`).
Neighbours: :mod:`docbus.ops.dead_letters` (listing and groups), :mod:`publisher.replay`,
the console's dead-letters page (:mod:`docbus.console.pages.dead_letters`) shows it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from docbus.store import DeadLetterFilter, Store
from publisher.replay import ReplayPlan, plan_dead_letter_replay

__all__ = ["ReplayPreview", "estimate_cost", "pick", "preview_dead_letter_replay"]


@dataclass(frozen=True)
class ReplayPreview:
    """A replay plan and its estimated LLM cost in USD (what the first attempts cost)."""

    plan: ReplayPlan
    estimated_cost_usd: float


def pick(plan: ReplayPlan, ids: Collection[str]) -> ReplayPlan:
    """The plan with only the messages (and skipped entries) of the dead letters ``ids``."""
    wanted = set(ids)
    return ReplayPlan(
        plan.kind,
        {**plan.filters, "ids": sorted(wanted)},
        [message for message in plan.messages if message.key in wanted],
        {key: why for key, why in plan.skipped.items() if key in wanted},
        plan.note,
    )


async def estimate_cost(store: Store, plan: ReplayPlan) -> float:
    """What the plan's messages spent on LLM calls before they were dead-lettered: per dead
    letter, its handler's calls for the document in the generation the dead letter carried
    (every delivery of it, so a retried message counts its retries)."""
    total = 0.0
    for message in plan.messages:
        record = message.dead_letter
        if record is None or record.batch_id is None or record.doc_id is None:
            continue
        calls = await store.llm_calls(record.batch_id, doc_id=record.doc_id, handler=record.handler)
        total += sum(c.cost_usd for c in calls if c.generation == (record.generation or 0))
    return total


async def preview_dead_letter_replay(
    store: Store, selection: DeadLetterFilter, *, ids: Collection[str] = ()
) -> ReplayPreview:
    """The replay of the dead letters ``selection`` matches (only ``ids``, when given), as
    ``docbus replay --dry-run`` would list it, with its estimated cost."""
    plan = await plan_dead_letter_replay(store, selection)
    if ids:
        plan = pick(plan, ids)
    return ReplayPreview(plan, await estimate_cost(store, plan))
