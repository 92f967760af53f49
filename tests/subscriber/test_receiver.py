"""The receiver adapter: Service Bus errors come out as docbus's own, proved against the emulator
with the real SDK; and turns on one link: receives alone, settlements together, neither starving
the other."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient

from docbus.servicebus import (
    MessageLockLost,
    MessageNotFound,
    MessagingEntityNotFound,
    MessagingError,
    MessagingUnavailable,
)
from docbus.topology import BROADCAST, ROUTE_PROPERTY
from subscriber.receiver import Receiver, Turns, open_next_session, open_receiver
from tests.subscriber.poison_messages import send

SUBSCRIBER = Path(__file__).resolve().parents[2] / "subscriber"


def test_no_module_of_the_subscriber_but_the_receiver_handles_azure_exceptions() -> None:
    pattern = re.compile(r"azure\.servicebus\.exceptions|azure\.core\.exceptions")
    handling = sorted(
        path.name
        for path in SUBSCRIBER.glob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    )
    assert handling == ["receiver.py"]


def routed(body: bytes = b"{}") -> ServiceBusMessage:
    return ServiceBusMessage(body, application_properties={ROUTE_PROPERTY: BROADCAST})


@pytest.fixture
async def client(servicebus_connection_string: str) -> AsyncIterator[ServiceBusClient]:
    # no SDK retries: an error comes back at once instead of after the SDK's backoff
    async with ServiceBusClient.from_connection_string(
        servicebus_connection_string, retry_total=0
    ) as client:
        yield client


async def receive_one(receiver: Receiver) -> ServiceBusReceivedMessage:
    messages: list[ServiceBusReceivedMessage] = []
    while not messages:
        messages = await receiver.receive(1, 5)
    return messages[0]


async def test_settling_on_a_closed_receiver_is_a_lost_link(
    servicebus_connection_string: str, client: ServiceBusClient
) -> None:
    await send(servicebus_connection_string, [routed()])
    async with open_receiver(client, "docs", "work") as receiver:
        message = await receive_one(receiver)
    # the SDK says so with a ValueError ("the handler has already been shutdown")
    with pytest.raises(MessagingUnavailable, match="link to the broker was lost") as caught:
        await receiver.complete(message)
    assert caught.value.transient


async def test_a_settlement_after_the_lock_ran_out_is_a_lost_lock(
    servicebus_connection_string: str, client: ServiceBusClient
) -> None:
    await send(servicebus_connection_string, [routed()], topic="slow")  # a 1 s lock
    async with open_receiver(client, "slow", "blocking") as receiver:
        message = await receive_one(receiver)
        assert message.locked_until_utc is not None
        # the condition under test is time passing: wait the lock out
        await asyncio.sleep((message.locked_until_utc - datetime.now(UTC)).total_seconds() + 0.2)
        with pytest.raises(MessageLockLost):
            await receiver.renew_lock(message)
        with pytest.raises(MessagingError):
            await receiver.complete(message)


async def receive_all(receiver: Receiver, count: int) -> list[ServiceBusReceivedMessage]:
    messages: list[ServiceBusReceivedMessage] = []
    while len(messages) < count:
        messages += await receiver.receive(count - len(messages), 5)
    return messages


async def test_completions_arriving_together_leave_together(
    servicebus_connection_string: str, client: ServiceBusClient
) -> None:
    await send(servicebus_connection_string, [routed(f"{i}".encode()) for i in range(6)])
    async with open_receiver(client, "docs", "work") as receiver:
        messages = await receive_all(receiver, 6)
        one_by_one: list[object] = []
        link = receiver._link
        complete_message = link.complete_message

        async def counted(message: ServiceBusReceivedMessage) -> None:
            one_by_one.append(message)
            await complete_message(message)

        link.complete_message = counted  # type: ignore[method-assign]
        await asyncio.gather(*(receiver.complete(m) for m in messages))
        # consecutive deliveries, completed at once: one disposition for all of them
        assert one_by_one == []
        assert all(Receiver.settled(m) for m in messages)
        assert await receiver.peek(10) == []
    async with open_receiver(client, "docs", "work") as again:
        assert await again.receive(10, 1) == []  # none comes back


async def test_without_ranges_completions_together_go_one_disposition_each(
    servicebus_connection_string: str, client: ServiceBusClient
) -> None:
    await send(servicebus_connection_string, [routed(f"{i}".encode()) for i in range(4)])
    async with open_receiver(client, "docs", "work", ranged=False) as receiver:
        messages = await receive_all(receiver, 4)
        one_by_one: list[object] = []
        complete_message = receiver._link.complete_message

        async def counted(message: ServiceBusReceivedMessage) -> None:
            one_by_one.append(message)
            await complete_message(message)

        receiver._link.complete_message = counted  # type: ignore[method-assign]
        await asyncio.gather(*(receiver.complete(m) for m in messages))
        assert sorted(map(id, one_by_one)) == sorted(map(id, messages))
        assert await receiver.peek(10) == []


async def test_a_lost_lock_among_completions_together_fails_only_its_own(
    servicebus_connection_string: str, client: ServiceBusClient
) -> None:
    await send(servicebus_connection_string, [routed(f"{i}".encode()) for i in range(3)], "slow")
    async with open_receiver(client, "slow", "blocking") as receiver:  # a 1 s lock
        first, middle, last = sorted(
            await receive_all(receiver, 3), key=lambda m: int(m.sequence_number or 0)
        )
        assert middle.locked_until_utc is not None
        # the condition under test is time passing: keep two locks, let the middle one run out
        until = middle.locked_until_utc
        while datetime.now(UTC) < until + timedelta(seconds=0.3):
            await receiver.renew_lock(first)
            await receiver.renew_lock(last)
            await asyncio.sleep(0.2)
        outcomes = await asyncio.gather(
            *(receiver.complete(m) for m in (first, middle, last)), return_exceptions=True
        )
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], MessagingError)


async def test_fetching_a_deferred_message_that_is_gone_says_not_found(
    client: ServiceBusClient,
) -> None:
    async with open_receiver(client, "docs", "work") as receiver:
        with pytest.raises(MessageNotFound):
            await receiver.receive_deferred([987654])


async def test_opening_a_receiver_on_a_missing_subscription_names_it(
    client: ServiceBusClient,
) -> None:
    with pytest.raises(MessagingEntityNotFound, match="docs/nowhere"):
        async with open_receiver(client, "docs", "nowhere"):
            pass


async def test_a_deferred_message_is_fetched_back_and_settled_through_the_adapter(
    servicebus_connection_string: str, client: ServiceBusClient
) -> None:
    await send(servicebus_connection_string, [routed(b"aside")])
    async with open_receiver(client, "docs", "work") as receiver:
        message = await receive_one(receiver)
        await receiver.defer(message)
        number = message.sequence_number
        [again] = await receiver.receive_deferred([int(number or 0)])
        assert b"".join(again.body) == b"aside"
        await receiver.complete(again)
        assert await receiver.peek() == []


async def test_no_session_with_messages_opens_no_session_receiver(
    client: ServiceBusClient,
) -> None:
    async with open_next_session(client, "ordered", "in-order", max_wait=0.5) as receiver:
        assert receiver is None


async def test_a_session_receiver_holds_and_renews_its_sessions_lock(
    servicebus_connection_string: str, client: ServiceBusClient
) -> None:
    message = routed()
    message.session_id = "acme"
    await send(servicebus_connection_string, [message], topic="ordered")
    async with open_next_session(client, "ordered", "in-order", max_wait=5) as receiver:
        assert receiver is not None and receiver.session_id == "acme"
        before = receiver.session_locked_until
        await receiver.renew_session_lock()
        assert before is not None and receiver.session_locked_until is not None
        assert receiver.session_locked_until >= before
        [received] = await receiver.receive(1, 5)
        await receiver.complete(received)


# --- turns -----------------------------------------------------------------------------------


async def settle_soon() -> None:
    """Let every task that can run take its step."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_settlements_share_a_turn() -> None:
    turns = Turns()
    inside: list[int] = []
    release = asyncio.Event()

    async def settle(n: int) -> None:
        async with turns.sharing():
            inside.append(n)
            await release.wait()

    tasks = [asyncio.ensure_future(settle(n)) for n in range(3)]
    await settle_soon()
    assert sorted(inside) == [0, 1, 2]
    release.set()
    await asyncio.gather(*tasks)


async def test_a_receive_waits_for_settlements_on_the_wire_and_then_has_the_link_alone() -> None:
    turns = Turns()
    order: list[str] = []
    settled = asyncio.Event()

    async def settle() -> None:
        async with turns.sharing():
            order.append("settle begins")
            await settled.wait()
            order.append("settle ends")

    async def receive() -> None:
        async with turns.receiving():
            order.append("receive")

    settling = asyncio.ensure_future(settle())
    await settle_soon()
    receiving = asyncio.ensure_future(receive())
    await settle_soon()
    assert order == ["settle begins"]
    settled.set()
    await asyncio.gather(settling, receiving)
    assert order == ["settle begins", "settle ends", "receive"]


async def test_settlements_wait_while_a_receive_is_on_the_wire() -> None:
    turns = Turns()
    order: list[str] = []
    received = asyncio.Event()

    async def receive() -> None:
        async with turns.receiving():
            order.append("receive begins")
            await received.wait()
            order.append("receive ends")

    async def settle() -> None:
        async with turns.sharing():
            order.append("settle")

    receiving = asyncio.ensure_future(receive())
    await settle_soon()
    settling = asyncio.ensure_future(settle())
    await settle_soon()
    assert order == ["receive begins"]
    received.set()
    await asyncio.gather(receiving, settling)
    assert order == ["receive begins", "receive ends", "settle"]


async def test_a_waiting_receive_is_not_starved_by_a_stream_of_settlements() -> None:
    turns = Turns()
    order: list[str] = []
    first_done = asyncio.Event()

    async def settle(name: str, until: asyncio.Event | None = None) -> None:
        async with turns.sharing():
            order.append(name)
            if until is not None:
                await until.wait()

    async def receive() -> None:
        async with turns.receiving():
            order.append("receive")

    first = asyncio.ensure_future(settle("first settle", first_done))
    await settle_soon()
    receiving = asyncio.ensure_future(receive())
    await settle_soon()
    late = asyncio.ensure_future(settle("late settle"))  # arrives after the receive asked
    await settle_soon()
    assert order == ["first settle"]
    first_done.set()
    await asyncio.gather(first, receiving, late)
    assert order == ["first settle", "receive", "late settle"]


async def test_a_failed_receive_gives_the_turn_back() -> None:
    turns = Turns()

    async def failing_receive() -> None:
        async with turns.receiving():
            raise ConnectionError("link detached")

    with pytest.raises(ConnectionError):
        await failing_receive()

    async def settle() -> None:
        async with turns.sharing():
            pass

    settling = asyncio.ensure_future(settle())
    await settle_soon()
    assert settling.done()  # would wait for ever if the receive had kept its turn
