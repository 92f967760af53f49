"""Operator queries: what status, report, audit, dead letters, results, rollback and parked
messages show, as plain data.

Each function takes a connected :class:`~docbus.store.Store` (and a selection) and returns
dataclasses or pydantic models — with a ``to_json`` / ``*_json`` of the same figures — and never
renders, parses a command line or prints, so the CLI's tables, its ``--json`` and a web console
show the same numbers: :mod:`~docbus.ops.status` (progress per batch and handler, with the
broker's backlog, :mod:`~docbus.ops.backlog`), :mod:`~docbus.ops.report` (outcomes and LLM spend),
:mod:`~docbus.ops.audit` (LLM prompt/response rows), :mod:`~docbus.ops.dead_letters`,
:mod:`~docbus.ops.results` (result versions), :mod:`~docbus.ops.rollback` (plan, preview, carry
out), :mod:`~docbus.ops.parked` and :mod:`~docbus.ops.batches`. What a query cannot find is
:class:`NotFound`. The names below load on first use. Neighbours: :mod:`docbus.store` (the only
code that reads a collection), :mod:`docbus.cli` (renders these).
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from docbus.ops._not_found import NotFound
    from docbus.ops.audit import EXPORT_FIELDS, ExportFilter, export_row, export_rows
    from docbus.ops.backlog import Backlog, BacklogProbe
    from docbus.ops.batches import find_batches
    from docbus.ops.dead_letters import (
        GROUPS,
        DeadLetterDetail,
        DeadLetterGroup,
        body_summary,
        error_line,
        group_dead_letters,
        group_json,
        list_json,
        parse_time,
        show_dead_letter,
    )
    from docbus.ops.parked import ParkedOverview, ParkedSelection, parked_overview, request_resume
    from docbus.ops.report import (
        BatchReport,
        CallTally,
        StepFigures,
        Usage,
        collect_report,
        percentile,
        report_json,
    )
    from docbus.ops.results import choose_result, result_history, result_json, result_state
    from docbus.ops.rollback import (
        Change,
        RollbackError,
        RollbackPlan,
        Target,
        carry_out,
        plan_rollback,
        plan_undo,
        preview,
    )
    from docbus.ops.status import (
        BatchStatus,
        Parked,
        Probe,
        collect_status,
        parked_documents,
        retrying_counts,
        status_json,
        throughput,
        unfinished_counts,
    )

__all__ = [
    "EXPORT_FIELDS",
    "GROUPS",
    "Backlog",
    "BacklogProbe",
    "BatchReport",
    "BatchStatus",
    "CallTally",
    "Change",
    "DeadLetterDetail",
    "DeadLetterGroup",
    "ExportFilter",
    "NotFound",
    "Parked",
    "ParkedOverview",
    "ParkedSelection",
    "Probe",
    "RollbackError",
    "RollbackPlan",
    "StepFigures",
    "Target",
    "Usage",
    "body_summary",
    "carry_out",
    "choose_result",
    "collect_report",
    "collect_status",
    "error_line",
    "export_row",
    "export_rows",
    "find_batches",
    "group_dead_letters",
    "group_json",
    "list_json",
    "parked_documents",
    "parked_overview",
    "parse_time",
    "percentile",
    "plan_rollback",
    "plan_undo",
    "preview",
    "report_json",
    "request_resume",
    "result_history",
    "result_json",
    "result_state",
    "retrying_counts",
    "show_dead_letter",
    "status_json",
    "throughput",
    "unfinished_counts",
]

_HOMES = {
    "EXPORT_FIELDS": "audit",
    "GROUPS": "dead_letters",
    "Backlog": "backlog",
    "BacklogProbe": "backlog",
    "BatchReport": "report",
    "BatchStatus": "status",
    "CallTally": "report",
    "Change": "rollback",
    "DeadLetterDetail": "dead_letters",
    "DeadLetterGroup": "dead_letters",
    "ExportFilter": "audit",
    "NotFound": "_not_found",
    "Parked": "status",
    "ParkedOverview": "parked",
    "ParkedSelection": "parked",
    "Probe": "status",
    "RollbackError": "rollback",
    "RollbackPlan": "rollback",
    "StepFigures": "report",
    "Target": "rollback",
    "Usage": "report",
    "body_summary": "dead_letters",
    "carry_out": "rollback",
    "choose_result": "results",
    "collect_report": "report",
    "collect_status": "status",
    "error_line": "dead_letters",
    "export_row": "audit",
    "export_rows": "audit",
    "find_batches": "batches",
    "group_dead_letters": "dead_letters",
    "group_json": "dead_letters",
    "list_json": "dead_letters",
    "parked_documents": "status",
    "parked_overview": "parked",
    "parse_time": "dead_letters",
    "percentile": "report",
    "plan_rollback": "rollback",
    "plan_undo": "rollback",
    "preview": "rollback",
    "report_json": "report",
    "request_resume": "parked",
    "result_history": "results",
    "result_json": "results",
    "result_state": "results",
    "retrying_counts": "status",
    "show_dead_letter": "dead_letters",
    "status_json": "status",
    "throughput": "status",
    "unfinished_counts": "status",
}


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'docbus.ops' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"docbus.ops.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
