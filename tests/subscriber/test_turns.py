"""Turns on one receiver: receives alone, settlements together, neither starving the other."""

from __future__ import annotations

import asyncio

import pytest

from subscriber.turns import Turns


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
