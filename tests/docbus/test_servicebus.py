from __future__ import annotations

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusServerBusyError,
)

from docbus.envelope import Envelope
from docbus.servicebus import (
    MessageLockLost,
    MessageNotFound,
    MessageTooLarge,
    MessagingAuthError,
    MessagingEntityNotFound,
    MessagingError,
    MessagingUnavailable,
    build_message,
    encoded_batch_size,
    fits_in_message,
    message_size_bound,
    sized_message,
    translate_error,
    translated,
)


def make_envelope(text: str = "hello", **fields: object) -> Envelope:
    return Envelope(doc_id="d1", batch_id="b1", topic="documents", content=text, **fields)  # type: ignore[arg-type]


def test_build_message_carries_the_envelope_and_its_routing() -> None:
    envelope = make_envelope(session_id="s-7", target_subscription="entities", generation=2)
    message = build_message(envelope)
    assert b"".join(message.body) == envelope.to_bytes()
    assert message.message_id == envelope.message_id == "b1:d1:2"
    assert message.content_type == "application/json"
    assert message.subject == "documents"
    assert message.session_id == "s-7"
    assert message.application_properties is not None
    props = {
        (k.decode() if isinstance(k, bytes) else k): v
        for k, v in message.application_properties.items()
    }
    assert props["docbus-route"] == "entities"
    assert props["batch_id"] == "b1"
    assert props["generation"] == 2 and "attempt" not in props


def test_fits_in_message_uses_the_sdk_size_accounting() -> None:
    assert fits_in_message(build_message(make_envelope("x" * 1000)), 4096)
    assert not fits_in_message(build_message(make_envelope("x" * 5000)), 4096)
    small = ServiceBusMessage(b"x" * 100)
    assert fits_in_message(small, 1024)


@pytest.mark.parametrize("text_bytes", [0, 1, 200, 255, 256, 1000, 65_535, 65_536, 300_000])
@pytest.mark.parametrize("session", [None, "", "s", "s" * 128])
@pytest.mark.parametrize("doc_id", ["d", "é" * 100, "x" * 300, "\U0001f600" * 70])
def test_the_size_bound_is_never_below_the_sdk_count_and_close_to_it(
    text_bytes: int, session: str | None, doc_id: str
) -> None:
    envelope = Envelope(
        doc_id=doc_id, batch_id="b" * 64, topic="t" * 50, content="x" * text_bytes,
        session_id=session, metadata={"k": "v" * 300},
    )  # fmt: skip
    message = build_message(envelope)
    exact = encoded_batch_size(message)
    assert exact <= message_size_bound(message) <= exact + 200
    # the publisher's bound, from the parts the message is built of, is the same bound
    sized, bound = sized_message(envelope)
    assert bound == message_size_bound(sized) == message_size_bound(message)
    assert encoded_batch_size(sized) == exact


def test_a_message_of_exactly_the_limit_fits_and_one_byte_less_does_not() -> None:
    for text in ("x" * 10, "x" * 5000, "x" * 250_000):
        message = build_message(make_envelope(text))
        size = encoded_batch_size(message)
        assert fits_in_message(message, size)
        assert not fits_in_message(message, size - 1)
        assert fits_in_message(message, message_size_bound(message))


@pytest.mark.parametrize(
    ("azure_error", "ours", "transient"),
    [
        (ServiceBusAuthorizationError(message="no Send claim"), MessagingAuthError, False),
        (MessagingEntityNotFoundError(message="no topic"), MessagingEntityNotFound, False),
        (MessageSizeExceededError(message="too big"), MessageTooLarge, False),
        (MessageLockLostError(message="lock"), MessageLockLost, False),
        (ServiceBusConnectionError(message="reset"), MessagingUnavailable, True),
        (OperationTimeoutError(message="slow"), MessagingUnavailable, True),
        (ServiceBusServerBusyError(message="busy"), MessagingUnavailable, True),
        (MessageNotFoundError(message="no deferred message 7"), MessageNotFound, False),
        (ServiceBusError("other"), MessagingError, False),
        # the SDK says a link it has shut down (after a broker restart) is gone with ValueError
        (
            ValueError(
                "Failed to complete the message as the handler has already been shutdown."
                "Please use ServiceBusClient to create a new instance."
            ),
            MessagingUnavailable,
            True,
        ),
        (MessageAlreadySettled(action="complete"), MessagingError, False),
    ],
)
def test_azure_errors_are_translated_in_one_place(
    azure_error: Exception, ours: type[MessagingError], transient: bool
) -> None:
    translated_error = translate_error(azure_error, "send")
    assert type(translated_error) is ours
    assert translated_error.transient is transient
    assert str(translated_error).startswith("send: ")
    with pytest.raises(ours) as caught, translated("send"):
        raise azure_error
    assert caught.value.__cause__ is azure_error


def test_a_value_error_of_our_own_making_is_not_taken_for_a_broker_failure() -> None:
    # The SDK's ValueErrors for wrong arguments are bugs to see, not outages to wait out.
    with pytest.raises(ValueError, match="must be greater than 0"), translated("receive"):
        raise ValueError("The max_wait_time must be greater than 0.")
