"""Fixtures every test package shares: the local stand-ins, started on free ports."""

from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["docbus.testing"]


@pytest.hookimpl(optionalhook=True)  # a run without xdist (-p no:xdist) knows no such hook
def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """Spread tests over the workers one by one, as ``-n`` does by default, except that the
    tests of one ``xdist_group`` stay on one worker: a module that shares one expensive stack
    among its tests (tests/console) then starts it once, not once per worker."""
    from xdist.scheduler import LoadGroupScheduling

    return LoadGroupScheduling(config, log)
