"""Link credit arithmetic of the emulator's outgoing links, frame by frame (no SDK)."""

from __future__ import annotations

from typing import Any

import pytest

from docbus.local.emulator import frames as fr
from docbus.local.emulator.codec import Described
from docbus.local.emulator.frames import F, parse_frame_body
from docbus.local.emulator.links import AmqpSession, OutgoingLink


class Wire:
    """A stand-in connection that encodes what a session sends, as the real one does."""

    max_payload = 64 * 1024

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(
        self, channel: int, body: Described, payload: bytes = b"", frame_type: int = 0
    ) -> None:
        self.frames.append(fr.encode_frame(channel, body, payload, frame_type))


def flow(*, delivery_count: int, link_credit: int, drain: bool = False) -> list[Any]:
    fields: list[Any] = [None] * 10
    fields[F.FLOW_HANDLE] = 0
    fields[F.FLOW_DELIVERY_COUNT] = delivery_count
    fields[F.FLOW_LINK_CREDIT] = link_credit
    fields[F.FLOW_DRAIN] = drain
    return fields


def receiver_link(wire: Wire, delivery_count: int) -> OutgoingLink:
    attach: list[Any] = [None] * 14
    attach[F.ATTACH_NAME] = "receiver"
    attach[F.ATTACH_HANDLE] = 0
    link = OutgoingLink(AmqpSession(wire, 0, [None, 0, 100, 100]), attach)  # type: ignore[arg-type]
    link.delivery_count = delivery_count
    return link


def sent_flow(wire: Wire) -> list[Any]:
    raw = wire.frames[-1]
    frame = parse_frame_body(raw[5], int.from_bytes(raw[6:8], "big"), memoryview(raw)[8:])
    assert frame.code == fr.FLOW
    return frame.fields


@pytest.mark.parametrize(
    ("sent", "counted", "granted", "credit"),
    [
        (10, 10, 5, 5),  # the client saw every delivery
        (10, 8, 5, 3),  # two transfers were on the wire when it wrote the flow
        (10, 7, 2, 0),  # it granted less than what was on the wire: no credit, not -1
        (2, 2**32 - 1, 4, 1),  # the 32-bit delivery count wrapped in between
    ],
)
def test_credit_is_what_the_client_granted_minus_what_it_had_not_yet_counted(
    sent: int, counted: int, granted: int, credit: int
) -> None:
    link = receiver_link(Wire(), delivery_count=sent)
    link.on_flow(flow(delivery_count=counted, link_credit=granted))
    assert link.link_credit == credit


def test_a_drain_over_spent_credit_answers_with_zero_credit() -> None:
    wire = Wire()
    link = receiver_link(wire, delivery_count=10)
    link.on_flow(flow(delivery_count=7, link_credit=2, drain=True))
    answer = sent_flow(wire)
    assert (answer[F.FLOW_DELIVERY_COUNT], answer[F.FLOW_LINK_CREDIT], answer[F.FLOW_DRAIN]) == (
        10,
        0,
        True,
    )


def test_replies_sent_without_credit_never_advertise_negative_credit() -> None:
    wire = Wire()
    link = receiver_link(wire, delivery_count=0)
    link.send_settled(b"\x00Sw\xa1\x02ok")  # a management reply on a link given no credit
    link.session.send_link_flow(link)
    assert sent_flow(wire)[F.FLOW_LINK_CREDIT] == 0
