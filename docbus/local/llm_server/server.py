"""The offline LLM server: an OpenAI-compatible HTTP endpoint on aiohttp, for tests and demos.

:class:`LLMServer` serves ``GET /v1/models``, ``GET /v1/models/{id}`` and ``POST
/v1/chat/completions`` (JSON or SSE stream) so the ``openai`` SDK talks to it unchanged — also at
Azure OpenAI's ``POST /openai/deployments/{deployment}/chat/completions``, for ``AsyncAzureOpenAI``
with ``azure_endpoint`` set to the server's root — plus an admin surface for tests and benchmarks:
``GET /_admin/stats``, ``GET``/``POST /_admin/config`` and ``POST /_admin/reset``. Each request
passes auth, validation (:mod:`~docbus.local.llm_server.completions`), the fault plan
(:mod:`~docbus.local.llm_server.faults`), the RPM/TPM limiter
(:mod:`~docbus.local.llm_server.limits`) and the latency, in that order, and is counted in
:mod:`~docbus.local.llm_server.stats`. Configuration (:mod:`~docbus.local.llm_server.config`) is
read per request, so it can change while the server runs. The CLI
(:mod:`~docbus.cli.llm_server`) and the pytest fixture (:mod:`docbus.testing.llm`) start it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, NoReturn

from aiohttp import web

from docbus.local.llm_server import errors
from docbus.local.llm_server.batch_api import BatchAPI
from docbus.local.llm_server.completions import (
    ChatRequest,
    Completion,
    chunk_bodies,
    complete,
    completion_body,
)
from docbus.local.llm_server.config import LLMServerConfig
from docbus.local.llm_server.errors import APIError
from docbus.local.llm_server.faults import FAULT_HEADER, plan_faults
from docbus.local.llm_server.limits import QuotaEnforcer, retry_after_headers
from docbus.local.llm_server.stats import Outcome, ServerStats

logger = logging.getLogger(__name__)

_MAX_BODY_BYTES = 64 * 1024 * 1024
_SHUTDOWN_GRACE = 2.0  # seconds in-flight requests get on stop (held ones end at once)


class LLMServer:
    """An OpenAI-compatible server answering deterministically, with injectable faults.

    The constructor does no I/O. Use ``async with LLMServer(config) as server:`` (or
    :meth:`start`/:meth:`stop`) inside an event loop, :meth:`in_thread` from synchronous code,
    or :meth:`run_forever` from a command line. Point a client at :attr:`base_url`.
    """

    def __init__(self, config: LLMServerConfig | None = None) -> None:
        self._config = config or LLMServerConfig()
        self._lock = threading.Lock()  # stats, limiter and sequence; read from other threads
        self._stats = ServerStats()
        self._limiter = QuotaEnforcer()
        self._sequence = 0
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing: asyncio.Event | None = None
        self._sleepers: set[asyncio.Future[None]] = set()
        self._in_flight = 0
        self.batch_api = BatchAPI(lambda: self._config, self._authorize)
        """The Files and Batches endpoints (:mod:`docbus.local.llm_server.batch_api`)."""

    # -- configuration and figures -------------------------------------------------------------

    @property
    def config(self) -> LLMServerConfig:
        return self._config

    def configure(
        self, config: LLMServerConfig | None = None, /, **changes: Any
    ) -> LLMServerConfig:
        """Replace the configuration, or change some fields; takes effect on the next request.

        ``server.configure(api_key="wrong")``, ``server.configure(faults={"rate_429": 0.3})``
        or ``server.configure(limits=Limits(tpm=1000))``. Host and port cannot change while
        running. Returns the new configuration.
        """
        new = config if config is not None else self._config.updated(changes)
        running = self._runner is not None
        if running and (new.host, new.port) != (self._config.host, self._config.port):
            raise ValueError("host and port cannot change while the server runs")
        self._config = new
        return new

    def stats(self) -> dict[str, Any]:
        """Counters since start or reset (outcomes, tokens, per-minute usage, window figures),
        the chat requests being answered now (``in_flight``), the Batch API's counts
        (``batches``) and the current configuration,
        as ``GET /_admin/stats`` returns them."""
        limits = self._config.limits
        with self._lock:
            snapshot = self._stats.snapshot()
            requests, tokens = self._limiter.usage(limits)
            snapshot["window"] = {
                "seconds": limits.window,
                "requests": requests,
                "tokens": tokens,
                "peak_requests": self._limiter.peak_requests,
                "peak_tokens": self._limiter.peak_tokens,
            }
        snapshot["in_flight"] = self._in_flight
        snapshot["batches"] = self.batch_api.stats()
        snapshot["config"] = self._config.to_dict()
        return snapshot

    def reset(self) -> None:
        """Forget counters, rate-limit windows and the fault sequence."""
        with self._lock:
            self._stats = ServerStats()
            self._limiter = QuotaEnforcer()
            self._sequence = 0

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not running")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` (no ``/v1``)."""
        host = self._config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What the ``openai`` SDK's ``base_url`` should be: ``http://host:port/v1``."""
        return f"{self.url}/v1"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the server is already running")
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/v1/models/{model}", self._get_model)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        # Azure OpenAI's shape: the deployment in the path, the key in an api-key header.
        app.router.add_post(
            "/openai/deployments/{deployment}/chat/completions", self._chat_completions
        )
        self.batch_api.add_routes(app)
        app.router.add_get("/_admin/stats", self._admin_stats)
        app.router.add_get("/_admin/config", self._admin_get_config)
        app.router.add_post("/_admin/config", self._admin_set_config)
        app.router.add_post("/_admin/reset", self._admin_reset)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._config.host, self._config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        logger.info("offline LLM server listening on %s", self.base_url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        for sleeper in self._sleepers:
            if not sleeper.done():
                sleeper.set_result(None)
        await runner.cleanup()
        self._port = None
        logger.info("offline LLM server stopped")

    async def __aenter__(self) -> LLMServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[LLMServer]:
        """Run the server on its own event loop in a daemon thread (for synchronous callers).

        The server answers while the caller blocks, so sync ``OpenAI`` clients and async
        clients on any other loop can both use it.
        """
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            # Finish in this thread: the caller's thread may be running an event loop of its own.
            loop.run_until_complete(loop.shutdown_asyncgens())

        thread = threading.Thread(target=serve, name="docbus-llm-server", daemon=True)
        thread.start()
        started.wait()
        try:
            if failure:
                raise failure[0]
            yield self
        finally:
            if not failure:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result()
                loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def run_forever(self, ready: Callable[[LLMServer], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM (blocking); ``ready`` is called once listening."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signum, stop.set)
            async with self:
                if ready is not None:
                    ready(self)
                await stop.wait()

        with contextlib.suppress(KeyboardInterrupt):  # where signal handlers are unsupported
            asyncio.run(main())

    # -- HTTP handlers -------------------------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        self._in_flight += 1
        try:
            return await self._answer(request)
        finally:
            self._in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        config = self._config
        sequence = -1
        try:
            self._authorize(request, config)
            if config.faults.quota_exhausted:
                raise errors.insufficient_quota()
            try:
                body = json.loads(await request.text())
            except ValueError as exc:
                raise errors.bad_request(
                    "We could not parse the JSON body of your request. (HINT: This likely means "
                    "you aren't using your HTTP library correctly.)"
                ) from exc
            deployment = request.match_info.get("deployment")
            if deployment and isinstance(body, dict) and not body.get("model"):
                body["model"] = deployment  # Azure names the model by its deployment
            chat = ChatRequest.from_body(body, json_schema=config.json_schema)
            if config.strict_model and chat.model != config.model:
                raise errors.model_not_found(chat.model)
            with self._lock:
                sequence = self._sequence
                self._sequence += 1
            rng = random.Random(f"{config.seed}:{sequence}")
            try:
                plan = plan_faults(
                    config.faults, config.latency, rng, request.headers.get(FAULT_HEADER)
                )
            except ValueError as exc:
                raise errors.bad_request(str(exc)) from exc
            content_fault = plan.content if chat.mode != "text" else None
            completion = complete(
                chat, context_tokens=config.limits.context_tokens, content_fault=content_fault
            )
            delay = plan.latency
            if plan.status == "timeout":
                await self._pause(config.faults.timeout_hold)
                if config.faults.timeout_mode == "drop" or self._is_closing():
                    self._finish(sequence, Outcome.TIMEOUT, started, 0)
                    self._drop(request)
                delay = 0.0  # answering late: the hold was the delay
            elif plan.status is not None:
                raise self._status_fault(plan.status, chat.model, config)
            rate_headers = self._admit(chat.model, completion.total_tokens, config)
            await self._pause(delay, since=started)
            if content_fault == "malformed":
                outcome = Outcome.MALFORMED
            elif content_fault == "schema":
                outcome = Outcome.SCHEMA_VIOLATION
            else:
                outcome = Outcome.LENGTH if completion.truncated else Outcome.OK
            completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            headers = {
                **rate_headers,
                "x-request-id": f"req_{uuid.uuid4().hex}",
                "openai-processing-ms": str(round((time.monotonic() - started) * 1000)),
            }
            created = int(time.time())
            if chat.stream:
                response = await self._stream(request, completion, chat, completion_id, headers)
            else:
                body = completion_body(
                    completion, model=chat.model, completion_id=completion_id, created=created
                )
                response = web.json_response(body, headers=headers)
            self._finish(
                sequence,
                outcome,
                started,
                200,
                completion.prompt_tokens,
                completion.completion_tokens,
            )
            return response
        except APIError as exc:
            self._finish(sequence, exc.outcome, started, exc.status)
            return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        except Exception:  # a bug here must still look like an OpenAI 500 to the client
            logger.exception("offline LLM server failed on request #%d", sequence)
            self._finish(sequence, Outcome.SERVER_ERROR, started, 500)
            return web.json_response(errors.server_error().body(), status=500)

    def _status_fault(self, status: str, model: str, config: LLMServerConfig) -> APIError:
        if status == "429":
            headers = retry_after_headers(config.faults.retry_after)
            with self._lock:
                headers.update(self._limiter.headers(config.limits))
            return errors.injected_rate_limit(model, headers)
        return errors.server_error() if status == "500" else errors.overloaded()

    async def _stream(
        self,
        request: web.Request,
        completion: Completion,
        chat: ChatRequest,
        completion_id: str,
        headers: Mapping[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            for chunk in chunk_bodies(
                completion,
                model=chat.model,
                completion_id=completion_id,
                created=int(time.time()),
                include_usage=chat.include_usage,
            ):
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        return response

    def _admit(self, model: str, tokens: int, config: LLMServerConfig) -> dict[str, str]:
        limits = config.limits
        with self._lock:
            admission = self._limiter.admit(tokens, limits)
            headers = self._limiter.headers(limits)
        if admission.admitted:
            return headers
        never = math.isinf(admission.retry_after)
        if not never:
            headers.update(retry_after_headers(admission.retry_after))
        raise errors.rate_limited(
            model,
            admission.limit,
            limit=admission.limit_value,
            used=admission.used,
            requested=tokens if admission.limit == "tokens" else 1,
            retry_after=None if never else admission.retry_after,
            outcome=Outcome.RATE_LIMITED_TPM
            if admission.limit == "tokens"
            else Outcome.RATE_LIMITED_RPM,
            headers=headers,
        )

    def _authorize(self, request: web.Request, config: LLMServerConfig) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            given: str | None = header[7:].strip()
        else:
            given = request.headers.get("api-key")  # Azure OpenAI's header
        if given is None or not hmac.compare_digest(given.encode(), config.api_key.encode()):
            raise errors.invalid_api_key(given)

    def _finish(
        self,
        sequence: int,
        outcome: Outcome,
        started: float,
        status: int,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        with self._lock:
            self._stats.record(outcome, prompt_tokens, completion_tokens)
        logger.debug(
            "chat.completions #%d status=%d outcome=%s prompt_tokens=%d completion_tokens=%d %.3fs",
            sequence,
            status,
            outcome.value,
            prompt_tokens,
            completion_tokens,
            time.monotonic() - started,
        )

    def _is_closing(self) -> bool:
        return self._closing is not None and self._closing.is_set()

    async def _pause(self, seconds: float, since: float | None = None) -> None:
        """Sleep until ``seconds`` after ``since`` (a ``time.monotonic()``; default now), or
        until the server stops. The model's latency counts from the request's arrival, so
        the server's own work on a request is part of it rather than added to it."""
        if seconds <= 0 or self._closing is None or self._closing.is_set():
            return
        remaining = (time.monotonic() if since is None else since) + seconds - time.monotonic()
        if remaining <= 0:
            return
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        wake = loop.call_later(remaining, _wake, sleeper)
        self._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            wake.cancel()
            self._sleepers.discard(sleeper)

    @staticmethod
    def _drop(request: web.Request) -> NoReturn:
        """Close the connection without an answer, as a timed-out upstream would."""
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp treats this as "connection gone"

    async def _list_models(self, request: web.Request) -> web.Response:
        try:
            self._authorize(request, self._config)
        except APIError as exc:
            return web.json_response(exc.body(), status=exc.status)
        return web.json_response({"object": "list", "data": [self._model(self._config.model)]})

    async def _get_model(self, request: web.Request) -> web.Response:
        config = self._config
        name = request.match_info["model"]
        try:
            self._authorize(request, config)
            if config.strict_model and name != config.model:
                raise errors.model_not_found(name)
        except APIError as exc:
            return web.json_response(exc.body(), status=exc.status)
        return web.json_response(self._model(name))

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "docbus"}

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _admin_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self._config.to_dict())

    async def _admin_set_config(self, request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.text())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of config changes")
            config = self.configure(**changes)
        except ValueError as exc:
            return web.json_response(errors.bad_request(str(exc)).body(), status=400)
        logger.info("offline LLM server reconfigured: %s", sorted(changes))
        return web.json_response(config.to_dict())

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.stats())

    async def _not_found(self, request: web.Request) -> web.Response:
        body = errors.bad_request(f"Invalid URL ({request.method} {request.path})").body()
        return web.json_response(body, status=404)


def _wake(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)
