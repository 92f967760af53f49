"""Settings: the one configuration object of docbus, read from the environment once, at the edge.

:class:`Settings` groups its options into small frozen sub-models — ``servicebus``,
``mongodb``, ``llm``, ``publisher``, ``worker`` and ``console`` — read from variables prefixed
``DOCBUS_`` with ``__`` between group and field (``DOCBUS_WORKER__CONCURRENCY=32``). The
ecosystem's own variables are honoured too, at a lower priority than the ``DOCBUS_`` ones:
``MONGODB_URI``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OPENAI_API_VERSION``,
``AZURE_OPENAI_ENDPOINT`` and ``AZURE_OPENAI_API_KEY``. Durations are seconds (float).
:func:`masked` renders the effective settings for ``docbus config`` with every secret hidden.
Neighbours: :mod:`docbus.servicebus` and :mod:`docbus.store` build their clients from these
objects; the CLI constructs them.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ConsoleSettings",
    "LLMBatchSettings",
    "LLMSettings",
    "ModelPrice",
    "ModelRateLimit",
    "MongoSettings",
    "PublisherSettings",
    "ServiceBusSettings",
    "Settings",
    "WorkerSettings",
    "masked",
]

MASK = "***"

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ServiceBusSettings(BaseModel):
    """How to reach Azure Service Bus (or an emulator): a connection string, or a namespace.

    With ``namespace`` the client authenticates with ``DefaultAzureCredential`` (Entra ID).
    Setting both is an error, so a stray variable cannot silently pick the wrong broker.
    """

    model_config = _FROZEN

    connection_string: SecretStr | None = None
    """``Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...``
    (plus ``UseDevelopmentEmulator=true`` for an emulator)."""
    namespace: str | None = None
    """Fully qualified namespace, e.g. ``myns.servicebus.windows.net``."""

    @field_validator("namespace")
    @classmethod
    def _fully_qualified(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        value = value.strip()
        value = re.sub(r"^(sb|amqps?|https?)://", "", value).rstrip("/")
        if "." not in value:
            raise ValueError(
                f"servicebus namespace {value!r} is not fully qualified; "
                f"use e.g. {value}.servicebus.windows.net"
            )
        return value

    @field_validator("connection_string")
    @classmethod
    def _well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        # The SDK's own parser, so what passes here is what the client accepts; its messages
        # name the missing part and never echo the key.
        from azure.servicebus import parse_connection_string

        try:
            parse_connection_string(value.get_secret_value())
        except ValueError as exc:
            raise ValueError(
                f"malformed connection string ({str(exc).rstrip('.')}); expected "
                "Endpoint=sb://NAMESPACE/;SharedAccessKeyName=NAME;SharedAccessKey=KEY "
                "(add ;UseDevelopmentEmulator=true for an emulator)"
            ) from None
        return value

    @model_validator(mode="after")
    def _one_way_in(self) -> ServiceBusSettings:
        if self.connection_string is not None and self.namespace is not None:
            raise ValueError(
                "set either DOCBUS_SERVICEBUS__CONNECTION_STRING or "
                "DOCBUS_SERVICEBUS__NAMESPACE, not both"
            )
        return self

    @property
    def configured(self) -> bool:
        """True when a broker is configured one way or the other."""
        return self.connection_string is not None or self.namespace is not None


class MongoSettings(BaseModel):
    """Where results, checkpoints, dead letters and audit records live (also ``MONGODB_URI``)."""

    model_config = _FROZEN

    uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    """MongoDB, Atlas, Cosmos DB or a local SecantusDB. Secret: it may hold a password."""

    @field_validator("uri")
    @classmethod
    def _a_mongodb_uri(cls, value: SecretStr) -> SecretStr:
        # pymongo would take "notauri" for a host name and time out on it much later; the
        # message names the scheme, never the value (it may hold a password)
        if not value.get_secret_value().strip().startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError(
                "not a MongoDB URI: it must start with mongodb:// or mongodb+srv://, "
                "e.g. mongodb://127.0.0.1:27017"
            )
        return value

    database: str = "docbus"
    """Database holding docbus's collections."""
    timeout: float = Field(default=10.0, gt=0)
    """Seconds to wait for a server before an operation fails."""
    write_linger: float = Field(default=0.025, ge=0, le=1.0)
    """Seconds a worker's audit rows, cost increments and checkpoints, written behind its
    handlers, may wait to leave in one command with others (0: leave at once). Nothing a
    handler waits for lingers."""
    write_concern: Literal["majority"] | Annotated[int, Field(ge=1)] = "majority"
    """``w`` of every write docbus must not lose (results, dead-letter, parked and replay
    records, documents, claim-check payloads, rollbacks): ``majority`` (default) or a number of
    members. Such a write is acknowledged only once the server would keep it through a crash;
    set 1 only for a server that refuses ``majority``."""
    journal: bool = True
    """``j`` of those writes: acknowledged only once in the server's on-disk journal. Turn off
    only for a server without a journal (an in-memory storage engine refuses ``j``)."""


class ModelPrice(BaseModel):
    """What a model costs, in USD per million tokens."""

    model_config = _FROZEN

    input: float = Field(ge=0)
    """USD per 1M prompt tokens."""
    output: float = Field(ge=0)
    """USD per 1M completion tokens."""
    batch_input: float | None = Field(default=None, ge=0)
    """USD per 1M prompt tokens through the Batch API; None: half of ``input``."""
    batch_output: float | None = Field(default=None, ge=0)
    """USD per 1M completion tokens through the Batch API; None: half of ``output``."""


class ModelRateLimit(BaseModel):
    """A model's rate limits as the provider grants them (``None``: unlimited)."""

    model_config = _FROZEN

    rpm: int | None = Field(default=None, gt=0)
    """Requests per minute."""
    tpm: int | None = Field(default=None, gt=0)
    """Tokens (prompt + completion) per minute."""


class LLMBatchSettings(BaseModel):
    """Batch-API mode (``llm.batch``): how pending requests become provider batches.

    Requests accumulate until the oldest has waited ``max_wait`` seconds, ``min_requests``
    (or ``min_bytes``) are pending, or no request has come for ``quiet`` seconds while no
    delivery is on its way back from the last round, then go in files of at most
    ``max_requests_per_file`` requests and ``max_file_bytes`` bytes (OpenAI: 50,000 / 200 MB;
    Azure Global Batch: 100,000 / 200 MB). One worker at a time submits (a lease of
    ``lease_ttl`` seconds renewed every ``renew_every``, and a pass sooner when a poll or a
    submission falls due); open provider batches are polled with a backoff from ``poll_base``
    up to ``poll_max`` seconds (sooner once their progress says they are about to finish); a
    group the provider refuses systemically (no quota, bad key) is submitted again after a
    backoff from ``refusal_base`` up to ``refusal_max``. With
    ``delete_files`` (the default) a provider batch's input, output and error files are deleted
    at the provider once its answers are stored.
    """

    model_config = _FROZEN

    max_requests_per_file: int = Field(default=50_000, ge=1)
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    max_wait: float = Field(default=60.0, ge=0)
    """Seconds the oldest pending request waits for company before its group is submitted."""
    quiet: float = Field(default=5.0, ge=0)
    """Seconds without a new request after which a group is submitted before ``max_wait``, once
    every delivery resumed from the last round has registered its next requests (or ended): a
    round that has all come in goes at once, in one file."""
    min_requests: int = Field(default=10_000, ge=1)
    min_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    poll_base: float = Field(default=5.0, gt=0)
    poll_max: float = Field(default=300.0, gt=0)
    refusal_base: float = Field(default=30.0, gt=0)
    refusal_max: float = Field(default=1800.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    """Provider batches one request may fail transiently in before it is dead-lettered."""
    max_expiries: int = Field(default=2, ge=1)
    """Times a request left unanswered by an expired batch is resubmitted; then
    ``BatchExpired``."""
    lease_ttl: float = Field(default=60.0, gt=0)
    renew_every: float = Field(default=15.0, gt=0)
    probe_every: float = Field(default=5.0, gt=0)
    """While submission backs off after a refused key, role or endpoint: seconds between free
    calls that end the back-off once the provider accepts the credentials again."""
    delete_files: bool = True
    """Delete a provider batch's files (input, output, error) once its outcome is stored; a
    crash in between leaves them to the next submitter pass, never an answer unstored."""
    queued_tokens: dict[str, PositiveInt] = Field(default_factory=dict)
    """Model (Azure: deployment) -> most estimated tokens its open provider batches may hold
    at once (Azure's enqueued-token quota): a submission that would pass it waits for open
    batches to finish; a request estimated above the whole quota is dead-lettered."""

    @model_validator(mode="after")
    def _renewal_below_ttl(self) -> LLMBatchSettings:
        if self.renew_every >= self.lease_ttl:
            raise ValueError("llm.batch.renew_every must be well below llm.batch.lease_ttl")
        return self


class LLMSettings(BaseModel):
    """The LLM endpoint behind ``ctx.llm``: OpenAI, Azure OpenAI or an OpenAI-compatible server."""

    model_config = _FROZEN

    api_key: SecretStr | None = None
    """OpenAI (or compatible server) key; also read from ``OPENAI_API_KEY``."""
    base_url: str | None = None
    """OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp); also ``OPENAI_BASE_URL``."""
    azure_endpoint: str | None = None
    """Azure OpenAI endpoint; also ``AZURE_OPENAI_ENDPOINT``. Without a key, Entra ID is used."""
    azure_api_key: SecretStr | None = None
    """Azure OpenAI key; also ``AZURE_OPENAI_API_KEY``."""
    azure_api_version: str = "2024-10-21"
    """Azure OpenAI REST API version; also ``OPENAI_API_VERSION``."""
    model: str = "gpt-4o-mini"
    """Model name (the deployment name on Azure OpenAI)."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds one LLM request may take before it counts as a transient failure."""
    pricing: dict[str, ModelPrice] = Field(default_factory=dict)
    """Prices that replace or extend the built-in table (:mod:`handlers.llm.pricing`), e.g.
    ``DOCBUS_LLM__PRICING='{"my-deployment": {"input": 0.15, "output": 0.6}}'``."""
    budget_per_batch_usd: float | None = Field(default=None, ge=0)
    """Most a batch may spend on LLM calls (a batch's own ``budget_usd`` wins); None: no cap."""
    budget_per_document_usd: float | None = Field(default=None, ge=0)
    """Most one document may spend on LLM calls, over all its deliveries; None: no cap."""
    requests_per_minute: int | None = Field(default=None, gt=0)
    """Requests per minute this process sends to each model (``rate_limits`` overrides it per
    model); None: unlimited. Several worker processes: give each its share of the quota."""
    tokens_per_minute: int | None = Field(default=None, gt=0)
    """Tokens per minute this process sends to each model; None: unlimited."""
    rate_limits: dict[str, ModelRateLimit] = Field(default_factory=dict)
    """Per-model limits, e.g. ``{"gpt-4o": {"rpm": 500, "tpm": 30000}}``."""
    rate_window: float = Field(default=60.0, gt=0)
    """Seconds of the sliding window the per-minute limits count over (60, as providers do)."""
    max_concurrency: int = Field(default=64, ge=1)
    """Upper bound of the requests in flight per model; halved on a 429, regained slowly."""
    max_retries: int = Field(default=3, ge=0)
    """Quick retries of a transient LLM error inside one call before the message is retried."""
    mode: Literal["live", "batch"] = "live"
    """How ``ctx.llm`` calls are sent when neither the batch (``publish --llm-mode``) nor the
    handler (``@handler(llm_mode=...)``) says: ``live``, or ``batch`` through the provider's
    Batch API at half the price (``llm.batch``)."""
    batch: LLMBatchSettings = Field(default_factory=LLMBatchSettings)
    http_client: Literal["aiohttp", "httpx"] = "aiohttp"
    """The openai SDK's HTTP transport. ``aiohttp`` (the SDK's aiohttp extra) spends about
    half the CPU per request of ``httpx`` at high concurrency (``bench/llm_bound.py``);
    ``httpx`` is the SDK's default, for proxies or networks that need its behaviour."""

    @property
    def configured(self) -> bool:
        """True when an endpoint is named: Azure OpenAI, a key for OpenAI, or a ``base_url``."""
        return bool(self.azure_endpoint or self.api_key is not None or self.base_url)


class PublisherSettings(BaseModel):
    """How the publisher sends."""

    model_config = _FROZEN

    send_concurrency: int = Field(default=4, ge=1, le=64)
    """Message batches in flight at once (one AMQP sender link each)."""
    max_message_size: int = Field(default=256 * 1024, ge=1024)
    """Bytes a message may take when the broker cannot be asked (dry runs): 256 KiB is the
    Standard tier's limit. When sending, the limit the broker announces is used instead."""
    chunk_size: int = Field(default=500, ge=1)
    """Documents recorded in Mongo per bulk write before their messages are sent."""
    send_attempts: int = Field(default=4, ge=1, le=20)
    """Times a message batch is sent before its documents are reported as failed, when the
    broker's refusal is transient (connection lost, busy, timeout; the SDK also retries
    inside each attempt). Resending is safe: message ids are fixed, duplicates are dropped."""
    send_retry_backoff: float = Field(default=0.5, ge=0)
    """Seconds before the second attempt; each further attempt waits twice as long."""


class WorkerSettings(BaseModel):
    """Knobs of a subscriber worker process."""

    model_config = _FROZEN

    concurrency: int = Field(default=16, ge=1)
    """Handlers running at once in one worker process."""
    receive_ahead: int | None = Field(default=None, ge=0)
    """Messages received beyond the free handler slots, each waiting (lock renewed) for the next
    slot to free up, so no slot waits for the broker. None: what the handlers get through in
    0.1 s at their recent pace, between an eighth of ``concurrency`` (at least 1) and 100 (0
    when lock renewal is off)."""
    prefetch: int = Field(default=0, ge=0)
    """Messages the receiver fetches ahead (0: only what is asked for, safest with long locks)."""
    ranged_completions: bool = True
    """Complete a run of consecutive deliveries with one AMQP disposition (``first..last``),
    awaiting every outcome; False: one disposition per message, as the SDK sends them (if a
    broker refuses ranges, a failed range is completed message by message anyway)."""
    lock_renewal: bool = True
    """Renew message locks while a handler runs (LLM calls outlast lock durations)."""
    max_lock_renewal_duration: float = Field(default=3600.0, gt=0)
    """Seconds after which a message's lock is no longer renewed."""
    retry_backoff_base: float = Field(default=2.0, gt=0)
    """Seconds of the first retry delay; it doubles with every further attempt."""
    retry_backoff_max: float = Field(default=300.0, gt=0)
    """Upper bound, in seconds, of one retry delay."""
    retry_jitter: float = Field(default=0.2, ge=0, le=1)
    """Fraction of a delay drawn at random (0.2: the delay varies by up to ±20 %)."""
    shutdown_grace: float = Field(default=30.0, ge=0)
    """Seconds in-flight handlers get to finish after SIGINT/SIGTERM; the rest is abandoned."""
    handler_timeout: float | None = Field(default=600.0, gt=0)
    """Seconds one attempt of a handler may take before it is cancelled and retried (a handler's
    own ``@handler(timeout=...)`` wins); None: no limit."""


class ConsoleSettings(BaseModel):
    """The operator console (``docbus console``)."""

    model_config = _FROZEN

    host: str = "127.0.0.1"
    """Interface to listen on. Anything but loopback needs ``token``."""
    port: int = Field(default=8765, ge=0, le=65535)
    """Port to listen on (0: any free one)."""
    token: SecretStr | None = None
    """Action token: replays and rollbacks need it (and, off loopback, every page). None on
    loopback: one is generated and printed at start (``--read-only``: none, no actions)."""


class _EcosystemEnv(PydanticBaseSettingsSource):
    """The variables other tools already define, mapped into docbus's groups."""

    _MAP: tuple[tuple[str, str, str], ...] = (
        ("MONGODB_URI", "mongodb", "uri"),
        ("OPENAI_API_KEY", "llm", "api_key"),
        ("OPENAI_BASE_URL", "llm", "base_url"),
        ("OPENAI_API_VERSION", "llm", "azure_api_version"),
        ("AZURE_OPENAI_ENDPOINT", "llm", "azure_endpoint"),
        ("AZURE_OPENAI_API_KEY", "llm", "azure_api_key"),
    )

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole mapping

    def __call__(self) -> dict[str, Any]:
        values: dict[str, dict[str, str]] = {}
        for variable, group, field in self._MAP:
            value = os.environ.get(variable)
            if value:
                values.setdefault(group, {})[field] = value
        return values


class Settings(BaseSettings):
    """Everything docbus can be told, grouped; see each group for its defaults.

    Priority, highest first: arguments to the constructor, ``DOCBUS_*`` variables, the ecosystem
    variables (``MONGODB_URI``, ``OPENAI_API_KEY``, ...), then the defaults.
    """

    model_config = SettingsConfigDict(
        env_prefix="DOCBUS_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    servicebus: ServiceBusSettings = ServiceBusSettings()
    mongodb: MongoSettings = MongoSettings()
    llm: LLMSettings = LLMSettings()
    publisher: PublisherSettings = PublisherSettings()
    worker: WorkerSettings = WorkerSettings()
    console: ConsoleSettings = ConsoleSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _EcosystemEnv(settings_cls)


def mask_connection_string(value: str) -> str:
    """Hide the key material of a Service Bus connection string, keep the rest readable."""
    return re.sub(
        r"(?i)(SharedAccessKey|SharedAccessSignature)=[^;]*",
        lambda m: f"{m.group(1)}={MASK}",
        value,
    )


def mask_mongo_uri(value: str) -> str:
    """Hide the password (and password-like options) of a MongoDB URI."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{quote(unquote(user), safe='')}:{MASK}@{hosts}" if ":" in userinfo else netloc
    query = re.sub(
        r"(?i)((?:tlsCertificateKeyFilePassword|password|authMechanismProperties)=)[^&]*",
        lambda m: f"{m.group(1)}{MASK}",
        parts.query,
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, safe to print: no key, password or signature shown."""
    data = settings.model_dump(mode="python")
    sb = settings.servicebus
    data["servicebus"]["connection_string"] = (
        mask_connection_string(sb.connection_string.get_secret_value())
        if sb.connection_string is not None
        else None
    )
    data["mongodb"]["uri"] = mask_mongo_uri(settings.mongodb.uri.get_secret_value())
    for key in ("api_key", "azure_api_key"):
        data["llm"][key] = MASK if getattr(settings.llm, key) is not None else None
    data["console"]["token"] = MASK if settings.console.token is not None else None
    return data
