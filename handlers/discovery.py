"""Discovery: find the ``@handler`` functions a worker is told to run.

``docbus worker --handlers MODULE`` names a module (``pkg.mod``, looked up on the import path and
then in the working directory) or a file (``path/to/file.py``);
:func:`discover_handlers` imports it and returns every function carrying a
:class:`~handlers.decorator.HandlerSpec`, in definition order, checked for clashes (two handlers
with one name, or on one subscription). Handlers imported into the module count too, so a module
can assemble handlers from elsewhere. There is no global registry: importing a module registers
nothing by itself.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from docbus.errors import DocbusError
from handlers.decorator import HandlerFunction, HandlerSpec, handler_spec

__all__ = ["HandlerDiscoveryError", "RegisteredHandler", "check_clashes", "discover_handlers"]


class HandlerDiscoveryError(DocbusError):
    """The handlers could not be found, imported, or they clash."""


@dataclass(frozen=True, slots=True)
class RegisteredHandler:
    """A handler function together with its spec."""

    spec: HandlerSpec
    fn: HandlerFunction

    @property
    def name(self) -> str:
        return self.spec.name


def discover_handlers(
    source: ModuleType | str | os.PathLike[str] | Iterable[HandlerFunction],
    *more: ModuleType | str | os.PathLike[str] | Iterable[HandlerFunction],
) -> list[RegisteredHandler]:
    """The handlers in a module, a module name, a ``.py`` file, or an iterable of functions;
    several sources are taken together (a function found in two of them counts once) and
    must not clash (:func:`check_clashes`)."""
    found: list[RegisteredHandler] = []
    seen: set[int] = set()
    for one in (source, *more):
        for registered in _discover(one):
            if id(registered.fn) not in seen:
                seen.add(id(registered.fn))
                found.append(registered)
    check_clashes(found)
    return found


def _discover(
    source: ModuleType | str | os.PathLike[str] | Iterable[HandlerFunction],
) -> list[RegisteredHandler]:
    if isinstance(source, ModuleType):
        candidates: Iterable[Any] = vars(source).values()
        where = source.__name__
    elif isinstance(source, str | os.PathLike):
        module = _import(source)
        # what the user gave (a .py path), not the private name the file was imported under
        candidates, where = vars(module).values(), os.fspath(source)
    else:
        candidates, where = list(source), "the given functions"
        for fn in candidates:
            if handler_spec(fn) is None:
                raise HandlerDiscoveryError(f"{fn!r} is not decorated with @handler")
    found: list[RegisteredHandler] = []
    seen: set[int] = set()
    for value in candidates:
        spec = handler_spec(value)
        if spec is not None and id(value) not in seen:
            seen.add(id(value))
            found.append(RegisteredHandler(spec, value))
    if not found:
        raise HandlerDiscoveryError(
            f"no @handler functions in {where}: decorate the functions to run with @handler "
            "(from handlers import handler)"
        )
    return found


def _import(source: str | os.PathLike[str]) -> ModuleType:
    text = os.fspath(source)
    path = Path(text)
    if text.endswith(".py") or os.sep in text or path.is_file():
        if not path.is_file():
            raise HandlerDiscoveryError(f"handler file {text} does not exist")
        resolved = path.resolve()
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
        name = f"{FILE_MODULE_PREFIX}{resolved.stem}_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, resolved)
        if spec is None or spec.loader is None:
            raise HandlerDiscoveryError(f"cannot load {text} as a Python module")
        module = importlib.util.module_from_spec(spec)
        _search_directory(str(resolved.parent))  # its neighbours, as `python file.py` finds
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise HandlerDiscoveryError(f"importing {text} failed: {_failure(exc)}") from exc
        _FROM_FILES[resolved.stem] = name
        return module
    _search_working_directory()
    try:
        return importlib.import_module(text)
    except ImportError as exc:
        raise HandlerDiscoveryError(f"cannot import handler module {text!r}: {exc}") from exc
    except Exception as exc:  # the module itself fails as it is imported
        raise HandlerDiscoveryError(
            f"importing handler module {text!r} failed: {_failure(exc)}"
        ) from exc


FILE_MODULE_PREFIX = "docbus_handlers_"
"""A handler file given by path is imported as ``docbus_handlers_<stem>_<digest of its path>``:
its own module, whatever else is called ``<stem>`` (:func:`portable_module_name`)."""
_FILE_MODULE = re.compile(rf"^{FILE_MODULE_PREFIX}(?P<stem>.+)_[0-9a-f]{{12}}$")
_FROM_FILES: dict[str, str] = {}
"""Handler files imported by path: their stem -> the module name they were imported under."""


def portable_module_name(name: str) -> str:
    """The name a module goes by whether it was imported from its file or by its name:
    ``docbus_handlers_my_handlers_<digest>`` (``--handlers my_handlers.py``) is
    ``my_handlers`` (``--handlers my_handlers``)."""
    found = _FILE_MODULE.match(name)
    return found.group("stem") if found else name


def loaded_module(name: str) -> ModuleType:
    """The module a :func:`portable_module_name` stands for: the one loaded under that name,
    else a handler file loaded from its path, else imported by name (ImportError if none)."""
    stem = portable_module_name(name)
    module = sys.modules.get(stem) or sys.modules.get(_FROM_FILES.get(stem, ""))
    if module is not None:
        return module
    _search_working_directory()
    return importlib.import_module(stem)


def _failure(exc: Exception) -> str:
    """An import's failure in a user's words: where a syntax error is, else type and message."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else f"line {exc.lineno}"
        return f"{type(exc).__name__} at {where}: {exc.msg}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _search_working_directory() -> None:
    """Let ``--handlers my_handlers`` find ``./my_handlers.py`` as ``python -m`` would: the
    ``docbus`` console script starts with its own directory on the import path, not the
    working directory. Appended, so an installed module of the same name still wins."""
    _search_directory(os.getcwd())


def _search_directory(directory: str) -> None:
    """Put ``directory`` at the end of the import path unless it is on it already."""
    if not any(os.path.abspath(entry or os.curdir) == directory for entry in sys.path):
        sys.path.append(directory)


def check_clashes(found: Sequence[RegisteredHandler]) -> None:
    """Refuse handlers that cannot run side by side: two with one name (their results and
    checkpoints would mix), or two on one subscription (each would receive only part of a
    batch and leave the other's part pending for ever)."""
    names: dict[str, RegisteredHandler] = {}
    subscriptions: dict[tuple[str, str], RegisteredHandler] = {}
    for item in found:
        other = names.setdefault(item.spec.name, item)
        if other is not item:
            raise HandlerDiscoveryError(
                f"two handlers are named {item.spec.name!r}: rename one (@handler(name=...))"
            )
        key = (item.spec.topic, item.spec.subscription)
        other = subscriptions.setdefault(key, item)
        if other is not item:
            raise HandlerDiscoveryError(
                f"handlers {other.spec.name!r} and {item.spec.name!r} both run on subscription "
                f"{key[0]}/{key[1]}: each would receive only part of a batch and leave the "
                "other's part pending for ever; give each handler its own subscription "
                "(infra/topology.toml, `docbus topology`)"
            )
