"""Batches of the offline LLM server: OpenAI's Batch API lifecycle, answers and faults.

A :class:`BatchJob` is created from an uploaded input file (JSONL, one request a line:
``custom_id``, ``method``, ``url``, ``body``) and moves through OpenAI's states::

    validating -> in_progress -> finalizing -> completed
    validating -> failed                    (bad lines, a knob's failure)
    in_progress -> expired                  (BatchConfig.expire_share > 0)
    validating | in_progress -> cancelling -> cancelled

on the server's clock, lazily: :meth:`BatchJob.advance` moves it to where the elapsed time puts
it whenever it is read, so there are no background tasks and a test with zero durations sees a
finished batch on its first poll. The times and faults are fixed at creation from
:class:`~docbus.local.llm_server.batch_config.BatchConfig`. Each line is answered by the same
code as ``POST /v1/chat/completions`` (:mod:`docbus.local.llm_server.completions`), so a batch
answer is the live answer. On a terminal state the output file (``custom_id``, ``response``
{``status_code`` 200, ``request_id``, ``body``}) and the error file (non-200 responses, and
``error`` {``code``: ``batch_expired`` | ``batch_cancelled``} for requests never run) are written
to the :class:`~docbus.local.llm_server.files.FileStore`. Routes:
:mod:`docbus.local.llm_server.batch_api`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from docbus.local.llm_server import errors
from docbus.local.llm_server.batch_config import BatchConfig
from docbus.local.llm_server.completions import ChatRequest, complete, completion_body
from docbus.local.llm_server.config import LLMServerConfig
from docbus.local.llm_server.errors import APIError
from docbus.local.llm_server.faults import plan_faults
from docbus.local.llm_server.files import FileStore
from docbus.local.llm_server.tokens import prompt_tokens

CHAT_ENDPOINTS = ("/v1/chat/completions", "/chat/completions")
"""What a batch may target: OpenAI's path, and Azure's (which omits ``/v1``)."""
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_MAX_REPORTED_ERRORS = 10


@dataclass(slots=True)
class LineResult:
    """The answer to one input line: its HTTP status and body, and the tokens it billed."""

    custom_id: str
    status_code: int = 0
    body: dict[str, Any] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class BatchJob:
    """One batch and everything the server knows about it."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: float
    knobs: BatchConfig
    live: LLMServerConfig
    lines: list[Mapping[str, Any]]
    problems: list[dict[str, Any]]
    status: str = "validating"
    times: dict[str, float] = field(default_factory=dict)
    results: list[LineResult] | None = None
    unanswered: frozenset[str] = frozenset()  # custom ids left unanswered at expiry
    line_faults: dict[str, int] = field(default_factory=dict)  # custom id -> injected status
    processed_share: float = 1.0  # of a cancelled batch
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # request_counts
    usage: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0})
    queued_tokens: int = 0  # prompt tokens it holds of its model's enqueued-token quota

    @property
    def enqueued(self) -> int:
        """Tokens this batch holds of the quota now: its prompts until it ends (one that
        fails validation holds none)."""
        return 0 if self.problems or self.status in TERMINAL else self.queued_tokens

    @property
    def model(self) -> str | None:
        for line in self.lines:
            body = line.get("body")
            if isinstance(body, Mapping) and isinstance(body.get("model"), str):
                return str(body["model"])
        return None

    # -- lifecycle ---------------------------------------------------------------------------

    def advance(self, now: float, files: FileStore) -> None:
        """Move to the state ``now`` puts the batch in, writing its files on a terminal one."""
        knobs = self.knobs
        validated = self.created_at + knobs.validating_seconds
        processed = validated + knobs.in_progress_seconds
        finalized = processed + knobs.finalizing_seconds
        while True:
            if self.status == "validating" and now >= validated:
                if self.problems:
                    self._enter("failed", validated)
                    continue
                self._enter("in_progress", validated)
                self.line_faults = self._line_faults()
                self.results = [self._answer(line) for line in self.lines]
                self.unanswered = self._draw_unanswered()
            elif self.status == "in_progress" and now >= processed:
                if self.unanswered:
                    self._enter("expired", processed)
                    self._finish(files)
                else:
                    self._enter("finalizing", processed)
            elif self.status == "finalizing" and now >= finalized:
                self._enter("completed", finalized)
                self._finish(files)
            elif self.status == "cancelling" and (
                now >= self.times["cancelling_at"] + knobs.cancelling_seconds
            ):
                self._enter("cancelled", self.times["cancelling_at"] + knobs.cancelling_seconds)
                self._finish(files)
            else:
                break
        if self.status == "in_progress":
            self._count(self._share_done(now))

    def cancel(self, now: float, files: FileStore) -> None:
        """Start cancelling; raises a 400 :class:`APIError` once the batch is past cancelling."""
        self.advance(now, files)
        if self.status in ("cancelling", "cancelled"):
            return
        if self.status not in ("validating", "in_progress"):
            raise errors.bad_request(f"Cannot cancel a batch with status '{self.status}'.")
        self.processed_share = self._share_done(now) if self.status == "in_progress" else 0.0
        if self.results is None:
            self.results = []
        self._enter("cancelling", now)
        self.advance(now, files)

    def _enter(self, status: str, at: float) -> None:
        self.status = status
        self.times[f"{status}_at"] = at

    def _share_done(self, now: float) -> float:
        started = self.times.get("in_progress_at")
        if started is None:
            return 0.0
        span = self.knobs.in_progress_seconds
        return 1.0 if span <= 0 else min(1.0, max(0.0, (now - started) / span))

    def _count(self, share: float) -> None:
        results = self.results or []
        done = results[: math.floor(len(results) * share)]
        self.counts = {
            "total": len(self.lines),
            "completed": sum(1 for r in done if r.status_code == 200),
            "failed": sum(1 for r in done if r.status_code not in (0, 200)),
        }

    # -- answers -----------------------------------------------------------------------------

    def _ranked(self) -> list[str]:
        """The custom ids in a fixed pseudo-random order of this batch (faults take prefixes)."""
        seed = self.live.seed

        def rank(custom_id: str) -> bytes:
            return hashlib.sha256(f"{seed}:{self.id}:{custom_id}".encode()).digest()

        return sorted((str(line["custom_id"]) for line in self.lines), key=rank)

    def _draw_unanswered(self) -> frozenset[str]:
        ranked = self._ranked()
        return frozenset(ranked[: round(self.knobs.expire_share * len(ranked))])

    def _line_faults(self) -> dict[str, int]:
        knobs = self.knobs
        ranked = self._ranked()
        start = round(knobs.expire_share * len(ranked))
        bad = round(knobs.line_400_share * len(ranked))
        broken = round(knobs.line_500_share * len(ranked))
        faults = {custom_id: 400 for custom_id in ranked[start : start + bad]}
        faults.update({c: 500 for c in ranked[start + bad : start + bad + broken]})
        return faults

    def _answer(self, line: Mapping[str, Any]) -> LineResult:
        custom_id = str(line["custom_id"])
        fault = self.line_faults.get(custom_id)
        if fault == 400:
            return LineResult(custom_id, 400, _injected_bad_request().body())
        if fault == 500:
            return LineResult(custom_id, 500, errors.server_error().body())
        live = self.live
        try:
            chat = ChatRequest.from_body(line.get("body"), json_schema=live.json_schema)
            if live.strict_model and chat.model != live.model:
                raise errors.model_not_found(chat.model)
            rng = random.Random(f"{live.seed}:{self.id}:{custom_id}")
            plan = plan_faults(live.faults, live.latency, rng)
            content_fault = plan.content if chat.mode != "text" else None
            completion = complete(
                chat, context_tokens=live.limits.context_tokens, content_fault=content_fault
            )
        except APIError as exc:
            return LineResult(custom_id, exc.status, exc.body())
        body = completion_body(
            completion,
            model=chat.model,
            completion_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            created=int(self.times.get("in_progress_at", self.created_at)),
        )
        return LineResult(
            custom_id, 200, body, completion.prompt_tokens, completion.completion_tokens
        )

    # -- files -------------------------------------------------------------------------------

    def _finish(self, files: FileStore) -> None:
        """Write the output and error files of a terminal batch and settle its counts."""
        results = self.results or []
        cut = len(results)
        if self.status == "cancelled":
            cut = math.floor(len(results) * self.processed_share)
        outputs: list[str] = []
        failures: list[str] = []
        completed = failed = 0
        usage_in = usage_out = 0
        for position, line in enumerate(self.lines):
            custom_id = str(line["custom_id"])
            result = results[position] if position < len(results) else None
            if self.status == "failed":
                break
            if result is None or position >= cut or custom_id in self.unanswered:
                code = "batch_cancelled" if self.status == "cancelled" else "batch_expired"
                failures.append(_render(custom_id, None, _not_run(code)))
                failed += 1
                continue
            rendered = _render(custom_id, result, None)
            if result.status_code == 200:
                outputs.append(rendered)
                completed += 1
                usage_in += result.prompt_tokens
                usage_out += result.completion_tokens
            else:
                failures.append(rendered)
                failed += 1
        self.counts = {"total": len(self.lines), "completed": completed, "failed": failed}
        self.usage = {"input": usage_in, "output": usage_out}
        if outputs:
            self.output_file_id = files.add(
                _jsonl(outputs), filename=f"{self.id}_output.jsonl", purpose="batch_output"
            ).id
        if failures:
            self.error_file_id = files.add(
                _jsonl(failures), filename=f"{self.id}_error.jsonl", purpose="batch_output"
            ).id

    # -- rendering ---------------------------------------------------------------------------

    def as_object(self) -> dict[str, Any]:
        """The ``batch`` object the Batches endpoints return."""
        times = self.times

        def stamp(name: str) -> int | None:
            value = times.get(name)
            return None if value is None else int(value)

        body: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": self.problems} if self.problems else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created_at),
            "in_progress_at": stamp("in_progress_at"),
            "expires_at": int(self.created_at) + 24 * 3600,
            "finalizing_at": stamp("finalizing_at"),
            "completed_at": stamp("completed_at"),
            "failed_at": stamp("failed_at"),
            "expired_at": stamp("expired_at"),
            "cancelling_at": stamp("cancelling_at"),
            "cancelled_at": stamp("cancelled_at"),
            "request_counts": dict(self.counts),
            "metadata": self.metadata,
        }
        if self.status in TERMINAL:
            body["usage"] = {
                "input_tokens": self.usage["input"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.usage["output"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.usage["input"] + self.usage["output"],
            }
        return body


def create_job(
    *,
    content: bytes,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    now: float,
    live: LLMServerConfig,
    enqueued: Mapping[str, int] | None = None,
) -> BatchJob:
    """A new batch over ``content``; its lines are checked now and reported when validated.
    ``enqueued``: the prompt tokens the batches not yet ended hold, per model (for the
    ``queued_tokens`` quota)."""
    knobs = live.batch
    lines, problems = parse_input(content, endpoint, knobs)
    if not problems and knobs.fail is not None:
        problems = [_knob_failure(knobs, lines)]
    tokens = 0
    if not problems and knobs.queued_tokens is not None:  # (counting costs: only with a quota)
        tokens = sum(_line_prompt_tokens(line) for line in lines)
        model = _model_of(lines)
        held = (enqueued or {}).get(model or "", 0)
        if held + tokens > knobs.queued_tokens:
            problems = [_token_limit(model or "the model", knobs.queued_tokens, held)]
    job = BatchJob(
        id=f"batch_{uuid.uuid4().hex[:24]}",
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=completion_window,
        metadata=metadata,
        created_at=now,
        knobs=knobs,
        live=live,
        lines=lines,
        problems=problems,
    )
    job.times["created_at"] = now
    job.queued_tokens = tokens
    job.counts = {"total": 0 if problems else len(lines), "completed": 0, "failed": 0}
    return job


def parse_input(
    content: bytes, endpoint: str, knobs: BatchConfig
) -> tuple[list[Mapping[str, Any]], list[dict[str, Any]]]:
    """The request lines of an input file, and OpenAI's validation errors about them."""
    problems: list[dict[str, Any]] = []
    if len(content) > knobs.max_file_bytes:
        problems.append(
            _problem("file_too_large", f"The input file exceeds {knobs.max_file_bytes} bytes.")
        )
        return [], problems
    lines: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    wanted = _normal(endpoint)
    for number, raw in enumerate(content.decode("utf-8", errors="replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if not isinstance(line, Mapping):
            problems.append(
                _problem("invalid_json_line", "This line is not parseable as valid JSON.", number)
            )
            continue
        custom_id = line.get("custom_id")
        body = line.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            problems.append(
                _problem("missing_required_parameter", "Missing 'custom_id'.", number, "custom_id")
            )
        elif custom_id in seen:
            problems.append(
                _problem(
                    "duplicate_custom_id",
                    f"The custom_id for this request is a duplicate of another request: "
                    f"{custom_id!r}.",
                    number,
                    "custom_id",
                )
            )
        else:
            seen.add(custom_id)
        if line.get("method") != "POST":
            problems.append(_problem("invalid_request", "'method' must be 'POST'.", number))
        if _normal(str(line.get("url", ""))) != wanted:
            problems.append(
                _problem(
                    "url_mismatch",
                    f"The URL provided for this request does not match the batch endpoint "
                    f"{endpoint!r}.",
                    number,
                    "url",
                )
            )
        if not isinstance(body, Mapping):
            problems.append(_problem("invalid_request", "'body' must be an object.", number))
        else:
            line_model = body.get("model")
            if model is None and isinstance(line_model, str):
                model = line_model
            elif isinstance(line_model, str) and line_model != model:
                problems.append(
                    _problem(
                        "model_mismatch",
                        "The provided model does not match the model of other requests in "
                        "this batch; all requests in a batch must use the same model.",
                        number,
                        "body.model",
                    )
                )
        lines.append(line)
    if not lines and not problems:
        problems.append(_problem("empty_file", "The input file is empty."))
    if len(lines) > knobs.max_requests:
        problems.append(
            _problem(
                "too_many_tasks",
                f"The input file has {len(lines)} requests; the limit is {knobs.max_requests}.",
            )
        )
    return lines, problems[:_MAX_REPORTED_ERRORS]


def _normal(path: str) -> str:
    return path if path.startswith("/v1/") else f"/v1{path}"


def _problem(
    code: str, message: str, line: int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _knob_failure(knobs: BatchConfig, lines: list[Mapping[str, Any]]) -> dict[str, Any]:
    if knobs.fail == "invalid_file":
        return _problem("invalid_json_line", "This line is not parseable as valid JSON.", 1)
    return _token_limit(_model_of(lines) or "the model", 0, 0)


def _token_limit(model: str, limit: int, held: int) -> dict[str, Any]:
    return _problem(
        "token_limit_exceeded",
        f"Enqueued token limit reached for {model} in organization org-docbus-offline. "
        f"Limit: {limit} enqueued tokens ({held} in use). Please try again once some "
        "in_progress batches have been completed.",
    )


def _model_of(lines: list[Mapping[str, Any]]) -> str | None:
    for line in lines:
        body = line.get("body")
        if isinstance(body, Mapping) and isinstance(body.get("model"), str):
            return str(body["model"])
    return None


def _line_prompt_tokens(line: Mapping[str, Any]) -> int:
    """The prompt tokens a line's request bills (what the enqueued-token quota counts); a
    line the live endpoint would refuse counts none."""
    try:
        chat = ChatRequest.from_body(line.get("body"))
    except APIError:
        return 0
    return prompt_tokens(chat.messages, chat.schema)


def _injected_bad_request() -> APIError:
    return errors.bad_request(
        "Invalid 'messages': the request was refused (injected by the offline server).",
        param="messages",
    )


def _not_run(code: str) -> dict[str, str]:
    if code == "batch_cancelled":
        return {"code": code, "message": "This request was not executed because the batch "
                "was cancelled."}  # fmt: skip
    return {
        "code": code,
        "message": "This request could not be executed before the completion window expired.",
    }


def _render(custom_id: str, result: LineResult | None, error: dict[str, str] | None) -> str:
    response = None
    if result is not None:
        response = {
            "status_code": result.status_code,
            "request_id": f"req_{uuid.uuid4().hex}",
            "body": result.body,
        }
    return json.dumps(
        {
            "id": f"batch_req_{uuid.uuid4().hex[:24]}",
            "custom_id": custom_id,
            "response": response,
            "error": error,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()
