"""The offline LLM server: an OpenAI-compatible stand-in for tests, benchmarks and the demo.

``docbus llm-server`` (or :class:`LLMServer` in process) answers ``/v1/chat/completions`` and
``/v1/models`` deterministically under the model name ``docbus-offline``: a valid instance of a
requested JSON schema, a JSON object, or an extractive summary, all derived from the prompt, with
real usage figures. :class:`LLMServerConfig` adds latency, injected 429/500/503/timeouts,
malformed or schema-violating JSON, RPM/TPM and context limits, and a required API key, all
changeable at runtime. The handlers' LLM client (:mod:`handlers`) talks to it through the
``openai`` SDK exactly as to OpenAI; :mod:`docbus.testing.llm` provides the pytest fixture.

Modules: ``config`` (knobs), ``server`` (HTTP and lifecycle), ``completions`` (answers),
``instances`` and ``schemas`` (JSON schema instances and checks), ``text`` and ``tokens`` (reading
and counting the prompt), ``faults``, ``limits``, ``stats``, ``errors``; the ``docbus
llm-server`` command is :mod:`docbus.cli.llm_server`.
"""

from __future__ import annotations

from docbus.local.llm_server.config import OFFLINE_MODEL, Faults, Latency, Limits, LLMServerConfig
from docbus.local.llm_server.faults import FAULT_HEADER
from docbus.local.llm_server.instances import generate_instance
from docbus.local.llm_server.schemas import schema_errors
from docbus.local.llm_server.server import LLMServer
from docbus.local.llm_server.stats import Outcome
from docbus.local.llm_server.tokens import count_tokens

__all__ = [
    "FAULT_HEADER",
    "OFFLINE_MODEL",
    "Faults",
    "LLMServer",
    "LLMServerConfig",
    "Latency",
    "Limits",
    "Outcome",
    "count_tokens",
    "generate_instance",
    "schema_errors",
]
