"""Each package's public names are exactly its ``__all__``, sorted; layering rules hold."""

from __future__ import annotations

import importlib
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def packages() -> list[str]:
    """Every package of the distribution: each directory holding an ``__init__.py``."""
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("docbus", "publisher", "subscriber", "handlers")
        for init in (ROOT / top).rglob("__init__.py")
    }
    # handlers.runtime is a module, and a surface of its own: the worker's side of handlers.
    return sorted(found | {"handlers.runtime"})


def test_every_package_is_covered() -> None:
    # A package added later is covered without editing this file; this pins that the discovery
    # sees the ones that exist today.
    assert {"docbus.cli", "docbus.ops", "docbus.store", "handlers.llm", "subscriber"} <= set(
        packages()
    )


@pytest.mark.parametrize("package", packages())
def test_public_names_are_all_and_sorted(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__doc__, f"{package} has no docstring"
    exported = list(module.__all__)
    assert exported == sorted(exported, key=isort_key)
    for name in exported:
        assert getattr(module, name) is not None, name
    public = {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(getattr(module, name), types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
    }
    assert public == set(exported)


MY_DOCBUS_MODULES = [
    "envelope",
    "errors",
    "records",
    "servicebus",
    "settings",
    "store",
    "testing",
]


@pytest.mark.parametrize("name", MY_DOCBUS_MODULES)
def test_core_modules_have_sorted_all(name: str) -> None:
    module = importlib.import_module(f"docbus.{name}")
    assert list(module.__all__) == sorted(module.__all__, key=isort_key)
    for exported in module.__all__:
        assert hasattr(module, exported)


COMPOSITION_ROOT = ROOT / "docbus" / "cli"


def test_docbus_never_imports_secantus_nor_the_outer_packages() -> None:
    pattern = re.compile(
        r"^\s*(from|import)\s+(secantus|publisher|subscriber|handlers)\b", re.MULTILINE
    )
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "docbus").rglob("*.py")
        # The CLI (every command, the demo among them) is the composition root: it wires the
        # outer packages, and `docbus` imports a command's module only when it runs. So is the
        # console, an edge like the CLI (it replays through the publisher).
        if not path.is_relative_to(COMPOSITION_ROOT)
        and not path.is_relative_to(ROOT / "docbus" / "console")
        and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_handlers_never_import_the_subscriber() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+subscriber\b", re.MULTILINE)
    assert not any(
        pattern.search(path.read_text(encoding="utf-8"))
        for path in (ROOT / "handlers").rglob("*.py")
    )
