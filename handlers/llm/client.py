"""The LLM client: one per worker process, over the ``openai`` SDK, bound to each delivery.

:class:`LLMClient` wraps ``openai.AsyncOpenAI`` (OpenAI or any OpenAI-compatible ``base_url``:
vLLM, Ollama, llama.cpp, the offline server) or ``openai.AsyncAzureOpenAI`` (an API key, or
Entra ID through ``azure-identity``), built by :meth:`LLMClient.from_settings`. It owns what
all handlers of the process share: the rate limiter (:mod:`handlers.llm.ratelimit`), the price
table (:mod:`handlers.llm.pricing`), the token counter and what it learnt about the server
(which optional parameters it rejects). :meth:`LLMClient.bind` gives the worker the
:class:`~handlers.llm.bound.BoundLLM` it puts on ``ctx.llm``.

Every request goes through :meth:`LLMClient.exchange`, which in order: checks the batch's and
the document's budget (:class:`~handlers.errors.OverBudget`, before anything is spent),
reserves rate-limit capacity, sends the request with the SDK's own retries off, and writes one
``llm_calls`` audit row — success or failure — adding its cost to the batch's totals (in the
worker the row is sent at once and acknowledged before the result is stored, while the handler
goes on: :mod:`handlers.writes`). Failures
are translated once (:func:`handlers.llm.errors.translate`); transient ones are retried here
a few times (honouring ``Retry-After``), then raised as :class:`~handlers.errors.Retry` for the
worker's delivery-level backoff. A 400 that names a parameter the server lacks (structured
outputs, ``temperature``, ``max_completion_tokens``) is remembered per model and the request
is sent again without it.

In batch mode (:mod:`handlers.llm.mode`: the batch's, the handler's or the settings' choice) a
call is not sent: :func:`handlers.llm.batch.batch_exchange` registers it for the next provider
batch, or returns its stored answer through the same parsing and audit; and
:meth:`LLMClient.batch_submitter` is the submitter the worker runs over the same ``openai``
client (:mod:`docbus.llm_batch.submitter`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import openai

from docbus.backoff import BackoffPolicy, backoff_delay
from docbus.llm_batch import Failure
from docbus.llm_batch.submitter import Submitter, SubmitterOptions
from docbus.records import LLMCallRecord
from docbus.settings import LLMSettings, Settings
from docbus.store import Store
from handlers.batch_round import round_of
from handlers.delivery import delivery_of
from handlers.errors import DeadLetter, HandlerOutcome, OverBudget, Retry, SystemicFailure
from handlers.llm.audit import Filtered, audit_row, write_audit
from handlers.llm.batch import (
    BatchBookkeeping,
    Reservations,
    batch_exchange,
    submitter_options,
)
from handlers.llm.errors import (
    LLMConfigError,
    connection_failure,
    never_connected,
    parse_duration,
    translate,
    unsupported_parameter,
)
from handlers.llm.mode import LLMMode, resolve_llm_mode
from handlers.llm.pricing import PriceTable
from handlers.llm.ratelimit import RateLimiter, Reservation
from handlers.llm.tokens import TokenCounter
from handlers.steps import current_step

if TYPE_CHECKING:
    from handlers.context import Context
    from handlers.llm.bound import BoundLLM

__all__ = ["AZURE_SCOPE", "LLMClient", "LLMOptions"]

logger = logging.getLogger(__name__)

AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
_NO_KEY = "docbus-no-key"  # OpenAI-compatible servers without auth still need a key string
# What `with_raw_response` sets to have the SDK return its raw response object (stable since
# openai 1.0; every LLM test fails loudly if it changes).
_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"

Mode = Literal["json_schema", "json_object", "text"]


@dataclass(frozen=True, slots=True)
class LLMOptions:
    """How the client behaves; :meth:`LLMClient.from_settings` fills it from ``llm.*``."""

    model: str = "gpt-4o-mini"
    """Default model (Azure: deployment) when a call names none."""
    max_retries: int = 3
    """Quick retries of a transient failure inside one call, before raising ``Retry``."""
    retry_base: float = 0.25
    """Seconds before the first quick retry without ``Retry-After``; doubles each time."""
    retry_cap: float = 4.0
    """Longest quick-retry wait without ``Retry-After``."""
    max_retry_after: float = 30.0
    """A ``Retry-After`` longer than this is not waited out here: ``Retry`` goes to the worker."""
    unreachable_after: int = 4
    """Connection failures in a row after which the endpoint counts as unreachable (systemic)."""
    budget_per_batch_usd: float | None = None
    budget_per_document_usd: float | None = None
    completion_estimate: int = 256
    """Completion tokens assumed for a call without ``max_tokens`` until usage teaches better."""
    token_parameter: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    """How a completion limit is sent (OpenAI's newer name, or the classic one)."""
    audit_max_chars: int = 200_000
    """Longest text kept per message or response in an audit row."""
    budget_refresh: float = 5.0
    """Seconds a batch found without any budget is not looked at again: a budget given to such
    a batch applies within this time (a changed budget applies at once)."""
    llm_mode: LLMMode = "live"
    """The settings' mode (``llm.mode``): used when neither the batch nor the handler says."""
    mode_refresh: float = 30.0
    """Seconds a batch's LLM mode is remembered before its record is read again (a replay
    may change it)."""


@dataclass(slots=True)
class _Features:
    """What one model on this server accepted so far (learnt from 400s)."""

    modes: list[Mode] = field(default_factory=lambda: ["json_schema", "json_object", "text"])
    temperature: bool = True
    token_parameter: str = "max_completion_tokens"


@dataclass(frozen=True, slots=True)
class Ask:
    """One question to the LLM, as :class:`~handlers.llm.bound.BoundLLM` puts it."""

    kind: Literal["extract", "complete"]
    messages: Sequence[Mapping[str, Any]]
    model: str | None = None
    schema: Any = None  # a ResponseSchema for extract
    temperature: float | None = None
    max_tokens: int | None = None
    reask: int = 0
    extra_headers: Mapping[str, str] | None = None
    parse: Callable[[str], Any] | None = None
    """Validates the answer text; raises to mark it invalid (the error goes to the audit)."""


@dataclass(slots=True)
class Answer:
    """What came back for an :class:`Ask`: text, parsed value or the parse error, and its row."""

    text: str
    finish_reason: str | None
    parsed: Any = None
    error: Exception | None = None
    record: LLMCallRecord | None = None


class LLMClient:
    """The process's LLM client. The constructor does no I/O; ``async with`` or :meth:`aclose`.

    ``openai_client`` should have ``max_retries=0``: retries happen here, where the rate
    limiter, the audit and the budgets see them.
    """

    def __init__(
        self,
        openai_client: openai.AsyncOpenAI,
        *,
        options: LLMOptions | None = None,
        store: Store | None = None,
        pricing: PriceTable | None = None,
        limiter: RateLimiter | None = None,
        tokens: TokenCounter | None = None,
        credential: Any = None,
        batch_options: SubmitterOptions | None = None,
    ) -> None:
        self.openai = openai_client
        self.batch_options = batch_options or SubmitterOptions()
        """How batch mode's submitter works (``llm.batch``; :meth:`batch_submitter`)."""
        self.options = options or LLMOptions()
        self.store = store
        self.pricing = pricing or PriceTable()
        self.limiter = limiter or RateLimiter()
        self.tokens = tokens or TokenCounter()
        self._credential = credential
        self._features: dict[str, _Features] = {}
        self._completion_estimates: dict[str, float] = {}
        self._connection_failures = 0
        self._unbudgeted: dict[str, float] = {}  # batch -> when to look for a budget again
        self._batch_modes: dict[str, tuple[str | None, float]] = {}  # batch -> (mode, until)
        self.reservations = Reservations(self.options.budget_refresh)
        """Batch mode's open requests' estimated cost per batch (counted against budgets)."""
        self._rng = random.Random()
        # Quick retries inside one call: a quarter of a second, doubling, ±50 % jitter.
        self._backoff = BackoffPolicy(
            base=self.options.retry_base, cap=self.options.retry_cap, jitter=0.5
        )

    @classmethod
    def from_settings(cls, settings: Settings, store: Store | None = None) -> LLMClient:
        """The client ``settings.llm`` describes: Azure OpenAI when ``azure_endpoint`` is set
        (its key, else Entra ID via ``DefaultAzureCredential``), else OpenAI or the
        OpenAI-compatible server at ``base_url``. Raises :class:`LLMConfigError` when neither
        a key nor a ``base_url`` is configured."""
        llm = settings.llm
        credential: Any = None
        client: openai.AsyncOpenAI
        if llm.azure_endpoint:
            key = llm.azure_api_key or llm.api_key
            provider = None
            if key is None:
                from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

                credential = DefaultAzureCredential()
                provider = get_bearer_token_provider(credential, AZURE_SCOPE)
            client = openai.AsyncAzureOpenAI(
                azure_endpoint=llm.azure_endpoint,
                api_version=llm.azure_api_version,
                api_key=key.get_secret_value() if key is not None else None,
                azure_ad_token_provider=provider,
                timeout=llm.timeout,
                max_retries=0,
                http_client=_http_client(llm),
            )
            token_parameter: Literal["max_completion_tokens", "max_tokens"] = (
                "max_completion_tokens"
            )
        else:
            if not llm.configured:
                raise LLMConfigError(
                    "no LLM is configured: set OPENAI_API_KEY (or DOCBUS_LLM__API_KEY), "
                    "AZURE_OPENAI_ENDPOINT, or DOCBUS_LLM__BASE_URL for an OpenAI-compatible "
                    "server such as `docbus llm-server`"
                )
            client = openai.AsyncOpenAI(
                api_key=llm.api_key.get_secret_value() if llm.api_key else _NO_KEY,
                base_url=llm.base_url,
                timeout=llm.timeout,
                max_retries=0,
                http_client=_http_client(llm),
            )
            # Compatible servers all know max_tokens; OpenAI's newer models only the new name.
            token_parameter = "max_tokens" if llm.base_url else "max_completion_tokens"
        options = LLMOptions(
            model=llm.model,
            max_retries=llm.max_retries,
            budget_per_batch_usd=llm.budget_per_batch_usd,
            budget_per_document_usd=llm.budget_per_document_usd,
            token_parameter=token_parameter,
            llm_mode=llm.mode,
        )
        return cls(
            client,
            options=options,
            store=store,
            pricing=PriceTable.from_settings(llm),
            limiter=RateLimiter.from_settings(llm),
            credential=credential,
            batch_options=submitter_options(llm.batch, azure=bool(llm.azure_endpoint)),
        )

    def __repr__(self) -> str:
        return f"LLMClient({str(self.openai.base_url)!r}, model={self.options.model!r})"

    @property
    def model(self) -> str:
        return self.options.model

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.tokens.load()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.openai.close()
        if self._credential is not None:
            credential, self._credential = self._credential, None
            await credential.close()

    def batch_submitter(
        self,
        holder: str,
        *,
        resumable: Callable[[], None] | None = None,
        refused: Callable[[Failure], None] | None = None,
        accepted: Callable[[], None] | None = None,
    ) -> Submitter:
        """The batch-mode submitter over this client's ``openai`` client (the same key or
        Entra ID, the same HTTP client): costs at the batch price, parked deliveries marked
        for resumption as their requests are answered (``resumable`` is then called: look
        now), ``refused`` told when the provider refuses the key, role or endpoint and
        ``accepted`` when it takes them again. Run it with ``await submitter.run(stop)``."""
        if self.store is None:
            raise LLMConfigError("batch mode needs the store: give LLMClient a store")
        keeping = BatchBookkeeping(self.store, self.pricing, resumable)
        return Submitter(
            self.store,
            self.openai,
            holder=holder,
            options=self.batch_options,
            on_settled=keeping.on_settled,
            on_done=keeping.on_done,
            on_refused=refused,
            on_accepted=accepted,
        )

    def bind(self, ctx: Context | None) -> BoundLLM:
        """The client as one delivery's handler uses it (``ctx.llm``)."""
        from handlers.llm.bound import BoundLLM

        return BoundLLM(self, ctx)

    # -- health --------------------------------------------------------------------------------

    async def probe(self, model: str | None = None) -> None:
        """Check that the endpoint serves us again; raises :class:`SystemicFailure` if not.

        Sends a one-token completion (a fraction of a cent; not audited, no batch pays it):
        authentication, quota, the model's existence and reachability all show. Any other
        answer, even an error such as a 429 or a 500, means the systemic cause has cleared.
        """
        name = model or self.options.model
        features = self._features_for(name)
        params: dict[str, Any] = {
            "model": name,
            "messages": [{"role": "user", "content": "ping"}],
            features.token_parameter: 1,
        }
        try:
            await self.openai.chat.completions.create(**params)
        except openai.APIConnectionError as exc:
            if not never_connected(exc):
                return  # it answered, if slowly: the endpoint is there
            raise SystemicFailure(
                "EndpointUnreachable", f"{self.openai.base_url}: {connection_failure(exc)}"
            ) from exc
        except openai.OpenAIError as exc:
            outcome = translate(exc)
            if isinstance(outcome, SystemicFailure):
                raise outcome from exc
        self._connection_failures = 0

    # -- one question, with retries, budgets, limits and audit ----------------------------------

    async def exchange(self, ctx: Context | None, ask: Ask) -> Answer:
        """Put one question to the LLM for ``ctx``'s delivery and return its answer: the one
        request path, used by :class:`~handlers.llm.bound.BoundLLM` (handlers call that, not
        this). Checks budgets and rate limits, retries what is transient, audits every try,
        and raises what :mod:`handlers.llm.errors` translates failures into."""
        if ctx is None:
            return await self._exchange(ctx, ask)
        with round_of(ctx).calling():  # batch mode's round waits for it (batch_round)
            if await self.llm_mode(ctx) == "batch":
                return await batch_exchange(self, ctx, ask)
            return await self._exchange(ctx, ask)

    async def _exchange(self, ctx: Context | None, ask: Ask) -> Answer:
        """:meth:`exchange` with the live endpoint."""
        model = ask.model or self.options.model
        features = self._features_for(model)
        retry = 0
        while True:
            await self._check_budget(ctx)
            mode = self._mode(ask, features)
            messages = _messages_for(ask, mode)
            params = self._params(model, ask, mode, messages, features)
            estimate = self._estimate(model, ask, mode, messages)
            reservation = await self.limiter.acquire(model, estimate)
            started = time.monotonic()
            try:
                raw = await self._post(params)
                reply = _Reply.read(raw)
            except openai.OpenAIError as exc:
                latency = time.monotonic() - started
                outcome = self._failed(exc, model, reservation)
                await self._audit(
                    ctx, self._row(ctx, ask, retry, model, mode, messages, latency, error=exc)
                )
                if isinstance(outcome, DeadLetter) and self._adapt(features, exc, mode, model):
                    retry += 1
                    continue
                delay = self._retry_delay(outcome, retry)
                if delay is None:
                    raise outcome from exc
                retry += 1
                if delay > 0:
                    await asyncio.sleep(delay)
                continue
            except BaseException:
                self.limiter.release(reservation)  # cancelled: assume it was counted
                raise
            latency = time.monotonic() - started
            self._connection_failures = 0
            prompt_tokens, completion_tokens = reply.prompt_tokens, reply.completion_tokens
            self.limiter.release(reservation, tokens=prompt_tokens + completion_tokens)
            self._learn(model, raw.headers, completion_tokens)
            text, finish = reply.text, reply.finish_reason
            parsed, error, filtered = reply.judged(ask)
            row = self._row(
                ctx,
                ask,
                retry,
                model,
                mode,
                messages,
                latency,
                response_model=reply.model,
                text=text,
                parsed=parsed,
                finish_reason=finish,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=self.pricing.cost(
                    reply.model or model, prompt_tokens, completion_tokens, fallback=model
                ),
                request_id=raw.headers.get("x-request-id"),
                error=error,
            )
            await self._audit(ctx, row)
            if filtered:
                raise DeadLetter("ContentFiltered", f"{_where(ctx)}: {error}"[:500])
            return Answer(text, finish, parsed, error, row)

    def _row(
        self,
        ctx: Context | None,
        ask: Ask,
        retry: int,
        model: str,
        mode: Mode,
        messages: list[dict[str, Any]],
        latency: float,
        **outcome: Any,
    ) -> LLMCallRecord:
        """The audit row of one request of ``ask``, with what came of it (``outcome``)."""
        return audit_row(
            ctx,
            kind=ask.kind,
            reask=ask.reask,
            retry=retry,
            model=model,
            mode=mode,
            messages=messages,
            latency=latency,
            max_chars=self.options.audit_max_chars,
            **outcome,
        )

    async def _audit(self, ctx: Context | None, row: LLMCallRecord) -> None:
        """Write a call's audit row (and its cost on the batch): sent now, and acknowledged
        before this returns unless the delivery writes behind (:mod:`handlers.writes`)."""
        if ctx is None:
            await write_audit(self.store, row)
        else:
            await delivery_of(ctx).writes.write(write_audit(self.store, row))

    async def _post(self, params: dict[str, Any]) -> Any:
        """``chat.completions.with_raw_response.create(**params)``, minus its typed-params
        transform and its typed answer.

        The body here is plain JSON built by :meth:`_params`, so the SDK's walk over it
        against its TypedDicts would change nothing, and of its ``ChatCompletion`` model
        :class:`_Reply` needs six fields, read from the JSON: both are skipped for their CPU
        cost. Everything else is the SDK's own path: authentication and Azure deployment URLs,
        timeouts, the status-code errors :func:`~handlers.llm.errors.translate` knows, and the
        raw response (headers, and the body as text from ``.parse()``).
        """
        body = dict(params)
        headers = {**(body.pop("extra_headers", None) or {}), _RAW_RESPONSE_HEADER: "true"}
        return await self.openai.post(
            "/chat/completions", cast_to=str, body=body, options={"headers": headers}
        )

    def _features_for(self, model: str) -> _Features:
        features = self._features.get(model)
        if features is None:
            features = _Features(token_parameter=self.options.token_parameter)
            self._features[model] = features
        return features

    @staticmethod
    def _mode(ask: Ask, features: _Features) -> Mode:
        return features.modes[0] if ask.kind == "extract" else "text"

    def _params(
        self,
        model: str,
        ask: Ask,
        mode: Mode,
        messages: list[dict[str, Any]],
        features: _Features,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"model": model, "messages": messages}
        if ask.kind == "extract":
            if mode == "json_schema":
                params["response_format"] = ask.schema.response_format()
            elif mode == "json_object":
                params["response_format"] = {"type": "json_object"}
        if ask.temperature is not None and features.temperature:
            params["temperature"] = ask.temperature
        if ask.max_tokens is not None:
            params[features.token_parameter] = ask.max_tokens
        if ask.extra_headers:
            params["extra_headers"] = dict(ask.extra_headers)
        return params

    def _estimate(self, model: str, ask: Ask, mode: Mode, messages: list[dict[str, Any]]) -> int:
        schema = ask.schema.schema if mode == "json_schema" and ask.schema is not None else None
        prompt = self.tokens.count_messages(messages, schema)
        if ask.max_tokens is not None:
            return prompt + ask.max_tokens
        learnt = self._completion_estimates.get(model)
        expected = self.options.completion_estimate if learnt is None else learnt * 1.25 + 16
        return prompt + int(expected)

    def _learn(self, model: str, headers: Mapping[str, str], completion_tokens: int) -> None:
        previous = self._completion_estimates.get(model)
        self._completion_estimates[model] = (
            float(completion_tokens)
            if previous is None
            else 0.8 * previous + 0.2 * completion_tokens
        )
        for kind in ("requests", "tokens"):
            if headers.get(f"x-ratelimit-remaining-{kind}") == "0":
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
                if reset:
                    self.limiter.pause(model, reset)

    def _failed(
        self, exc: openai.OpenAIError, model: str, reservation: Reservation
    ) -> HandlerOutcome:
        """Translate a failure and tell the limiter what it means."""
        outcome = translate(exc)
        if never_connected(exc):
            self.limiter.release(reservation, tokens=0)
            self._connection_failures += 1
            if self._connection_failures >= self.options.unreachable_after:
                return SystemicFailure(
                    "EndpointUnreachable",
                    f"{self.openai.base_url}: {self._connection_failures} connection attempts "
                    f"failed in a row: {connection_failure(exc)}",
                )
            return outcome
        if isinstance(exc, openai.APITimeoutError):
            self.limiter.release(reservation)  # it may have been served and counted
            return outcome
        self._connection_failures = 0
        rate_limited = isinstance(exc, openai.RateLimitError)
        self.limiter.release(reservation, tokens=0, rate_limited=rate_limited)
        if rate_limited and isinstance(outcome, Retry):
            self.limiter.pause(model, outcome.after if outcome.after is not None else 1.0)
        return outcome

    def _retry_delay(self, outcome: HandlerOutcome, retry: int) -> float | None:
        """Seconds to wait before retrying here, or None to raise ``outcome`` now."""
        if not isinstance(outcome, Retry) or retry >= self.options.max_retries:
            return None
        if outcome.after is not None:
            if outcome.after > self.options.max_retry_after:
                return None
            if outcome.reason == "LLMRateLimited":
                return 0.0  # the limiter's pause holds every caller of the model
            return outcome.after
        return backoff_delay(retry + 1, self._backoff, rng=self._rng)

    def _adapt(self, features: _Features, exc: BaseException, mode: Mode, model: str) -> bool:
        """Stop sending what a 400 says the server lacks; True if the request should go again."""
        parameter = unsupported_parameter(exc)
        if parameter == "response_format" and mode != "text" and mode in features.modes:
            features.modes.remove(mode)
            logger.warning(
                "%s rejects response_format %s: using %s from now on",
                model,
                mode,
                features.modes[0],
            )
            return True
        if parameter == "temperature" and features.temperature:
            features.temperature = False
            logger.info("%s only takes its default temperature", model)
            return True
        if parameter in ("max_tokens", "max_completion_tokens"):
            other = (
                "max_tokens" if parameter == "max_completion_tokens" else "max_completion_tokens"
            )
            if features.token_parameter == parameter:
                features.token_parameter = other
                logger.info("%s wants %s", model, other)
                return True
        return False

    # -- mode ------------------------------------------------------------------------------------

    async def llm_mode(self, ctx: Context) -> LLMMode:
        """How ``ctx``'s calls go (:func:`~handlers.llm.mode.resolve_llm_mode`): the batch's
        mode (read once per ``mode_refresh`` per batch), the handler's, the settings'."""
        spec = ctx.handler
        if spec.ordered_by:
            return "live"
        batch_mode: str | None = None
        if self.store is not None:
            now = time.monotonic()
            cached = self._batch_modes.get(ctx.batch_id)
            if cached is None or cached[1] <= now:
                batch_mode = await self.store.batch_llm_mode(ctx.batch_id)
                self._batch_modes[ctx.batch_id] = (batch_mode, now + self.options.mode_refresh)
            else:
                batch_mode = cached[0]
        mode = resolve_llm_mode(batch_mode, spec.llm_mode, self.options.llm_mode)
        if mode == "batch" and self.store is None:
            raise LLMConfigError("batch mode needs the store: give LLMClient a store")
        return mode

    # -- budgets ---------------------------------------------------------------------------------

    async def _check_budget(
        self, ctx: Context | None, reserved: Callable[[], Awaitable[float]] | None = None
    ) -> None:
        """Raise :class:`OverBudget` if ``ctx``'s batch (or document) has spent its budget;
        ``reserved`` adds what the batch has committed but not paid yet (batch mode's open
        requests), asked only when a budget applies."""
        store = self.store
        if store is None or ctx is None:
            return
        batch_id = ctx.batch_id
        budget = self.options.budget_per_batch_usd
        now = time.monotonic()
        if budget is not None or self._unbudgeted.get(batch_id, 0.0) <= now:
            if budget is not None or batch_id not in self._unbudgeted:
                # A budget (may) apply: this delivery's own earlier calls are counted first,
                # as when every write was synchronous (handlers.writes).
                await delivery_of(ctx).writes.flush(hurry=True)
            status = await store.batch_budget(batch_id)
            if status is not None and status.budget_usd is not None:
                budget = status.budget_usd
            if budget is None:  # nothing to enforce: look again only after a while
                self._unbudgeted[batch_id] = now + self.options.budget_refresh
            else:
                self._unbudgeted.pop(batch_id, None)
                spent = status.spent_usd if status is not None else await store.llm_spend(batch_id)
                if reserved is not None:
                    spent += await reserved()
                if spent >= budget:
                    if status is not None and not status.over_budget:
                        await store.set_batch_over_budget(batch_id, True)
                    raise OverBudget(batch_id, spent, budget)
        per_document = self.options.budget_per_document_usd
        if per_document is not None:
            # the document's own audit rows, summed below
            await delivery_of(ctx).writes.flush(hurry=True)
            spent = await store.llm_spend(
                batch_id, doc_id=ctx.doc_id, generation=ctx.envelope.generation
            )
            if spent >= per_document:
                raise OverBudget(batch_id, spent, per_document, doc_id=ctx.doc_id)


@dataclass(frozen=True, slots=True)
class _Reply:
    """What docbus reads of a chat completion, taken leniently from its JSON: compatible
    servers leave out fields (usage, refusal) that OpenAI always sends."""

    text: str
    finish_reason: str | None
    refusal: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int

    def judged(self, ask: Ask) -> tuple[Any, Exception | None, bool]:
        """What the answer is worth to ``ask``: its parsed value, the parser's error (the
        audit keeps it; a re-ask follows), and whether the model refused or was filtered."""
        if self.finish_reason == "content_filter" or self.refusal:
            why = f"model refused: {self.refusal}" if self.refusal else "answer filtered"
            return None, Filtered(why), True
        if ask.parse is None:
            return None, None, False
        try:
            return ask.parse(self.text), None, False
        except Exception as exc:  # the parser's verdict: recorded, then re-asked
            return None, exc, False

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> _Reply:
        """The reply in a chat completion's JSON (a live response's, or a batch line's
        ``response.body``); raises ValueError, TypeError, AttributeError or IndexError."""
        choices = data.get("choices") or [{}]
        choice, usage = choices[0], data.get("usage") or {}
        message = choice.get("message") or {}
        content = message.get("content") or ""
        if isinstance(content, list):  # content parts, as some servers answer
            content = "".join(str(part.get("text", "")) for part in content)
        return cls(
            text=str(content),
            finish_reason=choice.get("finish_reason"),
            refusal=message.get("refusal"),
            model=data.get("model"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    @classmethod
    def read(cls, raw: Any) -> _Reply:
        """The reply in ``raw`` (the SDK's raw response); raises the SDK's
        ``APIResponseValidationError`` for a body that is not a chat completion."""
        body = raw.parse()
        try:
            return cls.of(json.loads(body))
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            raise openai.APIResponseValidationError(
                response=raw.http_response,
                body=body[:2000] if isinstance(body, str) else None,
                message=f"not a chat completion: {exc}",
            ) from exc


def _http_client(llm: LLMSettings) -> Any:
    """The HTTP client ``llm.http_client`` names (None: the SDK's own httpx client)."""
    if llm.http_client == "httpx":
        return None
    return openai.DefaultAioHttpClient(timeout=llm.timeout)


def _messages_for(ask: Ask, mode: Mode) -> list[dict[str, Any]]:
    messages = [dict(message) for message in ask.messages]
    if ask.kind != "extract" or mode == "json_schema" or ask.schema is None:
        return messages
    instructions = ask.schema.instructions()
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = f"{messages[0].get('content') or ''}\n\n{instructions}".strip()
    else:
        messages.insert(0, {"role": "system", "content": instructions})
    return messages


def _where(ctx: Context | None) -> str:
    return current_step() or (ctx.handler_name if ctx is not None else "llm")
