"""Fault decisions of the offline LLM server: which failure (if any) one request gets.

:func:`plan_faults` turns the :class:`~docbus.local.llm_server.config.Faults` rates, the latency
distribution and one request's seeded generator into a :class:`FaultPlan`. The server
(:mod:`docbus.local.llm_server.server`) seeds that generator from the config ``seed`` and the
request's sequence number, so a run with the same seed and request order fails the same requests;
the ``x-docbus-fault`` request header forces one exact fault for tests. Three draws are made for
every request whatever the outcome, so one knob's value does not shift the others' decisions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from docbus.local.llm_server.config import Faults, Latency

FAULT_HEADER = "x-docbus-fault"
STATUS_FAULTS = ("429", "500", "503", "timeout")
CONTENT_FAULTS = ("malformed", "schema")
FAULT_NAMES = (*STATUS_FAULTS, *CONTENT_FAULTS)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What happens to one request: a status fault, a content fault, and the delay."""

    status: str | None = None  # one of STATUS_FAULTS
    content: str | None = None  # one of CONTENT_FAULTS (JSON answers only)
    latency: float = 0.0


def plan_faults(
    faults: Faults, latency: Latency, rng: random.Random, override: str | None = None
) -> FaultPlan:
    """Decide one request's faults; ``override`` (a :data:`FAULT_NAMES` value) wins."""
    status_draw, content_draw = rng.random(), rng.random()
    delay = latency.sample(rng)
    if override is not None:
        if override not in FAULT_NAMES:
            raise ValueError(f"{FAULT_HEADER} must be one of {', '.join(FAULT_NAMES)}")
        if override in STATUS_FAULTS:
            return FaultPlan(status=override, latency=delay)
        return FaultPlan(content=override, latency=delay)
    status = None
    edge = 0.0
    for name, rate in zip(
        STATUS_FAULTS,
        (faults.rate_429, faults.rate_500, faults.rate_503, faults.rate_timeout),
        strict=True,
    ):
        edge += rate
        if status_draw < edge:
            status = name
            break
    content = None
    if content_draw < faults.rate_malformed:
        content = "malformed"
    elif content_draw < faults.rate_malformed + faults.rate_schema:
        content = "schema"
    return FaultPlan(status=status, content=content, latency=delay)
