"""The loop watchdog's look at a stack, and its one warning per stall, without a broker."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time

import pytest

from subscriber.watchdog import LoopWatchdog, blocked_warning, where_blocked


def helper(stop: threading.Event) -> None:
    stop.wait()  # a library call that blocks, from code of the user's


def user_handler(stop: threading.Event, ready: threading.Event) -> None:
    ready.set()
    helper(stop)


def test_the_stack_names_the_handler_and_the_line_that_blocks() -> None:
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=user_handler, args=(stop, ready))
    thread.start()
    try:
        ready.wait()
        time.sleep(0.05)  # into stop.wait()
        assert thread.ident is not None
        frame = sys._current_frames()[thread.ident]
        where = where_blocked(frame, {user_handler.__code__: "extract"})
    finally:
        stop.set()
        thread.join()
    assert where.handler == "extract"
    assert where.handler_line is not None and "in user_handler" in where.handler_line
    assert where.code_line is not None and "in helper" in where.code_line  # ours, not threading's
    assert where.innermost is not None and "threading.py" in where.innermost
    line = blocked_warning(2.0, where, "message b:d:0")
    assert "handler 'extract' (message b:d:0)" in line and "innermost: " in line


async def test_one_warning_per_stall_and_none_for_a_loop_that_turns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="subscriber.watchdog")
    watchdog = LoopWatchdog(0.4)
    watchdog.start()
    try:
        await asyncio.sleep(0.6)  # turning: nothing to say
        assert watchdog.warnings == 0
        time.sleep(1.0)  # noqa: ASYNC251 - the stall under test
        await asyncio.sleep(0.5)
        time.sleep(0.8)  # noqa: ASYNC251 - a second stall
        await asyncio.sleep(0.5)
    finally:
        watchdog.stop()
    assert watchdog.warnings == 2
    said = [r.getMessage() for r in caplog.records]
    assert sum(s.startswith("event loop blocked") for s in said) == 2
    assert sum(s.startswith("event loop ran again") for s in said) == 2
