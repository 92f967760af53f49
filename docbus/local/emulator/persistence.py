"""Persistence of the emulator's broker state in one SQLite file, so a restart keeps the messages.

:class:`SqliteStore` is the :class:`Journal` of every entity of a
:class:`~docbus.local.emulator.broker.Broker` built with ``store=``: it hears of each accepted
message, state change (lock, unlock, delivery count, defer, schedule activation), removal, sequence
counter and session state, and writes them through. Writes are coalesced per key and flushed once
per loop tick (``call_soon``) in one transaction, with WAL and ``synchronous=NORMAL``, so a message
that is sent and completed within one tick never touches the disk and a busy emulator commits a
batch, not one fsync per message. Locks are not kept: :meth:`load` reports which messages were
locked, and the entity brings them back unlocked with ``delivery_count + 1``, as a lost lock would.

Rows keep the raw AMQP sections as BLOBs; the remaining fields of
:class:`~docbus.local.emulator.message.BrokeredMessage` (decoded properties, the sender's
annotations, dead-letter fields, ...) are pickled, because the sender's annotations can hold any
value type the wire codec produces and must be re-encoded exactly. The file lives in the user's own
data directory and is only ever read by this process.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .alarms import running_loop
from .message import BrokeredMessage, MessageState

logger = logging.getLogger(__name__)

__all__ = ["DATABASE_NAME", "EntitySnapshot", "Journal", "SqliteStore"]


class Journal(Protocol):
    """What an entity reports for persistence; calls must be cheap (the store coalesces them)."""

    def message_added(self, entity: str, message: BrokeredMessage) -> None: ...

    def message_changed(self, entity: str, message: BrokeredMessage) -> None: ...

    def message_removed(self, entity: str, sequence_number: int) -> None: ...

    def sequence_advanced(self, entity: str, last_sequence_number: int) -> None: ...

    def session_state_changed(self, entity: str, session_id: str, state: bytes | None) -> None: ...


@dataclass(slots=True)
class EntitySnapshot:
    """An entity's kept contents, as the store loads them after a restart."""

    messages: list[BrokeredMessage] = field(default_factory=list)  # in sequence order
    locked: set[int] = field(default_factory=set)  # sequence numbers that were locked
    last_sequence_number: int = 0
    session_states: dict[str, bytes] = field(default_factory=dict)


DATABASE_NAME = "docbus-emulator.sqlite3"
_SCHEMA_VERSION = 1

# Fields stored in their own columns (queryable with the sqlite3 shell); the rest is pickled.
_COLUMNS = (
    "sequence_number", "state", "delivery_count", "message_id", "session_id", "enqueued_time",
    "expires_at", "size", "properties_section", "application_properties_section",
    "body_sections", "footer_section",
)  # fmt: skip
_NOT_KEPT = {"lock_token", "locked_until"}
_PICKLED = tuple(
    f.name
    for f in dataclasses.fields(BrokeredMessage)
    if f.name not in _COLUMNS and f.name not in _NOT_KEPT
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    entity TEXT NOT NULL,
    seq INTEGER NOT NULL,
    locked INTEGER NOT NULL,
    state INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL,
    message_id TEXT,
    session_id TEXT,
    enqueued_time REAL NOT NULL,
    expires_at REAL,
    size INTEGER NOT NULL,
    properties_section BLOB NOT NULL,
    application_properties_section BLOB NOT NULL,
    body_sections BLOB NOT NULL,
    footer_section BLOB NOT NULL,
    other_fields BLOB NOT NULL,
    PRIMARY KEY (entity, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    entity TEXT PRIMARY KEY,
    last_sequence_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS session_states (
    entity TEXT NOT NULL,
    session_id TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (entity, session_id)
);
"""

_UPSERT = "INSERT OR REPLACE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"


class SqliteStore:
    """Write-through store of broker state in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        """Remember the database file; it is opened (and created) on first use."""
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._closed = False
        # (entity, seq) -> message to upsert, or None to delete.
        self._pending: dict[tuple[str, int], BrokeredMessage | None] = {}
        # Keys whose pending upsert is their first write: removing them needs no DELETE.
        self._fresh: set[tuple[str, int]] = set()
        self._counters: dict[str, int] = {}
        self._states: dict[tuple[str, str], bytes | None] = {}
        self._flush_scheduled = False

    @classmethod
    def open(cls, data_dir: str | Path) -> SqliteStore:
        """Open (creating if needed) ``<data_dir>/docbus-emulator.sqlite3`` now."""
        store = cls(Path(data_dir) / DATABASE_NAME)
        store._connection()
        return store

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        if self._closed:
            raise RuntimeError(f"the store {self.path} is closed")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            db.close()
            raise RuntimeError(
                f"{self.path}: schema version {version} is not supported by this docbus "
                f"(expects {_SCHEMA_VERSION}); use another data directory"
            )
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        logger.info("emulator state in %s", self.path)
        self._db = db
        return db

    # --- Journal ----------------------------------------------------------------------------

    def message_added(self, entity: str, message: BrokeredMessage) -> None:
        key = (entity, message.sequence_number)
        if key not in self._pending:
            self._fresh.add(key)
        self._pending[key] = message
        self._schedule()

    def message_changed(self, entity: str, message: BrokeredMessage) -> None:
        self._pending[(entity, message.sequence_number)] = message
        self._schedule()

    def message_removed(self, entity: str, sequence_number: int) -> None:
        key = (entity, sequence_number)
        if key in self._fresh:
            self._fresh.discard(key)
            self._pending.pop(key, None)
        else:
            self._pending[key] = None
        self._schedule()

    def sequence_advanced(self, entity: str, last_sequence_number: int) -> None:
        self._counters[entity] = last_sequence_number
        self._schedule()

    def session_state_changed(self, entity: str, session_id: str, state: bytes | None) -> None:
        self._states[(entity, session_id)] = state
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            loop = running_loop()
            if loop is not None:
                self._flush_scheduled = True
                loop.call_soon(self.flush)

    # --- writing and reading ----------------------------------------------------------------

    def flush(self) -> None:
        """Write every pending change in one transaction."""
        self._flush_scheduled = False
        if self._closed or not (self._pending or self._counters or self._states):
            return
        db = self._connection()
        upserts = [_row(entity, m) for (entity, _), m in self._pending.items() if m is not None]
        deletes = [key for key, m in self._pending.items() if m is None]
        counters = list(self._counters.items())
        states = [(e, s, st) for (e, s), st in self._states.items() if st is not None]
        cleared = [(e, s) for (e, s), st in self._states.items() if st is None]
        try:
            db.execute("BEGIN")
            db.executemany(_UPSERT, upserts)
            db.executemany("DELETE FROM messages WHERE entity = ? AND seq = ?", deletes)
            db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?)", counters)
            db.executemany("INSERT OR REPLACE INTO session_states VALUES (?, ?, ?)", states)
            db.executemany(
                "DELETE FROM session_states WHERE entity = ? AND session_id = ?", cleared
            )
            db.execute("COMMIT")
        except sqlite3.Error:
            # Keep the pending changes for the next flush; the broker keeps running in memory.
            logger.exception("writing emulator state to %s failed", self.path)
            if db.in_transaction:
                db.execute("ROLLBACK")
            return
        self._pending.clear()
        self._fresh.clear()
        self._counters.clear()
        self._states.clear()

    def load(self, entity: str) -> EntitySnapshot:
        """What was kept for one entity (its messages in sequence order)."""
        self.flush()
        db = self._connection()
        snapshot = EntitySnapshot()
        rows = db.execute(
            "SELECT seq, locked, state, delivery_count, message_id, session_id, enqueued_time, "
            "expires_at, size, properties_section, application_properties_section, "
            "body_sections, footer_section, other_fields "
            "FROM messages WHERE entity = ? ORDER BY seq",
            (entity,),
        )
        for row in rows:
            message = _message(row)
            snapshot.messages.append(message)
            if row[1]:
                snapshot.locked.add(message.sequence_number)
        counter = db.execute(
            "SELECT last_sequence_number FROM counters WHERE entity = ?", (entity,)
        ).fetchone()
        snapshot.last_sequence_number = counter[0] if counter else 0
        snapshot.session_states = dict(
            db.execute(
                "SELECT session_id, state FROM session_states WHERE entity = ?", (entity,)
            ).fetchall()
        )
        return snapshot

    def entity_names(self) -> list[str]:
        """Entities that have kept messages (for diagnostics)."""
        db = self._connection()
        return [row[0] for row in db.execute("SELECT DISTINCT entity FROM messages ORDER BY 1")]

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._db is not None:
            self._db.close()
            self._db = None


def _row(entity: str, m: BrokeredMessage) -> tuple[Any, ...]:
    others = {name: getattr(m, name) for name in _PICKLED}
    return (
        entity,
        m.sequence_number,
        1 if m.lock_token is not None else 0,
        int(m.state),
        m.delivery_count,
        m.message_id,
        m.session_id,
        m.enqueued_time,
        m.expires_at,
        m.size,
        m.properties_section,
        m.application_properties_section,
        m.body_sections,
        m.footer_section,
        pickle.dumps(others, protocol=pickle.HIGHEST_PROTOCOL),
    )


def _message(row: tuple[Any, ...]) -> BrokeredMessage:
    (seq, _locked, state, delivery_count, message_id, session_id, enqueued_time, expires_at,
     size, properties, app_properties, body, footer, others_blob) = row  # fmt: skip
    others = pickle.loads(others_blob)
    known = {f.name for f in dataclasses.fields(BrokeredMessage)}
    message = BrokeredMessage(**{k: v for k, v in others.items() if k in known})
    message.sequence_number = seq
    message.state = MessageState(state)
    message.delivery_count = delivery_count
    message.message_id = message_id
    message.session_id = session_id
    message.enqueued_time = enqueued_time
    message.expires_at = expires_at
    message.size = size
    message.properties_section = bytes(properties)
    message.application_properties_section = bytes(app_properties)
    message.body_sections = bytes(body)
    message.footer_section = bytes(footer)
    return message
