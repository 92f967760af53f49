"""The chaos suite's JSON line: what the run did (:class:`Tally`) and what the audit found.

:func:`json_line` is a plain function of the run's options, its :class:`Tally` and the
:class:`~_chaos_audit.Audit`, so the line's shape is defined in one place. :data:`FAILING`
names the counts that must be 0 (the exit status is 1 otherwise). Neighbours:
``bench/chaos.py`` (the run), ``bench/_chaos_audit.py`` (the counts and their definitions).
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _chaos_audit import DEFINITIONS, Audit

FAILING = (
    "lost",
    "duplicate_current",
    "done_and_dead",
    "unfinished",
    "left_on_subscription",
    "dlq_without_record",
    "bad_input_unrecorded",
)
"""Per-handler counts that must be 0: any other value makes the exit status 1 (and so does a
secret or whole document found in a log, ``secrets_in_logs``)."""


@dataclass
class Tally:
    """What the run did and saw, beside the audit."""

    done: dict[str, int] = field(default_factory=dict)
    """Faults and other scheduled events carried out, by kind."""
    worker_exits: list[str] = field(default_factory=list)
    """Workers that exited by themselves (restarted like killed ones)."""
    publishers: list[dict[str, Any]] = field(default_factory=list)
    """The verdict on each bad input file's publisher run."""
    publish_failures: list[str] = field(default_factory=list)
    raw_refused: dict[str, str] = field(default_factory=dict)
    """Raw bad messages the broker refused at send time (kind → error)."""
    raw_sent: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    stopped_because: str = ""
    workers_killed_at_stop: int = 0
    publisher_logs: list[Path] = field(default_factory=list)

    def count(self, kind: str) -> None:
        self.done[kind] = self.done.get(kind, 0) + 1


def _share(part: int, whole: int) -> float:
    return round(part / max(1, whole), 5)


def json_line(
    options: argparse.Namespace,
    tally: Tally,
    audit: Audit,
    *,
    documents: int,
    raw_kinds: int,
    settings: str,
    wall: float,
) -> dict[str, Any]:
    """The run's one JSON line."""
    handlers = audit.per_handler
    totals = {name: sum(getattr(c, name) for c in handlers.values()) for name in FAILING}
    failed = {name: count for name, count in totals.items() if count}
    if audit.logs.secrets:
        failed["secrets_in_logs"] = len(audit.logs.secrets)
    rework = {
        name: sum(getattr(c.rework, name) for c in handlers.values())
        for name in ("redone_calls", "redone_tokens", "repeated_calls", "repeated_tokens",
                     "first_pass_tokens")
    }  # fmt: skip
    outcomes: dict[str, int] = audit.llm_stats.get("outcomes", {})
    faults = {k: v for k, v in outcomes.items() if k not in ("ok", "length") and v}
    requests = int(audit.llm_stats.get("requests", 0))
    publishers = tally.publishers
    return {
        "bench": "chaos",
        "ok": not failed,
        "failed": failed,
        "seed": options.seed,
        "short": options.short,
        "documents": documents,
        "handlers": list(handlers),
        "workers": options.workers,
        "concurrency": options.concurrency,
        "wall_s": round(wall, 1),
        "timings_s": {k: round(v, 1) for k, v in tally.timings.items()},
        "stopped_because": tally.stopped_because,
        "chaos": {
            "worker_kills": tally.done.get("kill_worker", 0),
            "worker_kills_planned": options.kills,
            "mongo_freezes": tally.done.get("freeze_mongo", 0),
            "mongo_freeze_s": options.freeze,
            "mongo_kills": tally.done.get("kill_mongo", 0),
            "emulator_kills": tally.done.get("kill_emulator", 0),
            "worker_exits": len(tally.worker_exits),
            "workers_sigkilled_at_stop": tally.workers_killed_at_stop,
            "llm_requests": requests,
            "llm_faults_injected": sum(faults.values()),
            "llm_fault_share": round(sum(faults.values()) / max(1, requests), 4),
            "llm_faults": faults,
        },
        "totals": {
            **totals,
            "steps_redone": rework["redone_calls"],
            "redone_token_share": _share(rework["redone_tokens"], rework["first_pass_tokens"]),
            "steps_repeated": rework["repeated_calls"],
            "repeated_token_share": _share(rework["repeated_tokens"], rework["first_pass_tokens"]),
            "calls_without_audit": requests - audit.audit_rows,
            "llm_audit_rows": audit.audit_rows,
            "secrets_in_logs": len(audit.logs.secrets),
        },
        "per_handler": {
            name: {
                "documents": c.documents,
                "done": c.done,
                "dead_lettered": c.dead_lettered,
                **{k: getattr(c, k) for k in FAILING},
                "steps_redone": c.rework.redone_calls,
                "redone_token_share": _share(c.rework.redone_tokens, c.rework.first_pass_tokens),
                "steps_repeated": c.rework.repeated_calls,
                "repeated_token_share": _share(
                    c.rework.repeated_tokens, c.rework.first_pass_tokens
                ),
                "dead_letter_reasons": dict(c.dead_letter_reasons),
                "examples": c.examples,
            }
            for name, c in handlers.items()
        },
        "secrets_found": audit.logs.secrets[:20],
        "tracebacks_in_logs": {
            "workers_and_publishers": dict(audit.logs.tracebacks),
            "stand_ins": dict(audit.stand_in_tracebacks),
        },
        "logs_scanned": {"files": audit.logs.files, "bytes": audit.logs.bytes},
        "bad_inputs": {
            "publisher": {
                "files": len(publishers),
                "bad_line_unreported": [
                    p["kind"] for p in publishers if not p["bad_line_reported"]
                ],
                "crashed": [p["kind"] for p in publishers if p["crashed"]],
                "failed_whole_file": [
                    p["kind"] for p in publishers if p["failed"] and not p["crashed"]
                ],
                "valid_lines_not_sent": sum(p["valid_not_sent"] for p in publishers),
            },
            "raw": {
                "kinds": raw_kinds,
                "sent": tally.raw_sent,
                "refused_by_broker": tally.raw_refused,
            },
        },
        "publish_failures": tally.publish_failures,
        "worker_exits": tally.worker_exits[:20],
        "notes": {
            **DEFINITIONS,
            "failing": "exit status 1 when any of "
            + ", ".join((*FAILING, "secrets_in_logs"))
            + " is above 0",
            "settings": settings,
        },
        "python": platform.python_version(),
    }
