"""Service Bus sessions through the real SDK: FIFO per session, locks, state, listing."""

from __future__ import annotations

import time

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from docbus.local.emulator.server import EmulatorThread


def send(client: ServiceBusClient, queue: str, *pairs: tuple[str, str]) -> None:
    with client.get_queue_sender(queue) as sender:
        for session_id, body in pairs:
            sender.send_messages(ServiceBusMessage(body, session_id=session_id))


def test_send_without_session_id_to_a_session_queue_is_refused(client: ServiceBusClient) -> None:
    with client.get_queue_sender("sq") as sender, pytest.raises(ServiceBusError):
        sender.send_messages(ServiceBusMessage("no session"))


def test_named_session_receiver_gets_only_its_session_in_order(client: ServiceBusClient) -> None:
    send(client, "sq", ("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a3"))
    with client.get_queue_receiver("sq", session_id="a") as receiver:
        assert receiver.session.session_id == "a"
        assert receiver.session.locked_until_utc is not None
        got = []
        while len(got) < 3:
            batch = receiver.receive_messages(max_message_count=3, max_wait_time=2)
            assert batch
            got += batch
        assert [str(m) for m in got] == ["a1", "a2", "a3"]
        assert all(m.session_id == "a" for m in got)
        for m in got:
            receiver.complete_message(m)
        assert receiver.receive_messages(max_message_count=1, max_wait_time=0.3) == []


def test_next_available_session_picks_one_with_messages(client: ServiceBusClient) -> None:
    send(client, "sq", ("only", "x"))
    with client.get_queue_receiver(
        "sq", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=3
    ) as receiver:
        assert receiver.session.session_id == "only"
        (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        receiver.complete_message(m)


def test_next_available_with_no_sessions_times_out(emulator: EmulatorThread) -> None:
    cs = emulator.connection_string
    with ServiceBusClient.from_connection_string(cs, retry_total=0) as client:
        started = time.monotonic()
        with pytest.raises(OperationTimeoutError):
            with client.get_queue_receiver(
                "sq", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1
            ):
                pass
        assert time.monotonic() - started < 4


def test_a_held_session_cannot_be_locked_twice_and_frees_on_close(
    emulator: EmulatorThread,
) -> None:
    with ServiceBusClient.from_connection_string(
        emulator.connection_string, retry_total=0
    ) as client:
        send(client, "sq", ("s", "1"))
        with client.get_queue_receiver("sq", session_id="s") as holder:
            assert holder.session.session_id == "s"
            with pytest.raises(SessionCannotBeLockedError):
                with client.get_queue_receiver("sq", session_id="s") as second:
                    second.receive_messages(max_message_count=1, max_wait_time=1)
        with client.get_queue_receiver("sq", session_id="s") as again:
            (m,) = again.receive_messages(max_message_count=1, max_wait_time=2)
            again.complete_message(m)


def test_session_state_and_lock_renewal(client: ServiceBusClient) -> None:
    send(client, "sq", ("st", "1"))
    with client.get_queue_receiver("sq", session_id="st") as receiver:
        assert receiver.session.get_state() is None
        receiver.session.set_state(b"checkpoint-3")
        assert receiver.session.get_state() == b"checkpoint-3"
        before = receiver.session.locked_until_utc
        time.sleep(0.05)
        after = receiver.session.renew_lock()
        assert after > before
    with client.get_queue_receiver("sq", session_id="st") as receiver:
        assert receiver.session.get_state() == b"checkpoint-3"


def test_session_lock_expiry_is_reported_as_lost(client: ServiceBusClient) -> None:
    send(client, "sq-lock", ("exp", "1"))
    with client.get_queue_receiver("sq-lock", session_id="exp") as receiver:
        time.sleep(1.3)
        with pytest.raises(SessionLockLostError):
            receiver.receive_messages(max_message_count=1, max_wait_time=1)


def test_list_sessions_returns_sessions_with_messages_or_state(client: ServiceBusClient) -> None:
    send(client, "sq", ("one", "1"), ("two", "2"))
    with client.get_queue_receiver("sq", session_id="three") as receiver:
        receiver.session.set_state(b"s")
    assert sorted(client.list_queue_sessions("sq")) == ["one", "three", "two"]


def test_dead_letters_of_a_session_queue_are_received_without_a_session(
    client: ServiceBusClient,
) -> None:
    send(client, "sq", ("a", "poison"))
    with client.get_queue_receiver("sq", session_id="a") as receiver:
        (m,) = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        receiver.dead_letter_message(m, reason="Bad", error_description="unreadable")
    with client.get_queue_receiver("sq", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        (dead,) = dlq.receive_messages(max_message_count=1, max_wait_time=2)
        assert (str(dead), dead.session_id, dead.dead_letter_reason) == ("poison", "a", "Bad")
        dlq.complete_message(dead)
