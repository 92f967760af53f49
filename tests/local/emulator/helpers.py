"""Small helpers shared by the emulator's SDK tests."""

from __future__ import annotations

import time
from typing import Any

from azure.servicebus import ServiceBusClient, ServiceBusReceivedMessage


def receive_all(
    client: ServiceBusClient, queue: str, expected: int, **kw: Any
) -> list[ServiceBusReceivedMessage]:
    received: list[ServiceBusReceivedMessage] = []
    with client.get_queue_receiver(queue, **kw) as receiver:  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while len(received) < expected and time.monotonic() < deadline:
            received += receiver.receive_messages(max_message_count=expected, max_wait_time=1)
        # anything beyond what was expected is a failure the caller's assertions will see
        received += receiver.receive_messages(max_message_count=10, max_wait_time=0.3)
        for message in received:
            receiver.complete_message(message)
    return received
