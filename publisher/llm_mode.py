"""The LLM mode a batch is published (or replayed) in, and when batch mode is refused.

A batch's LLM calls run ``live`` (one request each, at once) or in ``batch`` mode (gathered into
the provider's Batch API at half the price, answered within hours). The mode is chosen at
publish (``docbus publish --llm-mode``, :func:`publisher.publish.publish_documents`) and kept on
the batch record, where the workers read it and a replay keeps it unless told otherwise
(:mod:`publisher.replay`). Ordered handlers (sessions) run one document of a session after the
other: each would wait a whole round for the one before it, so :func:`batch_mode_refusal` refuses
batch mode for a topic that has one — known from the topology (a subscription that requires
sessions: the worker insists ordered handlers have one) or from the handlers discovered in a
module. A pure decision, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from docbus.records import LLM_MODES, LLMMode
from docbus.topology import Topology, TopologyError

__all__ = ["LLM_MODES", "HandlerLike", "LLMMode", "batch_mode_refusal"]


class HandlerLike(Protocol):
    """What the refusal needs of a handler's spec (:class:`handlers.HandlerSpec`)."""

    @property
    def name(self) -> str: ...

    @property
    def topic(self) -> str: ...

    @property
    def ordered_by(self) -> str | None: ...


def batch_mode_refusal(
    topic: str,
    llm_mode: str | None,
    *,
    topology: Topology | None = None,
    handlers: Iterable[HandlerLike] = (),
) -> str | None:
    """Why ``topic`` cannot run in ``llm_mode``, as one line; None when it can.

    Only ``batch`` is ever refused: for a topic with an ordered handler among ``handlers``,
    or with a subscription that requires sessions in ``topology``.
    """
    if llm_mode != "batch":
        return None
    advice = "ordered handlers cannot wait hours for a batch round; publish it with --llm-mode live"
    for spec in handlers:
        if spec.topic == topic and spec.ordered_by:
            return (
                f"topic {topic!r} cannot run in batch mode: handler {spec.name!r} is ordered "
                f"(ordered_by={spec.ordered_by!r}); {advice}"
            )
    if topology is not None:
        try:
            subscriptions = topology.topic(topic).subscriptions
        except TopologyError:
            return None  # an unknown topic is refused elsewhere, with its own line
        for subscription in subscriptions:
            if subscription.requires_session:
                return (
                    f"topic {topic!r} cannot run in batch mode: subscription "
                    f"{subscription.name!r} requires sessions (an ordered handler); {advice}"
                )
    return None
