"""Rollback: withdraw the result versions exactly one run wrote, and undo that — as plans.

Every result version names the run that wrote it (``run_id``): a batch's publication is run
``B`` (its batch id), a replay is its replay id (``replay-...``). :func:`plan_rollback` finds the
versions of one run — a batch's publication (``with_replays``: and every replay of the batch's
documents) or one replay — optionally of one handler, and works out per document which version
is current now and which will be after (the highest-ranked version left,
:func:`docbus.records.result_rank`; :func:`preview`, a pure function), so a dry run shows exactly
what a real run changes. :func:`carry_out` withdraws them, tagged with the rollback's id, and
keeps a :class:`~docbus.records.RollbackRecord` in ``rollbacks`` (written first, as ``running``);
every write is durable (:mod:`docbus.store`). :func:`plan_undo` and the same :func:`carry_out`
restore exactly the versions one rollback withdrew, recorded as an undo.

A document is never left without a current version while it has one that is not withdrawn: the
current version is worked out from the versions left whenever it is read. A rollback of what is
rolled back already plans no change (the CLI then records nothing); an unknown batch, replay or
rollback is a :class:`RollbackError` and no record. A batch's note names the replays of it that
still have versions (:func:`replays_with_versions`). Versions a run writes after its rollback
(messages still in flight) are not withdrawn: roll a run back once it has finished. Neighbours:
:mod:`docbus.cli.rollback` (``docbus rollback``: confirmation, tables, ``--json``),
:mod:`docbus.ops.results` shows the versions, :mod:`publisher.replay` names replay runs.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from docbus.errors import DocbusError
from docbus.records import ReplayRecord, ResultRecord, RollbackRecord
from docbus.store import Store

__all__ = [
    "Change",
    "RollbackError",
    "RollbackPlan",
    "Target",
    "carry_out",
    "plan_rollback",
    "plan_undo",
    "preview",
    "replays_with_versions",
]


class RollbackError(DocbusError):
    """A rollback cannot be planned as asked: unknown batch, replay or rollback."""


@dataclass(frozen=True)
class Target:
    """What a rollback withdraws (or an undo restores), in words and ids."""

    description: str
    batch_id: str | None = None
    replay_id: str | None = None
    with_replays: bool = False
    undoes: str | None = None
    """For an undo: the rollback whose versions it restores."""


@dataclass(frozen=True)
class Change:
    """One (document, handler): the versions withdrawn (or restored), and its current version
    now and after."""

    doc_id: str
    handler: str
    versions: tuple[ResultRecord, ...]
    before: ResultRecord | None
    after: ResultRecord | None


@dataclass
class RollbackPlan:
    """What a rollback (or undo) would change, document by document."""

    target: Target
    handler: str | None
    changes: list[Change] = field(default_factory=list)
    note: str | None = None
    """Something the operator should know (replays of the batch left alone, an undo done)."""

    @property
    def undo(self) -> bool:
        return self.target.undoes is not None

    @property
    def versions(self) -> int:
        return sum(len(change.versions) for change in self.changes)

    @property
    def documents(self) -> int:
        return len({change.doc_id for change in self.changes})

    @property
    def runs(self) -> list[str]:
        return sorted({v.run_id or "(unnamed)" for c in self.changes for v in c.versions})

    def to_json(self) -> dict[str, Any]:
        return {
            "target": _target_json(self.target),
            "handler": self.handler,
            "versions": self.versions,
            "documents": self.documents,
            "runs": self.runs,
            "note": self.note,
            "changes": [
                {
                    "doc_id": change.doc_id,
                    "handler": change.handler,
                    "versions": [v.version for v in change.versions],
                    "current_before": _version_json(change.before),
                    "current_after": _version_json(change.after),
                }
                for change in self.changes
            ],
        }


def _version_json(record: ResultRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"version": record.version, "run_id": record.run_id, "batch_id": record.batch_id}


def _target_json(target: Target) -> dict[str, Any]:
    return {
        "description": target.description,
        "batch_id": target.batch_id,
        "replay_id": target.replay_id,
        "with_replays": target.with_replays,
        "undoes": target.undoes,
    }


def _top(versions: Iterable[ResultRecord]) -> ResultRecord | None:
    return max(versions, key=lambda record: record.rank, default=None)


def preview(
    targets: Sequence[ResultRecord], versions: Sequence[ResultRecord], *, restore: bool = False
) -> list[Change]:
    """Per (document, handler) of ``targets``: the current version now and after withdrawing
    ``targets`` (``restore``: after putting them back), among all its ``versions``."""
    chosen = {record.id for record in targets}
    by_pair: dict[tuple[str, str], list[ResultRecord]] = {}
    for record in versions:
        by_pair.setdefault((record.doc_id, record.handler), []).append(record)
    affected: dict[tuple[str, str], list[ResultRecord]] = {}
    for record in targets:
        affected.setdefault((record.doc_id, record.handler), []).append(record)
    changes = []
    for (doc_id, handler), mine in sorted(affected.items()):
        known = by_pair.get((doc_id, handler), mine)
        before = _top(v for v in known if not v.rolled_back)
        if restore:
            after = _top(v for v in known if not v.rolled_back or v.id in chosen)
        else:
            after = _top(v for v in known if not v.rolled_back and v.id not in chosen)
        ordered = tuple(sorted(mine, key=lambda record: record.version))
        changes.append(Change(doc_id, handler, ordered, before, after))
    return changes


async def plan_rollback(
    store: Store,
    *,
    batch_id: str | None = None,
    replay_id: str | None = None,
    with_replays: bool = False,
    handler: str | None = None,
) -> RollbackPlan:
    """What withdrawing one run's result versions changes; raises :class:`RollbackError` for
    an unknown batch or replay. Give ``batch_id`` (its publication; ``with_replays``: and
    every replay of its documents) or ``replay_id``."""
    if (batch_id is None) == (replay_id is None):
        raise RollbackError("name one run: a batch (--batch) or a replay (--replay)")
    note = None
    if replay_id is not None:
        replay = await store.get_replay(replay_id)
        if replay is None:
            raise RollbackError(
                f"unknown replay {replay_id!r}: no replay run has that id "
                "(docbus replay prints each run's id: 'recorded as replay-...')"
            )
        target = Target(f"replay {replay_id}", replay_id=replay_id)
        targets = await store.run_result_versions(
            [replay_id],
            legacy_message_ids=[item.message_id for item in replay.items],
            handler=handler,
        )
    else:
        assert batch_id is not None
        if not await store.batch_exists(batch_id):
            raise RollbackError(f"unknown batch {batch_id!r}: nothing was published or written")
        if with_replays:
            target = Target(f"batch {batch_id} with its replays", batch_id, with_replays=True)
            targets = await store.result_versions(
                batch_id=batch_id, handler=handler, include_rolled_back=False
            )
        else:
            target = Target(f"batch {batch_id}", batch_id)
            targets = await store.run_result_versions(
                [batch_id], batch_id=batch_id, publish_of=batch_id, handler=handler
            )
            replays = await _replays_keeping(store, batch_id, handler)
            if replays:
                shown = ", ".join(replays[:3]) + (", ..." if len(replays) > 3 else "")
                note = (
                    f"only the publication of batch {batch_id} is rolled back; its "
                    f"{len(replays)} replay run(s) ({shown}) keep their versions: roll each "
                    "back with --replay, or all with --with-replays"
                )
    versions = await store.result_versions(
        doc_ids={record.doc_id for record in targets}, handler=handler
    )
    return RollbackPlan(target, handler, preview(targets, versions), note)


async def _replays_keeping(store: Store, batch_id: str, handler: str | None) -> list[str]:
    """The replays of batch ``batch_id`` with a version of it (of ``handler``) not rolled back:
    those a rollback of its publication leaves alone (a replay rolled back already keeps none)."""
    replays = await store.replays_of_batch(batch_id)
    if not replays:
        return []
    versions = await store.run_result_versions(
        [replay.id for replay in replays],
        batch_id=batch_id,
        legacy_message_ids=[
            i.message_id for r in replays for i in r.items if i.batch_id == batch_id
        ],
        handler=handler,
    )
    return replays_with_versions(replays, versions)


def replays_with_versions(
    replays: Sequence[ReplayRecord], versions: Iterable[ResultRecord]
) -> list[str]:
    """The ids of ``replays`` (in their order) that wrote one of ``versions`` not rolled back:
    by its run id, or — written before runs were named — by the message it was written for."""
    by_message = {item.message_id: replay.id for replay in replays for item in replay.items}
    wrote = {
        version.run_id if version.run_id is not None else by_message.get(version.message_id)
        for version in versions
        if not version.rolled_back
    }
    return [replay.id for replay in replays if replay.id in wrote]


async def plan_undo(store: Store, rollback_id: str) -> RollbackPlan:
    """What restoring the versions rollback ``rollback_id`` withdrew changes; raises
    :class:`RollbackError` for an unknown rollback or an undo."""
    record = await store.get_rollback(rollback_id)
    if record is None:
        raise RollbackError(f"unknown rollback {rollback_id!r}: no rollback has that id")
    if record.kind == "undo":
        raise RollbackError(
            f"{rollback_id} is an undo of {record.undoes}: to withdraw those versions again, "
            "roll their run back again"
        )
    target = Target(f"rollback {rollback_id}", record.batch_id, record.replay_id, undoes=record.id)
    withdrawn = await store.result_versions(rolled_back_by=record.id)
    note = None
    if record.undone_by is not None and not withdrawn:
        note = f"rollback {rollback_id} was undone already by {record.undone_by}"
    elif not withdrawn:
        note = f"rollback {rollback_id} withdrew no version that can be restored"
    versions = await store.result_versions(doc_ids={record.doc_id for record in withdrawn})
    return RollbackPlan(target, None, preview(withdrawn, versions, restore=True), note)


def _rollback_id(now: datetime) -> str:
    return f"rollback-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


async def carry_out(store: Store, plan: RollbackPlan) -> RollbackRecord:
    """Withdraw (an undo: restore) the plan's versions and record the run.

    The record is written first (``running``), so a run that dies half-way can still be
    undone: its versions carry its id.
    """
    now = datetime.now(UTC)
    target = plan.target
    record = RollbackRecord(
        id=_rollback_id(now),
        kind="undo" if plan.undo else "rollback",
        target=target.description,
        batch_id=target.batch_id,
        replay_id=target.replay_id,
        with_replays=target.with_replays,
        runs=plan.runs,
        handler=plan.handler,
        undoes=target.undoes,
        status="running",
        at=now,
    )
    await store.record_rollback(record)
    if target.undoes is not None:
        changed = await store.restore_results(target.undoes)
    else:
        changed = await store.withdraw_results(
            [v.id for c in plan.changes for v in c.versions], record.id
        )
    record = record.model_copy(
        update={
            "versions": len(changed),
            "documents": len({version.doc_id for version in changed}),
            "status": "done",
            "finished_at": datetime.now(UTC),
        }
    )
    await store.record_rollback(record)
    if target.undoes is not None:
        undone = await store.get_rollback(target.undoes)
        if undone is not None:
            await store.record_rollback(undone.model_copy(update={"undone_by": record.id}))
    return record
