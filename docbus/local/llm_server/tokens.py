"""Token counting for the offline LLM server: a deterministic stand-in for a real tokenizer.

A token is one match of :data:`TOKEN_PATTERN`: a run of letters, a group of up to three digits, or
any other single non-space character. For English prose this lands close to tiktoken's
``cl100k``/``o200k`` counts (slightly under for long rare words) and it needs no vocabulary
download. Chat prompts add OpenAI's documented framing: 3 tokens per message, 1 per ``name``, 3 to
prime the reply, plus the JSON schema of a ``json_schema`` response format, which real servers also
bill as prompt. The completion builder (:mod:`docbus.local.llm_server.completions`) uses these
counts for ``usage`` and for ``max_tokens`` truncation; the limiter charges them against TPM.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

TOKEN_PATTERN = re.compile(r"[^\W\d_]+|\d{1,3}|\S")

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def count_tokens(text: str) -> int:
    """Tokens in ``text`` (see the module docstring for the rule)."""
    return len(TOKEN_PATTERN.findall(text))


def truncate_to_tokens(text: str, limit: int) -> str:
    """The longest prefix of ``text`` that holds at most ``limit`` tokens."""
    if limit <= 0:
        return ""
    for index, match in enumerate(TOKEN_PATTERN.finditer(text), start=1):
        if index == limit:
            return text[: match.end()]
    return text


def split_tokens(text: str) -> list[str]:
    """``text`` cut into pieces of one token each (leading whitespace kept), for streaming."""
    pieces: list[str] = []
    start = 0
    for match in TOKEN_PATTERN.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        if pieces:
            pieces[-1] += text[start:]
        else:
            pieces.append(text[start:])
    return pieces


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a parts list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
            elif isinstance(part, str):
                texts.append(part)
        return "\n".join(texts)
    return str(content)


def prompt_tokens(messages: Iterable[Mapping[str, Any]], schema: Any = None) -> int:
    """Prompt tokens billed for ``messages`` (and the response-format ``schema``, if any)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += count_tokens(str(message.get("role", "")))
        total += count_tokens(content_text(message.get("content")))
        name = message.get("name")
        if isinstance(name, str):
            total += TOKENS_PER_NAME + count_tokens(name)
        tool_calls = message.get("tool_calls")
        if tool_calls:
            total += count_tokens(json.dumps(tool_calls, sort_keys=True))
    if schema is not None:
        total += count_tokens(json.dumps(schema, sort_keys=True))
    return total
