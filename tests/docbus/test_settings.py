from __future__ import annotations

import json
import ssl

import pytest
from pydantic import SecretStr, ValidationError

from docbus.errors import ConfigurationError
from docbus.servicebus import servicebus_client
from docbus.settings import LLMSettings, MongoSettings, ServiceBusSettings, Settings, masked

pytestmark = pytest.mark.usefixtures("clean_env")


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert settings.worker.concurrency == 16
    assert settings.worker.prefetch == 0
    assert settings.worker.lock_renewal is True
    assert settings.worker.max_lock_renewal_duration == 3600.0
    assert settings.worker.shutdown_grace == 30.0
    assert settings.mongodb.database == "docbus"
    assert settings.llm.model == "gpt-4o-mini"
    assert settings.servicebus.configured is False


def test_nested_docbus_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCBUS_WORKER__CONCURRENCY", "3")
    monkeypatch.setenv("DOCBUS_WORKER__RETRY_BACKOFF_BASE", "0.5")
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", "other")
    monkeypatch.setenv("DOCBUS_SERVICEBUS__NAMESPACE", "myns.servicebus.windows.net")
    settings = Settings()
    assert settings.worker.concurrency == 3
    assert settings.worker.retry_backoff_base == 0.5
    assert settings.mongodb.database == "other"
    assert settings.servicebus.namespace == "myns.servicebus.windows.net"


def test_ecosystem_variables_are_honoured_below_docbus_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MONGODB_URI", "mongodb://db.example:27017")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ecosystem")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key")
    settings = Settings()
    assert settings.mongodb.uri.get_secret_value() == "mongodb://db.example:27017"
    assert settings.llm.api_key is not None
    assert settings.llm.api_key.get_secret_value() == "sk-ecosystem"
    assert settings.llm.base_url == "http://127.0.0.1:8000/v1"
    assert settings.llm.azure_endpoint == "https://x.openai.azure.com"
    assert settings.llm.azure_api_key is not None

    monkeypatch.setenv("DOCBUS_LLM__API_KEY", "sk-docbus")
    monkeypatch.setenv("DOCBUS_MONGODB__URI", "mongodb://docbus.example")
    settings = Settings()
    assert settings.llm.api_key is not None
    assert settings.llm.api_key.get_secret_value() == "sk-docbus"
    assert settings.mongodb.uri.get_secret_value() == "mongodb://docbus.example"
    # the rest of the group still comes from the ecosystem variables
    assert settings.llm.base_url == "http://127.0.0.1:8000/v1"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.worker.concurrency = 2


def test_connection_string_and_namespace_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="not both"):
        ServiceBusSettings(
            connection_string=SecretStr("Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=k"),
            namespace="x.servicebus.windows.net",
        )


def test_namespace_must_be_fully_qualified_and_is_normalised() -> None:
    with pytest.raises(ValidationError, match="fully qualified"):
        ServiceBusSettings(namespace="myns")
    assert (
        ServiceBusSettings(namespace="sb://myns.servicebus.windows.net/").namespace
        == "myns.servicebus.windows.net"
    )


def test_masked_hides_every_secret_and_keeps_the_rest() -> None:
    settings = Settings(
        servicebus=ServiceBusSettings(
            connection_string=SecretStr(
                "Endpoint=sb://localhost:5672;SharedAccessKeyName=Root;"
                "SharedAccessKey=S3cr3tKey=;UseDevelopmentEmulator=true"
            )
        ),
        mongodb=MongoSettings(
            uri=SecretStr(
                "mongodb://alice:pa%40ssw0rd@db1:27017,db2/?tlsCertificateKeyFilePassword=k3y"
            )
        ),
        llm=LLMSettings(
            api_key=SecretStr("sk-live-abcdef"), azure_api_key=SecretStr("azure-secret")
        ),
    )
    shown = masked(settings)
    text = json.dumps(shown, default=str)
    for secret in (
        "S3cr3tKey",
        "pa%40ssw0rd",
        "pa@ssw0rd",
        "k3y",
        "sk-live-abcdef",
        "azure-secret",
    ):
        assert secret not in text
    assert shown["servicebus"]["connection_string"] == (
        "Endpoint=sb://localhost:5672;SharedAccessKeyName=Root;"
        "SharedAccessKey=***;UseDevelopmentEmulator=true"
    )
    assert shown["mongodb"]["uri"].startswith("mongodb://alice:***@db1:27017,db2/")
    assert shown["llm"]["api_key"] == "***"
    assert shown["worker"]["concurrency"] == 16


def test_servicebus_client_needs_a_broker() -> None:
    with pytest.raises(ConfigurationError, match="DOCBUS_SERVICEBUS__CONNECTION_STRING"):
        servicebus_client(Settings())


async def test_servicebus_client_from_connection_string_or_namespace() -> None:
    by_string = servicebus_client(
        ServiceBusSettings(
            connection_string=SecretStr(
                "Endpoint=sb://localhost:5672;SharedAccessKeyName=Root;SharedAccessKey=k;"
                "UseDevelopmentEmulator=true"
            )
        )
    )
    async with by_string:
        assert by_string.fully_qualified_namespace.startswith("localhost")
    by_namespace = servicebus_client(ServiceBusSettings(namespace="myns.servicebus.windows.net"))
    async with by_namespace:
        assert by_namespace.fully_qualified_namespace == "myns.servicebus.windows.net"
    # one TLS context for every connection of the process, as strict as the SDK's own default
    shared = by_string._ssl_context
    assert shared is by_namespace._ssl_context
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname
    assert shared.cert_store_stats()["x509_ca"] > 0
