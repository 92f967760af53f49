"""Admission (credits, handler slots, completing places) and the circuit breaker, with no broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from subscriber.admission import AHEAD_SECONDS, Admission, Pace, Ticket
from subscriber.breaker import CircuitBreaker


async def settle_loop() -> None:
    """Let every task that can run, run (a few rounds of the event loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_credits_cover_the_slots_and_the_messages_received_ahead() -> None:
    admission = Admission(concurrency=2, ahead=1, stopping=asyncio.Event())
    assert await admission.take_credits() == 3  # one receive asks for all of them
    more = asyncio.create_task(admission.take_credits())
    await settle_loop()
    assert not more.done()  # all three taken: the next receive waits
    admission.release_credits(2)  # a receive brought one message of three
    assert await more == 2


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_messages_received_ahead_follow_the_pace_of_the_handlers() -> None:
    clock = Clock()
    admission = Admission(
        concurrency=4, ahead=1, stopping=asyncio.Event(), most_ahead=100, pace=Pace(clock=clock)
    )
    assert admission.ahead == 1  # no pace known yet: the least
    # fast handlers, 2,000 a second: a receive brings what they get through in AHEAD_SECONDS
    for _ in range(1000):
        clock.now += 0.0005
        admission.pace.returned()
    assert admission.ahead == min(100, round(2000 * AHEAD_SECONDS))
    assert await admission.take_credits() == 4 + admission.ahead
    # slow ones (LLM calls): four every two seconds keep only the least waiting
    for _ in range(4):
        clock.now += 0.5
        admission.pace.returned()
    assert admission.ahead == 1
    admission.release_credits(4 + 100 - 2)  # two still held: three free
    assert await admission.take_credits() == 3


async def test_the_pace_of_fast_handlers_is_known_within_a_tenth_of_a_second() -> None:
    clock = Clock()
    admission = Admission(
        concurrency=16, ahead=2, stopping=asyncio.Event(), most_ahead=100, pace=Pace(clock=clock)
    )
    for _ in range(220):  # 2,000 a second, for 0.11 s
        clock.now += 0.0005
        admission.pace.returned()
    assert admission.ahead == 100
    assert await admission.take_credits() == 116


async def test_a_receive_never_asks_for_more_than_most() -> None:
    admission = Admission(concurrency=4, ahead=0, stopping=asyncio.Event())
    assert await admission.take_credits(most=1) == 1
    assert await admission.take_credits(most=2) == 2


async def test_stopping_ends_a_wait_for_credits_with_none() -> None:
    stopping = asyncio.Event()
    admission = Admission(concurrency=1, ahead=0, stopping=stopping)
    assert await admission.take_credits() == 1
    waiting = asyncio.create_task(admission.take_credits())
    await settle_loop()
    stopping.set()
    assert await waiting == 0
    admission.release_credits(1)
    stopping.clear()
    assert await admission.take_credits() == 1  # the credit was not lost to the cancelled wait


async def never_given_back() -> None:
    raise AssertionError("a message that got its slot was given back")


async def test_a_handler_that_returns_hands_its_slot_to_the_next_message() -> None:
    admission = Admission(concurrency=1, ahead=1, stopping=asyncio.Event())
    assert await admission.take_credits() == 2
    first, second = admission.ticket(), admission.ticket()
    assert await admission.wait_for_slot(first, never_given_back)
    waiting = asyncio.create_task(admission.wait_for_slot(second, never_given_back))
    await settle_loop()
    assert not waiting.done()  # one slot, held by the first handler
    await first.handler_returned()  # its result is still being stored: it holds no slot
    assert (first.slot, first.credit, first.completing) == (False, False, True)
    assert await waiting
    assert second.slot
    # the first one's credit went back with its slot: a receive gets one at once
    assert await admission.take_credits() == 1


async def test_at_most_two_receives_worth_of_messages_complete_at_once() -> None:
    """One receive's worth being stored while the next is received and completed: with room
    for one only, a receive waited for the store and asked for a third of what it could."""
    admission = Admission(concurrency=1, ahead=1, stopping=asyncio.Event())
    tickets = [admission.ticket() for _ in range(5)]
    for received in (tickets[:2], tickets[2:4]):  # two receives of two; handlers return at once
        assert await admission.take_credits() == 2
        for ticket in received:
            assert await admission.wait_for_slot(ticket, never_given_back)
            await ticket.handler_returned()
    assert await admission.take_credits() == 2  # all four completing hold no credit
    fifth = tickets[4]
    assert await admission.wait_for_slot(fifth, never_given_back)
    returned = asyncio.create_task(fifth.handler_returned())
    await settle_loop()
    assert not returned.done()  # the first four still complete
    assert fifth.slot  # and the fifth keeps its slot meanwhile
    tickets[0].release()
    await returned
    for ticket in tickets[1:]:
        ticket.release()
        assert (ticket.slot, ticket.credit, ticket.completing) == (False, False, False)


async def test_release_gives_back_what_a_message_still_holds_once() -> None:
    admission = Admission(concurrency=1, ahead=0, stopping=asyncio.Event())
    await admission.take_credits()
    ticket = admission.ticket()
    assert await admission.wait_for_slot(ticket, never_given_back)
    ticket.release()
    ticket.release()  # a second release gives nothing back twice
    assert await admission.take_credits() == 1
    assert await admission.wait_for_slot(admission.ticket(), never_given_back)
    assert admission._slots.locked() and admission.free_credits == 0


async def test_stop_gives_back_the_messages_waiting_for_a_slot() -> None:
    admission = Admission(concurrency=1, ahead=2, stopping=asyncio.Event())
    assert await admission.take_credits(most=3) == 3
    running = admission.ticket()
    assert await admission.wait_for_slot(running, never_given_back)
    given_back: list[str] = []

    def giving_back(name: str) -> Callable[[], Awaitable[None]]:
        async def give_back() -> None:
            given_back.append(name)

        return give_back

    waiting = asyncio.create_task(admission.wait_for_slot(admission.ticket(), giving_back("a")))
    await settle_loop()
    admission.give_back_waiting()
    assert await waiting is False
    assert await admission.wait_for_slot(Ticket(admission), giving_back("b")) is False
    assert given_back == ["a", "b"]
    assert running.slot  # the handler that runs keeps its slot


async def test_a_cancellation_that_is_not_stops_still_cancels_after_giving_back() -> None:
    admission = Admission(concurrency=1, ahead=1, stopping=asyncio.Event())
    assert await admission.take_credits() == 2
    assert await admission.wait_for_slot(admission.ticket(), never_given_back)
    given_back = asyncio.Event()

    async def give_back() -> None:
        given_back.set()

    waiting = asyncio.create_task(admission.wait_for_slot(admission.ticket(), give_back))
    await settle_loop()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled() and given_back.is_set()


async def test_a_breaker_without_an_llm_to_probe_stops_the_worker() -> None:
    stopped: list[bool] = []

    async def recovered() -> None:
        raise AssertionError("nothing to recover without an LLM")

    breaker = CircuitBreaker(
        None,
        probe_interval=0.01,
        stopping=asyncio.Event(),
        stop=lambda: stopped.append(True),
        recovered=recovered,
    )
    assert not breaker.is_open
    breaker.open()
    assert stopped == [True]
    assert not breaker.is_open  # nothing to wait for: the worker stops instead
    assert breaker.llm_works is False
    assert await breaker.probe() is False
    await breaker.wait_closed()  # returns at once
