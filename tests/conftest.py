"""Fixtures every test package shares: the local stand-ins, started on free ports."""

from __future__ import annotations

from typing import Any

import pytest

pytest_plugins = ["docbus.testing"]

SHARED_STACK_MODULES = frozenset({"tests/console/test_browser.py"})
"""Modules whose tests share one module-scoped stack: under ``-n N`` each runs on one worker."""


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown without it (-p no:xdist)
def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """``-n N`` as xdist's ``load`` spreads tests (one by one, as they finish), except that the
    tests of a :data:`SHARED_STACK_MODULES` module stay together on one worker, which then
    starts that module's stack once instead of every worker starting its own. (xdist's own
    ``xdist_group``/``loadgroup`` does not group under pytest 9: the id suffix it relies on is
    no longer the test's id.)"""
    if config.getvalue("dist") != "load":
        return None  # --dist given explicitly: xdist's own choice
    from xdist.scheduler import LoadScopeScheduling

    class SharedStackScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED_STACK_MODULES else nodeid

    return SharedStackScheduling(config, log)
