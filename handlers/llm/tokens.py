"""Token estimates: how many tokens a request will use, before it is sent.

The rate limiter (:mod:`handlers.llm.ratelimit`) reserves an estimate before each call and
corrects it with the usage the server reports afterwards, so the estimate sizes reservations
only; cost and audit always use the server's figures. :class:`TokenCounter` uses ``tiktoken``
(``o200k_base``, the encoding of gpt-4o and later) when it is installed and its encoding loads.

Offline fallback: ``tiktoken`` downloads its BPE files on first use, which fails (or hangs) on
a machine without internet. The counter therefore loads it off the event loop with a time
limit (:meth:`TokenCounter.load`) and otherwise counts with a rule close to ``o200k`` for
prose: a run of letters (one token per 8 letters, at least one), a group of up to three digits,
or any other single non-space character. To use tiktoken offline, copy its cache directory
from a connected machine and point ``TIKTOKEN_CACHE_DIR`` at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["TokenCounter", "heuristic_tokens"]

logger = logging.getLogger(__name__)

ENCODING = "o200k_base"
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3
_LOAD_TIMEOUT = 5.0
_SCHEMAS_KEPT = 256

T = TypeVar("T")

_PATTERN = re.compile(r"[^\W\d_]+|\d{1,3}|\S")


def heuristic_tokens(text: str) -> int:
    """Tokens in ``text`` by the offline rule (see the module docstring)."""
    count = 0
    for match in _PATTERN.finditer(text):
        piece = match.group()
        count += max(1, -(-len(piece) // 8)) if piece[0].isalpha() else 1
    return count


class TokenCounter:
    """Counts tokens with tiktoken when it can be loaded, else with :func:`heuristic_tokens`."""

    def __init__(self, *, use_tiktoken: bool = True) -> None:
        self._use_tiktoken = use_tiktoken
        self._encode: Callable[[str], list[int]] | None = None
        self._loaded = not use_tiktoken
        self._lock: asyncio.Lock | None = None
        # A response schema is the same object on every call of its model: counted once.
        # (Kept with its count, so an id is never reused while its entry lives.)
        self._schemas: dict[int, tuple[Mapping[str, Any], int]] = {}

    @property
    def source(self) -> str:
        """``tiktoken`` or ``heuristic``: what counts now."""
        return "tiktoken" if self._encode is not None else "heuristic"

    async def load(self, within: float = _LOAD_TIMEOUT) -> None:
        """Try tiktoken once, in a thread, for at most ``within`` seconds (idempotent)."""
        if self._loaded:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._loaded:
                return
            try:
                self._encode = await asyncio.wait_for(_in_daemon_thread(_load_tiktoken), within)
            except ImportError:
                logger.debug("tiktoken is not installed: token estimates use the offline rule")
            except Exception as exc:  # download failed or timed out: estimates stay heuristic
                logger.info("tiktoken unavailable (%r): token estimates use the offline rule", exc)
            self._loaded = True

    def count(self, text: str) -> int:
        """Tokens in ``text``."""
        if not text:
            return 0
        if self._encode is not None:
            return len(self._encode(text))
        return heuristic_tokens(text)

    def count_messages(
        self, messages: Iterable[Mapping[str, Any]], schema: Mapping[str, Any] | None = None
    ) -> int:
        """Prompt tokens of chat ``messages`` (with OpenAI's per-message framing) and a schema."""
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            total += TOKENS_PER_MESSAGE + self.count(str(message.get("role", "")))
            total += self.count(_content_text(message.get("content")))
            name = message.get("name")
            if isinstance(name, str):
                total += 1 + self.count(name)
        if schema is not None:
            total += self._schema_tokens(schema)
        return total

    def _schema_tokens(self, schema: Mapping[str, Any]) -> int:
        known = self._schemas.get(id(schema))
        if known is not None and known[0] is schema:
            return known[1]
        tokens = self.count(json.dumps(schema, sort_keys=True))
        if len(self._schemas) >= _SCHEMAS_KEPT:
            self._schemas.clear()
        self._schemas[id(schema)] = (schema, tokens)
        return tokens


def _in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run ``fn`` in a daemon thread: a hung download must not hold up the loop's shutdown."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="docbus-tiktoken-load", daemon=True).start()
    return future


def _load_tiktoken() -> Callable[[str], list[int]]:
    import tiktoken  # optional dependency

    encoding = tiktoken.get_encoding(ENCODING)
    encode: Callable[[str], list[int]] = encoding.encode_ordinary
    return encode


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part.get("text", "") if isinstance(part, Mapping) else str(part) for part in content
        )
    return str(content)
