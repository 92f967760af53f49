"""The loop watchdog: say so, once, when something blocks the worker's event loop.

Every handler of a worker shares one event loop. A handler that blocks it — ``time.sleep``,
``requests.get``, a long CPU-bound loop inside ``async def`` — stops everything else: no lock is
renewed (so locks are lost and the broker redelivers, then dead-letters, messages that are being
worked on), no other handler's LLM answer is read, no message is settled. :class:`LoopWatchdog`
keeps a heartbeat on the loop and a thread beside it; when the heartbeat is older than the
threshold, the thread looks at the loop thread's stack (``sys._current_frames``) and logs one
WARNING naming the handler, the message it works on and the file:line where the loop stands
still, with what to do about it; when the loop turns again, one INFO line says for how long it
stood. :func:`where_blocked` is that look at a stack, a plain function. Neighbour:
:mod:`subscriber.worker` starts one watchdog per worker (``blocked_loop_warning``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import CodeType, FrameType

__all__ = ["Blocked", "LoopWatchdog", "blocked_warning", "where_blocked"]

logger = logging.getLogger(__name__)

_LIBRARY_DIRS = tuple(
    os.path.normcase(os.path.realpath(path)) + os.sep
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (path := sysconfig.get_paths().get(key))
)


@dataclass(frozen=True)
class Blocked:
    """Where a stack stands: the handler it is in (if any) and the lines that matter."""

    handler: str | None
    """The handler whose frame is on the stack (the innermost one, if several)."""
    handler_line: str | None
    """``file:line in function`` of that handler's frame."""
    code_line: str | None
    """The innermost frame of code that is not the standard library's or an installed
    package's: usually the line that blocks, or the call into the library that does."""
    innermost: str | None
    """The innermost frame of all."""


def _line(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"


def _is_library(filename: str) -> bool:
    return os.path.normcase(os.path.realpath(filename)).startswith(_LIBRARY_DIRS)


def where_blocked(frame: FrameType | None, handlers: Mapping[CodeType, str]) -> Blocked:
    """Read a stack from its innermost ``frame`` outwards; ``handlers`` names the handler
    functions by their code objects."""
    handler = handler_line = code_line = innermost = None
    while frame is not None:
        if innermost is None:
            innermost = _line(frame)
        if code_line is None and not _is_library(frame.f_code.co_filename):
            code_line = _line(frame)
        name = handlers.get(frame.f_code)
        if name is not None:
            handler, handler_line = name, _line(frame)
            break
        frame = frame.f_back
    return Blocked(handler, handler_line, code_line, innermost)


def blocked_warning(seconds: float, where: Blocked, task: str | None) -> str:
    """The one line said when the loop has stood still for ``seconds``."""
    who = f"handler {where.handler!r}" if where.handler else "code"
    if task:
        who += f" ({task})"
    at = where.handler_line or where.code_line or where.innermost or "an unknown place"
    inner = where.code_line if where.code_line not in (None, at) else where.innermost
    detail = f" (innermost: {inner})" if inner and inner != at else ""
    return (
        f"event loop blocked for {seconds:.1f}s by {who} at {at}{detail}: while it is blocked "
        "no message lock is renewed (locks are lost, messages redelivered) and no other handler "
        "runs. Do not call blocking code in an async handler: wrap it in "
        "'await asyncio.to_thread(...)' or use an async library"
    )


class LoopWatchdog:
    """Warns once per stall when the running loop has not turned for ``threshold`` seconds.

    ``handlers`` names handler functions by code object; ``task_label`` turns the task the
    loop was running into a few words (the worker's tasks name their message), or None.
    ``start()`` and ``stop()`` are called on the loop it watches.
    """

    def __init__(
        self,
        threshold: float,
        handlers: Mapping[CodeType, str] | None = None,
        *,
        task_label: Callable[[asyncio.Task[object] | None], str | None] | None = None,
    ) -> None:
        if threshold <= 0:
            raise ValueError(f"threshold must be more than 0 seconds, not {threshold}")
        self.threshold = threshold
        self.handlers = dict(handlers or {})
        self.task_label = task_label or _task_name
        self.interval = threshold / 4
        self.warnings = 0
        """Stalls warned about so far."""
        self._beat = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        self._tick()
        self._thread = threading.Thread(
            target=self._watch, name="docbus-loop-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._thread is not None:
            self._thread.join(timeout=self.interval * 4)
            self._thread = None

    def _tick(self) -> None:
        self._beat = time.monotonic()
        assert self._loop is not None
        self._timer = self._loop.call_later(self.interval, self._tick)

    def _watch(self) -> None:
        warned_at: float | None = None  # the heartbeat of the stall warned about
        while not self._stop.wait(self.interval):
            beat = self._beat
            stood = time.monotonic() - beat
            if warned_at is not None and beat != warned_at:
                logger.info("event loop ran again after %.1fs", time.monotonic() - warned_at)
                warned_at = None
            if warned_at is None and stood >= self.threshold:
                warned_at = beat
                self.warnings += 1
                try:
                    message = self._describe(stood)
                except Exception as exc:  # never let a look at a stack kill the watchdog
                    message = f"event loop blocked for {stood:.1f}s ({exc})"
                logger.warning(message)

    def _describe(self, stood: float) -> str:
        frame = sys._current_frames().get(self._loop_thread or 0)
        where = where_blocked(frame, self.handlers)
        task = asyncio.current_task(self._loop) if self._loop is not None else None
        return blocked_warning(stood, where, self.task_label(task))


def _task_name(task: asyncio.Task[object] | None) -> str | None:
    return task.get_name() if task is not None else None
