"""How the chaos suite counts what became of every document: the end-of-run audit.

Reads three witnesses after the workers have stopped — MongoDB (``results``, ``dead_letters``,
``checkpoints``, ``llm_calls``), the broker (every subscription and dead-letter queue, peeked
with the Service Bus SDK) and the captured logs — and turns them into the counts
``bench/chaos.py`` prints. The counting itself is plain functions over plain records
(:func:`account`, :func:`steps_redone`, :func:`raw_outcomes`, :func:`scan_logs`), so their
definitions, which :data:`DEFINITIONS` states in words for the JSON line, can be read and
tested without any I/O. Neighbours: ``bench/_chaos_inputs.py`` (what was sent).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from _chaos_inputs import TEXT_MARKER, RawCase
from azure.servicebus import ServiceBusClient, ServiceBusSubQueue
from pymongo import MongoClient

from docbus.records import result_rank

DEFINITIONS = {
    "lost": "a valid document the publisher sent (or should have sent: valid lines it neither "
    "sent nor reported) that has, for this handler, no current result, no unresolved dead "
    "letter record and no message left on the subscription or its DLQ",
    "duplicate_current": "documents with more than one result version written by one run (a "
    "publication or a replay) for this handler: the document was worked twice, and a second "
    "version would have been a second current result. The current result of a document is "
    "its highest-ranked version not rolled back (docbus.records.result_rank)",
    "done_and_dead": "documents with a current result for this handler AND an unresolved dead "
    "letter record of its subscription; a record is unresolved when it was never replayed "
    "(replayed_at unset) and its generation is >= the current result's generation",
    "unfinished": "documents with neither a current result nor an unresolved dead letter record "
    "whose message is still on the subscription or its DLQ when the run stopped waiting",
    "left_on_subscription": "messages (active, deferred or scheduled) still on the "
    "subscription after the workers stopped",
    "dlq_without_record": "messages on the subscription's DLQ after the workers stopped whose "
    "Mongo dead_letters record (subscription@message_id) does not exist",
    "bad_input_unrecorded": "raw bad messages (sent straight to the topic, accepted by the "
    "broker) with no dead letter record for this subscription (nor, for valid envelopes with "
    "odd content, a current result)",
    "steps_redone": "LLM calls (audit rows) of a step that started after that step's checkpoint "
    "(same document, handler, handler version and step) had been created",
    "redone_token_share": "tokens of the steps_redone calls / tokens of calls in the 'first' "
    "spend category",
    "steps_repeated": "LLM calls of a step that started after an earlier call of the same step "
    "had been answered without error (checkpoint stored or not): all work paid twice; "
    "repeated_token_share is their tokens / first-spend-category tokens",
    "calls_without_audit": "chat-completion requests the offline LLM server received minus "
    "llm_calls audit rows (calls cut off by a SIGKILLed worker count here)",
    "secrets_in_logs": "occurrences, in the worker and publisher logs, of the LLM API key, the "
    "Service Bus SAS key or a whole document text (the Mongo URI has no password: SecantusDB "
    "runs without authentication)",
}


# -- the broker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerMessage:
    """One message left on a subscription (or its DLQ) at the end."""

    subscription: str
    dead_letter: bool
    message_id: str
    batch_id: str | None
    doc_id: str | None
    state: str


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def peek_broker(
    connection_string: str, topic: str, subscriptions: Iterable[str]
) -> list[BrokerMessage]:
    """Every message on the subscriptions and their DLQs (peeked: nothing is locked)."""
    found: list[BrokerMessage] = []
    with ServiceBusClient.from_connection_string(connection_string) as client:
        for subscription in subscriptions:
            for sub_queue in (None, ServiceBusSubQueue.DEAD_LETTER):
                with client.get_subscription_receiver(
                    topic, subscription, sub_queue=sub_queue
                ) as receiver:
                    sequence = 0
                    while True:
                        batch = receiver.peek_messages(
                            max_message_count=250, sequence_number=sequence
                        )
                        if not batch:
                            break
                        for message in batch:
                            props = {
                                _text(k): v
                                for k, v in (message.application_properties or {}).items()
                            }
                            message_id = message.message_id
                            found.append(
                                BrokerMessage(
                                    subscription=subscription,
                                    dead_letter=sub_queue is not None,
                                    message_id=str(message_id)
                                    if message_id is not None
                                    else f"seq:{message.sequence_number}",
                                    batch_id=_text(props.get("batch_id")),
                                    doc_id=_text(props.get("doc_id")),
                                    state=str(getattr(message.state, "name", message.state)),
                                )
                            )
                        sequence = int(batch[-1].sequence_number or 0) + 1
    return found


# -- MongoDB ---------------------------------------------------------------------------------


@dataclass
class MongoState:
    """The rows of the run's batches the audit needs (plain dicts, as pymongo returns them)."""

    results: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    llm_calls: list[dict[str, Any]] = field(default_factory=list)
    all_dead_letter_ids: set[str] = field(default_factory=set)
    audit_rows: int = 0


def load_mongo(uri: str, database: str) -> MongoState:
    """Everything in the run's database (it holds nothing else)."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=30_000)
    try:
        db = client[database]
        state = MongoState()
        state.results = list(
            db["results"].find(
                {},
                {
                    "doc_id": 1,
                    "handler": 1,
                    "batch_id": 1,
                    "rolled_back": 1,
                    "generation": 1,
                    "run_id": 1,
                    "message_id": 1,
                    "issued_at": 1,
                    "written_at": 1,
                },
            )
        )
        state.dead_letters = list(
            db["dead_letters"].find(
                {},
                {
                    "subscription": 1,
                    "handler": 1,
                    "batch_id": 1,
                    "doc_id": 1,
                    "generation": 1,
                    "replayed_at": 1,
                    "message_id": 1,
                    "reason": 1,
                },
            )
        )
        state.all_dead_letter_ids = {str(d["_id"]) for d in state.dead_letters}
        state.checkpoints = list(
            db["checkpoints"].find(
                {}, {"doc_id": 1, "handler": 1, "handler_version": 1, "step": 1, "created_at": 1}
            )
        )
        state.llm_calls = list(
            db["llm_calls"].find(
                {},
                {
                    "doc_id": 1,
                    "handler": 1,
                    "handler_version": 1,
                    "step": 1,
                    "created_at": 1,
                    "latency_s": 1,
                    "prompt_tokens": 1,
                    "completion_tokens": 1,
                    "category": 1,
                    "error_type": 1,
                },
            )
        )
        state.audit_rows = len(state.llm_calls)
        return state
    finally:
        client.close()


# -- the counts ------------------------------------------------------------------------------


@dataclass
class Rework:
    """LLM work a handler paid for twice."""

    redone_calls: int = 0
    """Calls of a step that started after the step's checkpoint had been created."""
    redone_tokens: int = 0
    repeated_calls: int = 0
    """Calls of a step that started after an earlier call of the step had been answered well
    (whether or not its checkpoint was ever stored): the broader measure of paying twice."""
    repeated_tokens: int = 0
    first_pass_tokens: int = 0
    """Tokens of the calls in the ``first`` spend category."""


@dataclass
class HandlerCounts:
    documents: int = 0
    done: int = 0
    dead_lettered: int = 0
    lost: int = 0
    duplicate_current: int = 0
    done_and_dead: int = 0
    unfinished: int = 0
    left_on_subscription: int = 0
    dlq_without_record: int = 0
    bad_input_unrecorded: int = 0
    rework: Rework = field(default_factory=Rework)
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    """A few document ids per failing count, to start an investigation from."""

    def note(self, what: str, doc: str) -> None:
        examples = self.examples.setdefault(what, [])
        if len(examples) < 5:
            examples.append(doc)


def _unresolved(
    records: list[Mapping[str, Any]], generation: int | None
) -> list[Mapping[str, Any]]:
    """Dead letter records still standing: never replayed, and (with a current result) of its
    generation or a later one."""
    return [
        r
        for r in records
        if r.get("replayed_at") is None
        and (generation is None or int(r.get("generation") or 0) >= generation)
    ]


def current_versions(results: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each (document, handler)'s current version: the highest-ranked not rolled back."""
    top: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in results:
        if r.get("rolled_back"):
            continue
        owner = (str(r["doc_id"]), str(r["handler"]))
        rank = result_rank(r.get("issued_at"), r["written_at"], str(r["_id"]))
        held = top.get(owner)
        if held is None or rank > result_rank(
            held.get("issued_at"), held["written_at"], str(held["_id"])
        ):
            top[owner] = r
    return list(top.values())


def account(  # noqa: C901 - one pass over every count the audit reports, in the order the notes define them
    handler: str,
    subscription: str,
    expected: Iterable[tuple[str, str]],
    mongo: MongoState,
    broker: list[BrokerMessage],
) -> HandlerCounts:
    """What became of each expected (batch, document) in ``handler`` (see DEFINITIONS)."""
    counts = HandlerCounts()
    current: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in current_versions(mongo.results):
        if r.get("handler") == handler:
            current[str(r["doc_id"])].append(r)
    runs: Counter[tuple[str, str, str]] = Counter(
        (str(r["doc_id"]), str(r.get("batch_id")), str(r.get("run_id") or r.get("message_id")))
        for r in mongo.results
        if r.get("handler") == handler
    )
    twice = {(doc_id, batch_id) for (doc_id, batch_id, _), n in runs.items() if n > 1}
    dead: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for d in mongo.dead_letters:
        if d.get("subscription") == subscription:
            dead[(str(d.get("batch_id")), str(d.get("doc_id")))].append(d)
    waiting = {(m.batch_id, m.doc_id) for m in broker if m.subscription == subscription}
    for batch_id, doc_id in expected:
        counts.documents += 1
        mine = [r for r in current.get(doc_id, []) if r.get("batch_id") == batch_id]
        if (doc_id, batch_id) in twice:
            counts.duplicate_current += 1
            counts.note("duplicate_current", doc_id)
        generation = max((int(r.get("generation") or 0) for r in mine), default=None)
        standing = _unresolved(dead.get((batch_id, doc_id), []), generation)
        for record in standing:
            counts.dead_letter_reasons[str(record.get("reason"))] += 1
        if mine and standing:
            counts.done_and_dead += 1
            counts.note("done_and_dead", doc_id)
        elif mine:
            counts.done += 1
        elif standing:
            counts.dead_lettered += 1
        elif (batch_id, doc_id) in waiting:
            counts.unfinished += 1
            counts.note("unfinished", doc_id)
        else:
            counts.lost += 1
            counts.note("lost", doc_id)
    for m in broker:
        if m.subscription != subscription:
            continue
        if not m.dead_letter:
            counts.left_on_subscription += 1
            counts.note("left_on_subscription", f"{m.message_id} ({m.state})")
        elif f"{subscription}@{m.message_id}" not in mongo.all_dead_letter_ids:
            counts.dlq_without_record += 1
            counts.note("dlq_without_record", m.message_id)
    return counts


def raw_outcomes(
    cases: Iterable[RawCase],
    refused: Mapping[str, str],
    subscriptions: Mapping[str, str],
    mongo: MongoState,
) -> dict[str, list[str]]:
    """Per handler, the raw bad messages (``kind``) accepted by the broker that did not end as
    they must (``subscriptions``: handler → subscription)."""
    results = {
        (str(r.get("handler")), str(r.get("doc_id"))) for r in current_versions(mongo.results)
    }
    missing: dict[str, list[str]] = {}
    for handler, subscription in subscriptions.items():
        missing[handler] = [
            case.kind
            for case in cases
            if case.kind not in refused
            and f"{subscription}@{case.message_id}" not in mongo.all_dead_letter_ids
            and not (
                case.expect == "result_or_dead_letter" and (handler, str(case.doc_id)) in results
            )
        ]
    return missing


def _started(call: Mapping[str, Any]) -> datetime | None:
    created = call.get("created_at")
    if not isinstance(created, datetime):
        return None
    return created - timedelta(seconds=float(call.get("latency_s") or 0.0))


def rework(handler: str, mongo: MongoState) -> Rework:
    """What ``handler`` re-spent on steps that had finished (see :class:`Rework`)."""
    made: dict[tuple[Any, ...], datetime] = {}
    for c in mongo.checkpoints:
        if c.get("handler") != handler or not isinstance(c.get("created_at"), datetime):
            continue
        key = (c.get("doc_id"), c.get("handler_version"), c.get("step"))
        made[key] = min(made.get(key, c["created_at"]), c["created_at"])
    calls = [c for c in mongo.llm_calls if c.get("handler") == handler and c.get("step")]
    answered: dict[tuple[Any, ...], datetime] = {}
    for call in calls:
        created = call.get("created_at")
        if call.get("error_type") is None and isinstance(created, datetime):
            key = (call.get("doc_id"), call.get("handler_version"), call.get("step"))
            answered[key] = min(answered.get(key, created), created)
    out = Rework()
    for call in mongo.llm_calls:
        if call.get("handler") == handler and call.get("category") == "first":
            out.first_pass_tokens += _tokens(call)
    for call in calls:
        key = (call.get("doc_id"), call.get("handler_version"), call.get("step"))
        started = _started(call)
        if started is None:
            continue
        checkpoint, first_answer = made.get(key), answered.get(key)
        if checkpoint is not None and started > checkpoint:
            out.redone_calls += 1
            out.redone_tokens += _tokens(call)
        if first_answer is not None and started > first_answer:
            out.repeated_calls += 1
            out.repeated_tokens += _tokens(call)
    return out


def _tokens(call: Mapping[str, Any]) -> int:
    return int(call.get("prompt_tokens") or 0) + int(call.get("completion_tokens") or 0)


# -- the logs --------------------------------------------------------------------------------

_REF = re.compile(re.escape(TEXT_MARKER) + r"([0-9a-f]{12})")
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class LogScan:
    files: int = 0
    bytes: int = 0
    secrets: list[str] = field(default_factory=list)
    """``what in file`` for each secret or whole document found."""
    tracebacks: Counter[str] = field(default_factory=Counter)


def _ref(text: str) -> str | None:
    found = _REF.search(text)
    return found.group(1) if found else None


def scan_logs(paths: Iterable[Path], secrets: Mapping[str, str], texts: Iterable[str]) -> LogScan:
    """Look for the secrets (name → value) and whole document texts in the logs."""
    by_ref: dict[str, str] = {}
    for text in texts:
        ref = _ref(text)
        if ref is not None:
            by_ref[ref] = text
    scan = LogScan()
    for path in paths:
        if not path.exists():
            continue
        log = path.read_bytes().decode("utf-8", errors="replace")
        scan.files += 1
        scan.bytes += len(log)
        for name, value in secrets.items():
            if value and value in log:
                scan.secrets.append(f"{name} in {path.name} ({log.count(value)}x)")
        for ref in set(_REF.findall(log)):
            whole = by_ref.get(ref)
            if whole is None:
                continue
            escaped = whole.replace("\\", "\\\\").replace('"', '\\"')
            if whole in log or escaped in log or repr(whole)[1:-1] in log:
                scan.secrets.append(f"document text {ref} in {path.name}")
        if TRACEBACK in log:
            scan.tracebacks[path.name] = log.count(TRACEBACK)
    return scan


@dataclass
class Audit:
    """Everything the end-of-run audit found."""

    per_handler: dict[str, HandlerCounts]
    llm_stats: dict[str, Any]
    """The offline LLM server's counters (``GET /_admin/stats``)."""
    audit_rows: int
    logs: LogScan
    """Of the worker and publisher logs."""
    stand_in_tracebacks: Counter[str]
