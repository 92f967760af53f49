"""Store errors: the one place pymongo exceptions become docbus exceptions.

:class:`StoreError` (with ``transient`` saying whether trying again may help), its transient
:class:`StoreUnavailable` and :class:`PayloadError` are what every store operation raises, all
drawn from :class:`docbus.errors.DocbusError`; :func:`_translated` wraps each MongoDB call of the
store's base (:mod:`docbus.store._base`) and its concept mixins so pymongo never leaks past them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bson.errors import BSONError
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    ExecutionTimeout,
    NetworkTimeout,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WTimeoutError,
)

from docbus.errors import DocbusError


class StoreError(DocbusError):
    """A MongoDB operation failed; ``transient`` says whether trying again may help."""

    transient = False


class StoreUnavailable(StoreError):
    """MongoDB could not be reached or timed out: transient."""

    transient = True


class PayloadError(StoreError):
    """A claim-check reference points at a payload that is missing or does not match its hash."""


@contextlib.contextmanager
def _translated(operation: str) -> Iterator[None]:
    """The one place pymongo exceptions become docbus exceptions."""
    try:
        yield
    except StoreError:
        raise
    except (
        ConnectionFailure,
        AutoReconnect,
        NetworkTimeout,
        ServerSelectionTimeoutError,
        ExecutionTimeout,
        WTimeoutError,
    ) as exc:
        raise StoreUnavailable(f"{operation}: MongoDB unavailable: {exc}") from exc
    except WriteConcernError as exc:
        # The write was done but the server cannot acknowledge it as durable as asked: say
        # which setting asks, since only the operator can make the two agree.
        raise StoreError(
            f"{operation}: the server refused the durable write concern ({exc}); see "
            "DOCBUS_MONGODB__WRITE_CONCERN and DOCBUS_MONGODB__JOURNAL"
        ) from exc
    except (PyMongoError, BSONError) as exc:
        raise StoreError(f"{operation}: {exc}") from exc
