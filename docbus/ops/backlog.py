"""A batch's backlog: its messages still on the broker, found by peeking its subscriptions.

A batch whose documents all have a result or a dead letter in Mongo can still have messages on a
subscription: a replay in flight, a duplicate, a message being settled at this moment, one
parked (deferred). :class:`BacklogProbe` peeks — never locks or receives — every subscription of
the batch's topic for messages whose ``batch_id`` application property (set by
:func:`docbus.envelope.application_properties`) names the batch, within a time bound, and
:class:`Backlog` says what it found and what it could not ask: a topic missing from the
topology, a session subscription (peeking one would lock a session away from the workers), a
broker that did not answer. Neighbours: :mod:`docbus.ops.status` uses it, :mod:`docbus.topology`
lists the subscriptions, :mod:`docbus.servicebus` builds the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from docbus.errors import DocbusError
from docbus.settings import Settings
from docbus.topology import Topology, TopologyError

__all__ = ["Backlog", "BacklogProbe"]

PEEK_PAGE = 250


@dataclass(frozen=True)
class Backlog:
    """What of one batch is still on the broker."""

    left: dict[str, int] = field(default_factory=dict)
    """Subscription → messages of the batch still on it (active, locked, deferred or
    scheduled); only subscriptions with some are listed."""
    unchecked: dict[str, str] = field(default_factory=dict)
    """Subscription (``*``: all of them) → why it could not be asked."""

    @property
    def total(self) -> int:
        return sum(self.left.values())

    @property
    def checked(self) -> bool:
        """Every subscription of the batch's topic was asked."""
        return not self.unchecked

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "left": dict(self.left), "unchecked": self.unchecked}


def _count_batch(messages: list[Any], batch_id: str) -> int:
    count = 0
    for message in messages:
        properties = message.application_properties or {}
        value = properties.get(b"batch_id", properties.get("batch_id"))
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        count += value == batch_id
    return count


class BacklogProbe:
    """Peeks batches' subscriptions, through one client kept open across calls.

    ``async with BacklogProbe(settings, topology) as probe: backlog = await probe(topic, b)``.
    Each call gets ``timeout`` seconds; once the broker has failed to answer, later calls do
    not wait for it again and report why. Without a topology (None) nothing is asked.
    """

    def __init__(
        self, settings: Settings, topology: Topology | None, *, timeout: float = 5.0
    ) -> None:
        self._settings = settings
        self._topology = topology or Topology()
        self._timeout = timeout
        self._client: Any = None
        self._failed: str | None = None if topology is not None else "no topology file"

    async def __aenter__(self) -> BacklogProbe:
        if self._failed is not None:
            return self
        if not self._settings.servicebus.configured:
            self._failed = "no Service Bus configured"
            return self
        from docbus.servicebus import servicebus_client

        self._client = servicebus_client(self._settings)  # no I/O until a receiver opens
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):  # closing a client that never connected
                await asyncio.wait_for(client.close(), self._timeout)

    async def __call__(self, topic: str, batch_id: str) -> Backlog:
        if self._failed is not None:
            return Backlog(unchecked={"*": self._failed})
        try:
            spec = self._topology.topic(topic)
        except TopologyError:
            return Backlog(unchecked={"*": f"topic {topic!r} is not in the topology"})
        left: dict[str, int] = {}
        unchecked: dict[str, str] = {}
        try:
            async with asyncio.timeout(self._timeout):
                for subscription in spec.subscriptions:
                    if subscription.requires_session:
                        unchecked[subscription.name] = "session subscription (not peeked)"
                        continue
                    count = await self._peek(topic, subscription.name, batch_id)
                    if count:
                        left[subscription.name] = count
        except TimeoutError:
            self._failed = f"no answer from Service Bus within {self._timeout:g} s"
            return Backlog(left=left, unchecked={"*": self._failed})
        except (DocbusError, OSError) as exc:
            self._failed = f"Service Bus: {' '.join(str(exc).split())[:200]}"
            return Backlog(left=left, unchecked={"*": self._failed})
        return Backlog(left=left, unchecked=unchecked)

    async def _peek(self, topic: str, subscription: str, batch_id: str) -> int:
        from azure.servicebus.exceptions import ServiceBusError

        from docbus.servicebus import translate_error

        count = 0
        try:
            receiver = self._client.get_subscription_receiver(topic, subscription)
            async with receiver:
                sequence = 0
                while True:
                    page = await receiver.peek_messages(
                        max_message_count=PEEK_PAGE, sequence_number=sequence
                    )
                    if not page:
                        return count
                    count += _count_batch(page, batch_id)
                    sequence = max(int(m.sequence_number or 0) for m in page) + 1
        except ServiceBusError as exc:
            raise translate_error(exc, f"peek {topic}/{subscription}") from exc
