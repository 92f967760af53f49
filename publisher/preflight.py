"""Preflight: what publishing checks once, before it records or sends anything.

Service Bus accepts a message for a topic with no matching subscription and drops it, and drops
a message whose id it saw within the duplicate-detection window; neither tells the sender. So
:func:`publisher.publish.publish_documents` refuses, with :class:`PublishRefused` and nothing
recorded, a topic the topology (:mod:`docbus.topology`, the single source of truth for
entities) does not know or whose subscriptions would not take the message
(:func:`topic_receivers`), a subscription missing on the broker (:func:`check_subscriptions`,
a peek on each: there is no AMQP operation to list a topic's subscriptions), and a batch id
already used (:func:`existing_batch`), unless asked to resume it: then a :class:`ResumePlan`
says, per document, whether to send it, skip it (it reached the topic) or list it as a problem
(its content differs from what the batch recorded). :func:`first_failure` runs these checks
at once, beside opening the sender links, so a small publish stays fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from azure.servicebus.aio import ServiceBusClient

from docbus.envelope import Envelope
from docbus.errors import DocbusError
from docbus.servicebus import (
    MessagingAuthError,
    MessagingEntityNotFound,
    MessagingError,
    translated,
)
from docbus.store import Store
from docbus.topology import BROADCAST, SubscriptionSpec, Topology, TopologyError

__all__ = [
    "PublishRefused",
    "ResumePlan",
    "check_subscriptions",
    "existing_batch",
    "fingerprint",
    "first_failure",
    "subscription_check",
    "topic_receivers",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEPLOY_HINT = (
    "deploy the topology (`docbus topology bicep-params` for Azure, "
    "`docbus topology emulator-config` for an emulator)"
)


class PublishRefused(DocbusError):
    """Publishing would lose documents silently, so nothing was recorded or sent; says why."""


def topic_receivers(
    topology: Topology, topic: str, route: str = BROADCAST
) -> tuple[SubscriptionSpec, ...]:
    """The topology's subscriptions of ``topic`` that take a message routed to ``route``.

    Raises :class:`PublishRefused` when the topic is unknown or none would take it.
    """
    try:
        spec = topology.topic(topic)
    except TopologyError as exc:
        raise PublishRefused(
            f"{exc} in the topology: publish to one of its topics, or add the topic (with its "
            f"subscriptions) and {DEPLOY_HINT}"
        ) from None
    takers = tuple(sub for sub in spec.subscriptions if sub.takes(route))
    if not takers:
        has = "has no subscriptions" if not spec.subscriptions else "has no subscription"
        raise PublishRefused(
            f"topic '{topic}' {has} that would take its messages (route {route!r}), so the "
            f"broker would drop them: add one to the topology and {DEPLOY_HINT}"
        )
    return takers


SubscriptionState = Literal["ok", "missing", "unauthorised", "unknown"]


def subscription_check(error: BaseException | None) -> SubscriptionState:
    """What a failed (or not: ``None``) existence check of a subscription means."""
    if error is None:
        return "ok"
    if isinstance(error, MessagingEntityNotFound):
        return "missing"
    if isinstance(error, MessagingAuthError):
        return "unauthorised"
    return "unknown"


async def check_subscriptions(
    client: ServiceBusClient,
    topic: str,
    subscriptions: tuple[SubscriptionSpec, ...],
    closing: list[asyncio.Task[None]],
) -> list[str]:
    """Check on the broker that every subscription exists; returns warnings.

    Raises :class:`PublishRefused` naming the missing ones. Credentials that may only send
    cannot look, which is a warning, not a refusal. A session subscription is asked for its
    sessions (a peek would need a session lock). Receivers are closed in the background (the
    SDK takes up to a second per close); the caller awaits ``closing`` before it returns.
    """

    async def look(sub: SubscriptionSpec) -> tuple[str, SubscriptionState, str]:
        error: BaseException | None = None
        try:
            with translated(f"check subscription {topic}/{sub.name}"):
                if sub.requires_session:
                    async for _ in client.list_subscription_sessions(topic, sub.name):
                        break
                else:
                    receiver = client.get_subscription_receiver(topic, sub.name)
                    try:
                        await receiver.peek_messages(max_message_count=1)
                    finally:
                        closing.append(asyncio.create_task(_close(receiver)))
        except MessagingError as exc:
            error = exc
        return sub.name, subscription_check(error), str(error or "")

    states = await asyncio.gather(*(look(sub) for sub in subscriptions))
    missing = [name for name, state, _ in states if state == "missing"]
    if missing:
        listed = ", ".join(f"'{name}'" for name in missing)
        raise PublishRefused(
            f"topic '{topic}': subscription {listed} does not exist on the broker, which would "
            f"drop the messages meant for it: {DEPLOY_HINT}"
        )
    warnings = []
    for name, state, detail in states:
        if state == "unauthorised":
            warnings.append(
                f"could not check that subscription '{topic}/{name}' exists: these credentials "
                "may only send (checking needs the Listen right)"
            )
        elif state == "unknown":
            warnings.append(f"could not check that subscription '{topic}/{name}' exists: {detail}")
    for warning in warnings:
        logger.warning("%s", warning)
    return warnings


async def _close(receiver: Any) -> None:
    try:
        await receiver.close()
    except Exception:
        logger.debug("closing a check receiver failed", exc_info=True)


def fingerprint(
    text_sha256: str, metadata: Mapping[str, Any], content_type: str, session_id: str | None
) -> str:
    """What a handler sees of a document, hashed: equal fingerprints, same document."""
    canonical = json.dumps(
        [text_sha256, metadata, content_type, session_id],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recorded_fingerprint(envelope: Envelope) -> str:
    if envelope.claim_check is not None:
        digest = envelope.claim_check.sha256
    else:
        digest = text_sha256(envelope.content or "")
    return fingerprint(digest, envelope.metadata, envelope.content_type, envelope.session_id)


Decision = Literal["send", "resend", "done"]


@dataclass
class ResumePlan:
    """What a batch already holds: per document, its fingerprint and whether it has an outcome."""

    batch_id: str
    recorded: dict[str, str] = field(default_factory=dict)
    """doc_id → fingerprint of what the batch recorded."""
    with_outcome: set[str] = field(default_factory=set)
    """Recorded documents with a result or dead letter: they reached the topic."""

    def decide(
        self, doc_id: str, text: str, metadata: Mapping[str, Any], content_type: str,
        session_id: str | None,
    ) -> Decision | str:  # fmt: skip
        """``send`` (new to the batch: record and send), ``resend`` (recorded, no outcome: send
        again under its message id; a copy that did arrive is dropped as a duplicate or
        absorbed by the idempotent result write), ``done``, or the problem with the document."""
        recorded = self.recorded.get(doc_id)
        if recorded is None:
            return "send"
        mine = fingerprint(text_sha256(text), metadata, content_type, session_id)
        if mine != recorded:
            return (
                f"differs from document {doc_id!r} as batch {self.batch_id} recorded it (text "
                "or metadata changed): publish it under a new batch id, or replay the batch"
            )
        return "done" if doc_id in self.with_outcome else "resend"


async def existing_batch(
    store: Store, batch_id: str, topic: str, *, resume: bool
) -> ResumePlan | None:
    """None for a new batch id; for a used one, refuse, or with ``resume`` plan what to send."""
    record = await store.get_batch(batch_id)
    if record is None:
        return ResumePlan(batch_id) if resume else None
    documents = record.counts.get("documents", 0)
    if not resume:
        when = record.created_at.strftime("%Y-%m-%d %H:%M UTC")
        raise PublishRefused(
            f"batch {batch_id} already exists (published {when} to '{record.topic}', "
            f"{documents} documents, {record.status}); Service Bus would drop its messages as "
            f"duplicates: use a new batch id, `docbus replay --batch {batch_id}` to reprocess "
            "it, or --resume to send only what it is missing"
        )
    if record.topic.lower() != topic.lower():
        raise PublishRefused(
            f"batch {batch_id} was published to topic '{record.topic}', not '{topic}': resume "
            "it on its own topic"
        )
    recorded = {e.doc_id: recorded_fingerprint(e) async for e in store.iter_documents(batch_id)}
    return ResumePlan(batch_id, recorded, await store.documents_with_outcome(batch_id))


async def first_failure(*steps: Awaitable[Any]) -> list[Any]:
    """Run ``steps`` at once; the first to fail cancels the others and its error is raised."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
