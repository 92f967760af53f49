"""Test diagnostics: when a bounded wait runs out, say what every task was doing.

A worker that does not exit within a test's bound is a liveness bug; a bare ``TimeoutError``
says nothing about where it waited. :func:`finish_within` fails with the stack of every task
still running, so a rare hang seen once under load can be read from the test report.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


def task_stacks() -> str:
    """The stack of every unfinished task of the running loop, one after another."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        if task is asyncio.current_task() or task.done():
            continue
        out.write(f"--- {task.get_name()}\n")
        task.print_stack(limit=12, file=out)
    return out.getvalue()


async def finish_within(awaitable: Awaitable[T], seconds: float) -> T:
    """``awaitable``'s result, or an AssertionError naming what every task waits on once
    ``seconds`` have passed (the awaitable is then cancelled)."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        return task.result()
    stacks = task_stacks()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise AssertionError(f"not finished within {seconds}s; tasks still running:\n{stacks}")
