"""Workers: the ``workers`` collection — one heartbeat record per running worker process.

A worker writes :class:`WorkerHeartbeat` every few seconds while it runs and once more, as
``stopped``, when it ends (:mod:`subscriber.heartbeat`); :meth:`WorkersMixin.heartbeats`
reads the recent ones for the console's workers page. A record is small and overwritten in
place (not durable-critical: a lost beat is the next one's to tell). Neighbours:
:mod:`docbus.store._parked` (what the workers set aside).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pymongo import DESCENDING

from docbus.store._base import StoreBase
from docbus.store._errors import _translated


class SubscriptionClaim(BaseModel):
    """A handler a worker runs on a subscription (a subscription has one handler: see
    :mod:`subscriber.claims`)."""

    model_config = ConfigDict(frozen=True)

    topic: str
    subscription: str
    handler: str


class WorkerHeartbeat(BaseModel):
    """What one worker process says about itself."""

    model_config = ConfigDict(frozen=True)

    id: str
    """``host:pid:started``: one process run."""
    host: str
    pid: int
    handlers: list[str] = Field(default_factory=list)
    claims: list[SubscriptionClaim] = Field(default_factory=list)
    """Which handler this worker runs on which subscription."""
    concurrency: int = 0
    in_flight: int = 0
    """Messages received and not yet settled."""
    circuit_open: bool = False
    """Consumption paused: the LLM endpoint fails systemically (bad key, quota, unreachable)."""
    taken: int = 0
    """Messages taken since start."""
    state: Literal["running", "stopped"] = "running"
    started_at: datetime
    beat_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    interval: float = 10.0
    """Seconds between beats: a running worker silent for a few of them is presumed gone."""

    def status(self, now: datetime | None = None) -> str:
        """``running``, ``stopped``, or ``silent`` (no beat for three intervals: it died)."""
        if self.state == "stopped":
            return "stopped"
        late = (now or datetime.now(UTC)) - self.beat_at
        return "silent" if late > timedelta(seconds=3 * self.interval) else "running"


class WorkersMixin(StoreBase):
    """Worker heartbeats."""

    async def record_heartbeat(self, beat: WorkerHeartbeat) -> None:
        fields = beat.model_dump(mode="python", exclude={"id"})
        with _translated(f"record heartbeat of {beat.id}"):
            await self._c("workers", durable=False).replace_one(
                {"_id": beat.id}, {"_id": beat.id, **fields}, upsert=True
            )

    async def heartbeats(self, since: timedelta = timedelta(hours=1)) -> list[WorkerHeartbeat]:
        """The workers that beat within ``since``, latest beat first."""
        cutoff = datetime.now(UTC) - since
        with _translated("read worker heartbeats"):
            cursor = self._c("workers").find({"beat_at": {"$gte": cutoff}})
            return [
                WorkerHeartbeat.model_validate({**raw, "id": raw["_id"]})
                async for raw in cursor.sort("beat_at", DESCENDING)
            ]
