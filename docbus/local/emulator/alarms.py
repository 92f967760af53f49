"""Alarms: loop timers set for epoch deadlines of the broker's injectable clock.

The broker (:mod:`docbus.local.emulator.entity`, :mod:`docbus.local.emulator.sessions`,
:mod:`docbus.local.emulator.broker`) keeps each kind of deadline (lock expiry, TTL, scheduled time,
session lock) in a heap and watches the heap with one :class:`Alarm`, rather than one loop timer
per message. Deadlines are epoch seconds of the clock the broker was given; the delay is computed
from that clock and the callback re-checks the clock, so a wall clock that disagrees a little with
the loop's monotonic clock costs one re-arm, not a wrong decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

__all__ = ["SLACK", "TOLERANCE", "Alarm", "running_loop"]

# Alarms fire this much after the deadline so that one wake-up handles every deadline of the
# next few milliseconds (at 1,000 locks/s that is ~100 wake-ups/s, not 1,000). Settlement checks
# deadlines exactly, so the slack only delays redelivery.
SLACK = 0.01
# Deadlines this close are treated as due when an alarm fires (clock disagreement).
TOLERANCE = 0.001


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Alarm:
    """One loop timer firing ``callback`` at (just after) the earliest epoch time asked for.

    Without a running loop (an entity built or restored outside asyncio) the request is kept and
    armed by :meth:`ensure` on the next operation inside a loop; a request from another loop than
    the one holding the timer moves the timer there.
    """

    __slots__ = ("_callback", "_clock", "_handle", "_loop", "_pending", "_when")

    def __init__(self, clock: Callable[[], float], callback: Callable[[], None]) -> None:
        self._clock = clock
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._when: float | None = None
        self._pending: float | None = None

    def at(self, when: float) -> None:
        """Fire at ``when`` unless already set to fire earlier."""
        loop = running_loop()
        if loop is None:
            self._pending = when if self._pending is None else min(self._pending, when)
            return
        if self._handle is not None and self._loop is loop:
            if self._when is not None and self._when <= when:
                return
            self._handle.cancel()
        self._loop, self._when = loop, when
        self._handle = loop.call_later(max(0.0, when - self._clock()) + SLACK, self._fire)

    def ensure(self) -> None:
        """Arm a request made while no loop was running."""
        if self._pending is not None and running_loop() is not None:
            when, self._pending = self._pending, None
            self.at(when)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop = self._when = self._pending = None

    def _fire(self) -> None:
        self._handle = self._loop = self._when = None
        try:
            self._callback()
        except Exception:
            logger.exception("alarm callback failed")
