"""The document page: one document's lineage, a diff of two result versions, and rolling a
version back or undoing such a rollback.

:func:`docbus.ops.lineage.document_lineage` gives the document (text capped), and per handler
its deliveries, stored steps, every LLM call (prompt, answer, tokens, cost, latency, error),
dead letters and result versions (``/documents?batch=B&doc=D``: ids travel in the query, as a
document id may hold ``/``); ``&handler=H&a=1&b=2`` shows
:func:`docbus.ops.versions.diff_outputs` of two versions. Roll back: a GET shows what
:func:`docbus.ops.versions.plan_version_rollback` would change, a guarded POST carries it out
(:func:`docbus.ops.rollback.carry_out`); restore: the same for
:func:`docbus.ops.rollback.plan_undo` of the rollback that withdrew a version.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from docbus.console.app import ConsoleState, document_url, guard_action, local_path, render
from docbus.ops.lineage import document_lineage, documents_named
from docbus.ops.results import result_state
from docbus.ops.rollback import RollbackPlan, carry_out, plan_undo
from docbus.ops.versions import diff_outputs, plan_version_rollback

__all__ = ["routes"]


def _version(text: str | None) -> int | None:
    return int(text) if text else None


async def find_document(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    doc_id = (request.query_params.get("doc") or "").strip()
    batches = await documents_named(state.store, doc_id) if doc_id else []
    if len(batches) == 1:
        return RedirectResponse(document_url(batches[0], doc_id), status_code=303)
    return render(request, "find_document.html", doc_id=doc_id, batches=batches)


async def documents(request: Request) -> Response:
    if not request.query_params.get("batch"):
        return await find_document(request)
    return await document_page(request)


async def document_page(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    batch_id, doc_id = request.query_params["batch"], request.query_params.get("doc") or ""
    lineage = await document_lineage(state.store, batch_id, doc_id)
    diff = None
    chosen = request.query_params.get("handler")
    a, b = _version(request.query_params.get("a")), _version(request.query_params.get("b"))
    if chosen and a is not None and b is not None:
        versions = {v.version: v for h in lineage.handlers if h.handler == chosen
                    for v in h.versions}  # fmt: skip
        if a not in versions or b not in versions:
            raise ValueError(f"{chosen} has no version {a if a not in versions else b}")
        diff = {
            "handler": chosen,
            "a": versions[a],
            "b": versions[b],
            "changes": diff_outputs(versions[a].output, versions[b].output),
        }
    return render(request, "document.html", lineage=lineage, diff=diff, result_state=result_state)


def _plan_context(plan: RollbackPlan) -> dict[str, Any]:
    return {"plan": plan, "plan_json": plan.to_json()}


async def rollback_preview(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    params = request.query_params
    batch_id, doc_id = params.get("batch") or "", params.get("doc") or ""
    handler = params.get("handler") or ""
    version = int(params.get("version") or "0")
    plan = await plan_version_rollback(state.store, doc_id, handler, version)
    return render(
        request,
        "rollback_preview.html",
        action=request.url.path,
        back=document_url(batch_id, doc_id),
        hidden={"doc": doc_id, "handler": handler, "version": str(version)},
        **_plan_context(plan),
    )


async def rollback_send(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    fields, refused = await guard_action(request)
    if refused is not None:
        return refused
    plan = await plan_version_rollback(
        state.store,
        fields.get("doc", ""),
        fields.get("handler", ""),
        int(fields.get("version") or "0"),
    )
    record = await carry_out(state.store, plan) if plan.changes else None
    return render(request, "rollback_done.html", record=record, **_plan_context(plan))


async def undo_preview(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    rollback_id = request.path_params["rollback_id"]
    plan = await plan_undo(state.store, rollback_id)
    return render(
        request,
        "rollback_preview.html",
        action=request.url.path,
        back=local_path(request.query_params.get("back"), "/batches"),
        hidden={},
        **_plan_context(plan),
    )


async def undo_send(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    _, refused = await guard_action(request)
    if refused is not None:
        return refused
    plan = await plan_undo(state.store, request.path_params["rollback_id"])
    record = await carry_out(state.store, plan) if plan.changes else None
    return render(request, "rollback_done.html", record=record, **_plan_context(plan))


def routes() -> list[Route]:
    return [
        Route("/documents", documents),
        Route("/documents/rollback", rollback_preview, methods=["GET"]),
        Route("/documents/rollback", rollback_send, methods=["POST"]),
        Route("/rollbacks/{rollback_id}/undo", undo_preview, methods=["GET"]),
        Route("/rollbacks/{rollback_id}/undo", undo_send, methods=["POST"]),
    ]
