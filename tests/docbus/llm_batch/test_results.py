"""Reading output and error files: answers, failed lines, lines never run, unreadable lines."""

from __future__ import annotations

import json
from typing import Any

from docbus.llm_batch import LineAnswer, LineError, UnreadableLine, read_line, read_lines


def answered(custom_id: str, content: str = '{"a":1}') -> dict[str, Any]:
    return {
        "id": "batch_req_1",
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {
                "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
            },
        },
        "error": None,
    }


def failed(custom_id: str, status: int, code: str | None, message: str) -> dict[str, Any]:
    return {
        "id": "batch_req_2",
        "custom_id": custom_id,
        "response": {
            "status_code": status,
            "request_id": "req_2",
            "body": {"error": {"message": message, "type": "invalid_request_error",
                               "param": "messages", "code": code}},
        },
        "error": None,
    }  # fmt: skip


def not_run(custom_id: str, code: str) -> dict[str, Any]:
    return {
        "id": "batch_req_3",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": "This request could not be executed."},
    }


def test_an_answered_line_gives_the_body_usage_and_request_id() -> None:
    line = read_line(json.dumps(answered("k1")))
    assert isinstance(line, LineAnswer)
    assert (line.custom_id, line.request_id) == ("k1", "req_1")
    assert (line.prompt_tokens, line.completion_tokens) == (12, 5)
    assert line.body["choices"][0]["message"]["content"] == '{"a":1}'
    assert line.finish_reason == "stop"


def test_a_failed_line_gives_its_status_and_the_providers_error() -> None:
    line = read_line(json.dumps(failed("k2", 400, "context_length_exceeded", "too long")))
    assert line == LineError(
        "k2", 400, "context_length_exceeded", "too long", "invalid_request_error", "messages",
        "req_2",
    )  # fmt: skip
    assert not line.not_run


def test_a_line_never_run_gives_its_code_and_no_status() -> None:
    line = read_line(json.dumps(not_run("k3", "batch_expired")))
    assert isinstance(line, LineError) and line.not_run
    assert (line.status_code, line.code) == (None, "batch_expired")


def test_a_bad_line_is_reported_by_number_and_does_not_hide_the_others() -> None:
    content = "\n".join(
        [
            json.dumps(answered("k1")),
            "{not json",
            json.dumps({"response": None}),
            json.dumps(["a list"]),
            "",
            json.dumps({"custom_id": "k9"}),
            json.dumps(not_run("k4", "batch_cancelled")),
        ]
    ).encode()
    lines = list(read_lines(content))
    assert [type(line).__name__ for line in lines] == [
        "LineAnswer",
        "UnreadableLine",
        "UnreadableLine",
        "UnreadableLine",
        "UnreadableLine",
        "LineError",
    ]
    bad = [line for line in lines if isinstance(line, UnreadableLine)]
    assert [(b.number, b.reason) for b in bad] == [
        (2, "not JSON"),
        (3, "no custom_id"),
        (4, "not a JSON object"),
        (6, "neither a response nor an error"),
    ]


def test_lines_can_come_as_text_or_an_iterable() -> None:
    text = json.dumps(answered("k1")) + "\n"
    assert list(read_lines(text)) == list(read_lines([text.strip()]))
