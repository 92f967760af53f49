"""Broker errors of the Service Bus emulator.

Every error the broker raises carries the AMQP error condition that the azure-servicebus SDK maps
to its own exception (``amqp:not-found`` becomes ``MessagingEntityNotFoundError``,
``com.microsoft:message-lock-lost`` becomes ``MessageLockLostError`` and so on). The AMQP layer
(:mod:`docbus.local.emulator.connection`) turns them into rejected dispositions, detach errors or
``$management`` status codes; the broker (:mod:`docbus.local.emulator.broker`) only raises them.
"""

from __future__ import annotations


class BrokerError(Exception):
    """A failure with an AMQP error condition and a management status code."""

    condition = "amqp:internal-error"
    status_code = 500

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class EntityNotFound(BrokerError):
    condition = "amqp:not-found"
    status_code = 404


class MessageLockLost(BrokerError):
    condition = "com.microsoft:message-lock-lost"
    status_code = 410


class SessionLockLost(BrokerError):
    condition = "com.microsoft:session-lock-lost"
    status_code = 410


class SessionCannotBeLocked(BrokerError):
    condition = "com.microsoft:session-cannot-be-locked"
    status_code = 409


class MessageNotFound(BrokerError):
    condition = "com.microsoft:message-not-found"
    status_code = 404


class QuotaExceeded(BrokerError):
    condition = "amqp:resource-limit-exceeded"
    status_code = 403


class MessageSizeExceeded(BrokerError):
    condition = "amqp:link:message-size-exceeded"
    status_code = 413


class NotAllowed(BrokerError):
    condition = "amqp:not-allowed"
    status_code = 400


class NotImplementedOperation(BrokerError):
    condition = "amqp:not-implemented"
    status_code = 501


class ArgumentError(BrokerError):
    condition = "com.microsoft:argument-error"
    status_code = 400


class OperationTimeout(BrokerError):
    condition = "com.microsoft:timeout"
    status_code = 408


class Unauthorized(BrokerError):
    condition = "amqp:unauthorized-access"
    status_code = 401
