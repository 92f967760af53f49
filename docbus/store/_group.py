"""Group commit: small writes and reads that arrive together leave together, as one command.

A busy worker has dozens of handlers each wanting one small write at the same moment (an audit
row, a usage increment, a step checkpoint, a result). Sent one by one they queue at the server
one round trip each, and under load every handler waits on the queue rather than on its own
write. :class:`GroupWriter` sends whatever writes to one collection are waiting as a single
``bulk_write(ordered=False)`` and hands each writer its own outcome — acknowledged, upserted or
not, or its own error such as a duplicate key — so a caller still returns only once *its* write
is acknowledged: nothing is written behind its back, and a crash of the worker loses nothing a
caller was told is stored. The command carries its collection's write concern, so a group of
durable writes (results) costs the server one journal flush for all of them
(:mod:`docbus.store._base`). :class:`GroupFinder` does the same for reads by one indexed field:
one ``$in`` query for every value asked, its answer split by key. (Not an ``$or`` of the
callers' filters: some servers scan the collection for those.)

The first request to an idle group leaves on the next turn of the event loop (so requests made
in the same turn share it), and requests arriving while a command is out leave together as soon
as it lands. An idle worker pays one round trip, as before; a busy one pays about one per
command in flight instead of one per request.

Writes nobody waits for yet — those a worker's handler makes behind it (:mod:`handlers.writes`)
— may also wait a little for company: inside :func:`lingering`, a :class:`GroupWriter` with a
``linger`` holds a command until its oldest write is ``linger`` old, unless a write someone
waits for joins it, or :func:`send_lingering_writes` is called (a flush that blocks a handler does).
In ``bench/llm_bound.py`` 25 ms cut the Mongo commands per document from about 4 to 1.3 and
SecantusDB's CPU by 40 %, at no cost to any handler's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    BulkWriteError,
    DuplicateKeyError,
    PyMongoError,
    WriteConcernError,
    WriteError,
    WTimeoutError,
)
from pymongo.operations import DeleteMany, DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne

__all__ = [
    "GroupFinder",
    "GroupWriter",
    "LingerPermit",
    "WriteOp",
    "lingering",
    "send_lingering_writes",
]

WriteOp = InsertOne[Any] | UpdateOne | UpdateMany | ReplaceOne[Any] | DeleteOne | DeleteMany

K = TypeVar("K", bound=Hashable)

_DUPLICATE_KEY_CODES = frozenset({11000, 11001, 12582})
MAX_GROUP = 500
"""Requests per command at most (the driver splits bigger batches itself; this bounds the
time one command holds the server)."""


class LingerPermit:
    """Whether the writes made under it may linger now; a holder can take it back (and give
    it again) while they are on their way, say while it waits for them."""

    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted = True


_LINGER_PERMIT: ContextVar[LingerPermit | None] = ContextVar("docbus_linger_permit", default=None)
_LINGERING: weakref.WeakSet[GroupWriter] = weakref.WeakSet()


@contextlib.contextmanager
def lingering(permit: LingerPermit | None = None) -> Iterator[LingerPermit]:
    """Writes made in this context (and in tasks created in it) may linger for company, as
    long as ``permit`` (a new one by default) is granted when they reach their group."""
    permit = permit or LingerPermit()
    token = _LINGER_PERMIT.set(permit)
    try:
        yield permit
    finally:
        _LINGER_PERMIT.reset(token)


def send_lingering_writes() -> None:
    """Send every lingering group write of this event loop now: someone is about to wait for
    one of them."""
    loop = asyncio.get_running_loop()
    for writer in list(_LINGERING):
        if writer._loop is loop:
            writer.hurry()


class _Group:
    """The waiting requests of one group and the one task that sends them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._flight: asyncio.Task[None] | None = None

    def _launch(self) -> None:
        if self._flight is None:
            self._flight = asyncio.get_running_loop().create_task(
                self._fly(), name=f"docbus-store-group-{self.name}"
            )

    async def _fly(self) -> None:
        try:
            while True:
                await self._gather()
                if not await self._send_next():
                    break
        except asyncio.CancelledError:
            _deliver(self._waiters(), asyncio.CancelledError())  # nobody left to send them
            raise
        finally:
            self._flight = None

    async def _gather(self) -> None:
        """Wait, if this group may, for more requests to send along (see :class:`GroupWriter`)."""

    async def _send_next(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def _waiters(self) -> list[asyncio.Future[Any]]:  # pragma: no cover - overridden
        raise NotImplementedError

    def hurry(self) -> None:
        """Send what waits now (see :class:`GroupWriter`'s ``linger``)."""

    async def drain(self) -> None:
        """Wait until every request made so far has been sent and answered."""
        self.hurry()
        while self._flight is not None:
            await asyncio.wait({self._flight})


def _wake_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _deliver(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    """Fail every waiter still waiting with ``exc`` (a cancellation cancels them instead)."""
    for future in futures:
        if future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)


class _Increment:
    """Increments of one document waiting to be sent, merged into one ``$inc``."""

    __slots__ = ("amounts", "document_id")

    def __init__(self, document_id: Any) -> None:
        self.document_id = document_id
        self.amounts: dict[str, float] = {}

    def add(self, amounts: Mapping[str, float]) -> None:
        for field, amount in amounts.items():
            self.amounts[field] = self.amounts.get(field, 0) + amount

    def op(self) -> UpdateOne:
        return UpdateOne({"_id": self.document_id}, {"$inc": self.amounts})


class GroupWriter(_Group):
    """Writes to one collection, sent together as unordered bulk writes.

    ``await writer.write(op)`` returns True if ``op`` upserted a document, False otherwise, and
    raises the error that write alone met (``DuplicateKeyError``, ``WriteError``) or the error
    of the whole command (a network failure reaches every write that was in it).
    ``await writer.increment(_id, amounts)`` adds to counters of one document; increments of the
    same document waiting together are summed into one ``$inc``.

    ``linger`` (seconds): how long writes made :func:`lingering` may wait for others to leave
    with. A command leaves when its oldest write is that old, at once when a write made
    outside :func:`lingering` is among them, or on :meth:`hurry`.
    """

    def __init__(
        self,
        collection: Callable[[], AsyncCollection[dict[str, Any]]],
        name: str,
        *,
        linger: float = 0.0,
    ) -> None:
        super().__init__(name)
        self._collection = collection
        self._linger = linger
        self._waiting: list[tuple[WriteOp | _Increment, list[asyncio.Future[bool]]]] = []
        self._increments: dict[Any, int] = {}  # document id -> its entry in _waiting
        self._oldest = 0.0  # loop time the oldest waiting write was made
        self._urgent = False  # a waiting write may not linger, or hurry() was called
        self._wake: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def write(self, op: WriteOp) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._note_arrival()
        self._waiting.append((op, [future]))
        self._launch()
        return await future

    def _note_arrival(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._waiting:
            self._oldest = loop.time()
        permit = _LINGER_PERMIT.get()
        if permit is None or not permit.granted:
            self._urgent = True
            self._end_lingering()
        elif self._linger > 0:
            self._loop = loop
            # until nothing waits: send_lingering_writes() may need to reach it
            _LINGERING.add(self)

    def hurry(self) -> None:
        if self._waiting:  # (with nothing waiting, there is nothing to hurry)
            self._urgent = True
            self._end_lingering()

    def _end_lingering(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _gather(self) -> None:
        if self._linger <= 0 or self._urgent or not self._waiting:
            return
        loop = asyncio.get_running_loop()
        remaining = self._oldest + self._linger - loop.time()
        if remaining <= 0:
            return
        self._wake = wake = loop.create_future()
        timer = loop.call_later(remaining, _wake_up, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    async def increment(self, document_id: Any, amounts: Mapping[str, float]) -> None:
        """Add ``amounts`` to fields of the document ``document_id`` (no upsert)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._note_arrival()
        index = self._increments.get(document_id)
        if index is None:
            self._increments[document_id] = len(self._waiting)
            self._waiting.append((_Increment(document_id), []))
            index = len(self._waiting) - 1
        pending, futures = self._waiting[index]
        assert isinstance(pending, _Increment)
        pending.add(amounts)
        futures.append(future)
        self._launch()
        await future

    def _waiters(self) -> list[asyncio.Future[Any]]:
        return [future for _, futures in self._waiting for future in futures]

    async def _send_next(self) -> bool:
        if not self._waiting:
            return False
        group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
        # what is left over (more than one command holds) leaves next, without lingering
        self._urgent = bool(self._waiting)
        if not self._waiting:
            _LINGERING.discard(self)
        self._increments = {
            entry.document_id: index
            for index, (entry, _) in enumerate(self._waiting)
            if isinstance(entry, _Increment)
        }
        ops = [entry.op() if isinstance(entry, _Increment) else entry for entry, _ in group]
        upserted: set[int] = set()
        errors: dict[int, BaseException] = {}
        try:
            result = await self._collection().bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            details: Mapping[str, Any] = exc.details
            upserted = {int(row["index"]) for row in details.get("upserted") or ()}
            errors = {
                int(row["index"]): _write_error(row) for row in details.get("writeErrors") or ()
            }
            concern = details.get("writeConcernErrors") or ()
            if concern:  # not attributable to one write: every one not already failed hears it
                failure = _write_concern_error(concern[0])
                errors = {index: errors.get(index, failure) for index in range(len(group))}
        except (asyncio.CancelledError, PyMongoError) as exc:  # the command's fate: everyone's
            _deliver([future for _, futures in group for future in futures], exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return True
        except Exception:
            # Refused before it left (a document that cannot be encoded, say): one write's
            # fault, so find out whose by sending them one at a time.
            await self._send_one_by_one(ops, group)
            return True
        else:
            upserted = set(result.upserted_ids or {})
        self._resolve(group, upserted, errors)
        return True

    async def _send_one_by_one(
        self,
        ops: list[WriteOp],
        group: list[tuple[WriteOp | _Increment, list[asyncio.Future[bool]]]],
    ) -> None:
        upserted: set[int] = set()
        errors: dict[int, BaseException] = {}
        for index, op in enumerate(ops):
            created, error = await _write_alone(self._collection(), op)
            if created:
                upserted.add(index)
            if error is not None:
                errors[index] = error
        self._resolve(group, upserted, errors)

    @staticmethod
    def _resolve(
        group: list[tuple[WriteOp | _Increment, list[asyncio.Future[bool]]]],
        upserted: set[int],
        errors: dict[int, BaseException],
    ) -> None:
        for index, (_, futures) in enumerate(group):
            error = errors.get(index)
            for future in futures:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(index in upserted)


async def _write_alone(
    collection: AsyncCollection[dict[str, Any]], op: WriteOp
) -> tuple[bool, BaseException | None]:
    try:
        result = await collection.bulk_write([op], ordered=False)
    except BulkWriteError as exc:
        rows = exc.details.get("writeErrors") or [{}]
        return False, _write_error(rows[0])
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return False, exc
    return bool(result.upserted_ids), None


def _write_concern_error(row: Mapping[str, Any]) -> WriteConcernError:
    """The write concern error of a bulk write, as pymongo raises it for a single write: a
    timeout waiting for the journal or the other members (transient) is a WTimeoutError."""
    code = row.get("code")
    message = str(row.get("errmsg", ""))
    if code == 64 or (row.get("errInfo") or {}).get("wtimeout"):
        return WTimeoutError(message, code, dict(row))
    return WriteConcernError(message, code, dict(row))


def _write_error(row: Mapping[str, Any]) -> WriteError:
    code = row.get("code")
    message = str(row.get("errmsg", ""))
    if code in _DUPLICATE_KEY_CODES:
        return DuplicateKeyError(message, code, dict(row))
    return WriteError(message, code, dict(row))


class GroupFinder(_Group, Generic[K]):
    """Reads of one collection by one (indexed) field, sent together as one ``$in`` query.

    ``await finder.find(key, value)`` returns the documents whose ``field`` is ``value`` and
    whose ``key_of`` is ``key`` — ``key`` narrows what the field selects (say, a document's
    checkpoints of one handler version), and documents other callers asked for never leak
    into another caller's answer. ``where`` (equalities implied by ``key``) goes into the
    query when every read of the command agrees on it, so the server sends less.
    """

    def __init__(
        self,
        collection: Callable[[], AsyncCollection[dict[str, Any]]],
        name: str,
        field: str,
        key_of: Callable[[Mapping[str, Any]], K],
    ) -> None:
        super().__init__(name)
        self._collection = collection
        self._field = field
        self._key_of = key_of
        self._waiting: dict[K, tuple[Any, dict[str, Any], list[asyncio.Future[Any]]]] = {}

    async def find(
        self, key: K, value: Any, where: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        _, _, futures = self._waiting.setdefault(key, (value, dict(where or {}), []))
        futures.append(future)
        self._launch()
        return await future

    def _waiters(self) -> list[asyncio.Future[Any]]:
        return [future for _, _, futures in self._waiting.values() for future in futures]

    async def _send_next(self) -> bool:
        if not self._waiting:
            return False
        keys = list(self._waiting)[:MAX_GROUP]
        group = {key: self._waiting.pop(key) for key in keys}
        waiters = [future for _, _, futures in group.values() for future in futures]
        values = list({value: None for value, _, _ in group.values()})
        wheres = [where for _, where, _ in group.values()]
        try:
            query: dict[str, Any] = {
                self._field: values[0] if len(values) == 1 else {"$in": values}
            }
            if all(where == wheres[0] for where in wheres):
                query.update(wheres[0])
            found: dict[K, list[dict[str, Any]]] = {key: [] for key in group}
            async for raw in self._collection().find(query):
                bucket = found.get(self._key_of(raw))
                if bucket is not None:
                    bucket.append(raw)
        except BaseException as exc:
            _deliver(waiters, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return True
        for key, (_, _, futures) in group.items():
            for future in futures:
                if not future.done():
                    # each waiter gets its own list: callers may keep or change what they get
                    future.set_result(list(found[key]))
        return True
