"""Parked messages as an operator sees them: counted per handler and reason, listed, resumed.

A parked message is deferred on its subscription (Service Bus keeps it, and never delivers it on
its own) with a record in the store that says why (``Store.park``, written by
:mod:`subscriber.parking`). :func:`parked_overview` reads the records a :class:`ParkedSelection`
picks, with their counts per subscription, handler and reason (:class:`ParkedOverview`);
:func:`request_resume` marks them for resumption: Service Bus gives a deferred message only to a
receiver that asks for it by sequence number, and running it needs the handler, so the next
worker of their subscription fetches them (a starting one at once, a running one within its
resume interval), whatever it thinks of the cause. Re-sending copies instead would leave the
deferred originals behind and collide with duplicate detection. Neighbours:
:mod:`docbus.cli.parked` (``docbus parked``), :mod:`subscriber.worker` (resumes them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from docbus.store import ParkedGroup, ParkedMessage, Store

__all__ = ["ParkedOverview", "ParkedSelection", "parked_overview", "request_resume"]


@dataclass(frozen=True)
class ParkedSelection:
    """Which parked messages are meant (``None``: any)."""

    batch_id: str | None = None
    handler: str | None = None
    reason: str | None = None

    def describe(self) -> str:
        """The filters set, as ``batch=B, handler=H``, or ``all``."""
        shown = (
            f"{key.removesuffix('_id')}={value}" for key, value in asdict(self).items() if value
        )
        return ", ".join(shown) or "all"


@dataclass(frozen=True)
class ParkedOverview:
    """The parked messages of a selection, and their counts per group."""

    records: list[ParkedMessage]
    """By sequence number."""
    groups: list[ParkedGroup]
    """Per subscription, handler and reason, largest first."""

    def to_json(self) -> dict[str, Any]:
        return {
            "total": len(self.records),
            "groups": [group.model_dump(mode="json") for group in self.groups],
            "parked": [record.model_dump(mode="json") for record in self.records],
        }


async def parked_overview(store: Store, selection: ParkedSelection) -> ParkedOverview:
    """The records and group counts of the parked messages ``selection`` picks."""
    filters = asdict(selection)
    return ParkedOverview(await store.parked(**filters), await store.parked_groups(**filters))


async def request_resume(store: Store, selection: ParkedSelection) -> int:
    """Ask workers to fetch the selected parked messages back at their next look; returns how
    many were not asked for already."""
    return await store.request_resume(**asdict(selection))
