"""The operator console: a small web UI over the operator queries of :mod:`docbus.ops`.

``docbus console`` (:mod:`docbus.cli.console`) serves it on 127.0.0.1 through :func:`listen`;
:func:`create_app` builds the Starlette application for a :class:`ConsoleConfig`. Pages
(:mod:`docbus.console.pages`): batches with live progress, one batch (throughput, latency, cost,
failures), dead letters grouped by reason and LLM failure type with a replay preview, a
document's lineage with a diff between result versions and rollback, results aggregated and
exported. The safety model is :mod:`docbus.console.security`; charts are server-side SVG
(:mod:`docbus.console.charts`).
"""

from __future__ import annotations

from docbus.console.app import ConsoleConfig, create_app
from docbus.console.security import Guard
from docbus.console.serve import Listening, listen

__all__ = ["ConsoleConfig", "Guard", "Listening", "create_app", "listen"]
