"""AMQP decimal128: a correct decoder for the azure-servicebus SDK, which cannot read its own.

The SDK encodes a ``decimal.Decimal`` application property as AMQP ``decimal128`` (IEEE 754-2008,
binary integer decimal) correctly, but its decoder (``_pyamqp._decode._decode_decimal128``,
azure-servicebus 7.15) reads the exponent from the wrong bits and raises for every ordinary
value. The SDK then drops the whole received message without a word: no worker ever sees it,
its lock expires delivery after delivery until the broker dead-letters it, and dead-letter
capture cannot read it either — a message silently stranded by one property. On Azure just as
on the emulator: it is the receiving client that fails.

:func:`install` puts :func:`decode_decimal128` into the SDK's decoder table (the one table the
pure-Python AMQP stack dispatches on by constructor byte), once per process;
:mod:`docbus.servicebus`, the one seam to the SDK, calls it at import.
"""

from __future__ import annotations

import decimal
from typing import Any

__all__ = ["decode_decimal128", "install"]

_WIDTH = 16
_BIAS = 6176
_MAX_COEFFICIENT = 10**34 - 1
_CONSTRUCTOR = 0x94
_CONTEXT = decimal.Context(prec=34, Emin=-6143, Emax=6144, clamp=1)


def decode_decimal128(buffer: memoryview, _depth: int = 0) -> tuple[memoryview, decimal.Decimal]:
    """Read one decimal128 (the 16 bytes after its constructor); returns (rest, value).

    The signature is the SDK's decoder signature. Non-canonical coefficients (larger than 34
    digits) read as zero, as IEEE 754 says.
    """
    if len(buffer) < _WIDTH:
        raise ValueError("AMQP decimal128 needs 16 bytes")
    bits = int.from_bytes(bytes(buffer[:_WIDTH]), "big")
    sign = bits >> 127
    combination = (bits >> 122) & 0x1F
    if combination == 0x1F:
        value = decimal.Decimal("-NaN" if sign else "NaN")
    elif combination == 0x1E:
        value = decimal.Decimal("-Infinity" if sign else "Infinity")
    else:
        if (bits >> 125) & 0b11 == 0b11:  # large-coefficient form: always non-canonical here
            exponent = (bits >> 111) & 0x3FFF
            coefficient = 0
        else:
            exponent = (bits >> 113) & 0x3FFF
            coefficient = bits & ((1 << 113) - 1)
            if coefficient > _MAX_COEFFICIENT:
                coefficient = 0
        digits = tuple(int(d) for d in str(coefficient))
        value = _CONTEXT.create_decimal((sign, digits, exponent - _BIAS))
    return buffer[_WIDTH:], value


_installed = False


def install() -> None:
    """Make the SDK decode decimal128 with :func:`decode_decimal128` (idempotent)."""
    global _installed
    if _installed:
        return
    from azure.servicebus._pyamqp import _decode

    table: Any = _decode._DECODE_BY_CONSTRUCTOR
    table[_CONSTRUCTOR] = decode_decimal128
    _installed = True
