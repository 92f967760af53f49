"""The console's web application: a Starlette app that serves server-rendered pages.

:func:`create_app` builds it for one :class:`ConsoleConfig` (settings, the action
:class:`~docbus.console.security.Guard`, the topology the batches page peeks the broker with).
Its lifespan connects one :class:`~docbus.store.Store`. This module holds what every page
shares — the Jinja2 environment (autoescape on: a document or an LLM answer that holds HTML is
shown as text), the security headers (a Content-Security-Policy that runs only this console's
own script), the token log-in and the guard on every POST, and the translation of errors into
a page that says what is wrong — and the pages themselves live in :mod:`docbus.console.pages`.
Every figure a page shows comes from an operator query in :mod:`docbus.ops`; nothing is counted
here. Neighbours: :mod:`docbus.cli.console` (``docbus console``), :mod:`docbus.console.charts`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from docbus.console.security import SESSION_COOKIE, Guard, loopback
from docbus.errors import DocbusError
from docbus.settings import Settings
from docbus.store import Store, StoreUnavailable

if TYPE_CHECKING:
    from docbus.ops.backlog import Backlog
    from docbus.ops.status import BatchStatus
    from docbus.topology import Topology

__all__ = ["ConsoleConfig", "create_app", "document_url", "local_path", "render"]

logger = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass
class ConsoleConfig:
    """What one console serves: the settings every command reads, its guard, its topology."""

    settings: Settings
    guard: Guard
    host: str = "127.0.0.1"
    topology: Topology | None = None
    refresh_seconds: float = 3.0


@dataclass
class ConsoleState:
    """What the pages share while the console runs."""

    config: ConsoleConfig
    store: Store
    previous: dict[str, BatchStatus] = field(default_factory=dict)
    """The last observation of each batch, for documents/s between two refreshes."""
    backlogs: dict[str, tuple[float, Backlog]] = field(default_factory=dict)
    """Batch → (when, what the broker held of it), for settled batches."""


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _query(base: dict[str, Any], **changes: Any) -> str:
    merged = {**base, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "", False)}, doseq=True)


_env = Environment(
    loader=PackageLoader("docbus.console", "templates"),
    autoescape=True,  # every value is escaped unless a template says otherwise (none does)
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["json"] = _json
_env.filters["when"] = _when
_env.globals["query"] = _query


def document_url(batch_id: str, doc_id: str) -> str:
    """The document page's address (ids travel in the query: a document id may hold ``/``)."""
    return "/documents?" + urlencode({"batch": batch_id, "doc": doc_id})


def local_path(target: str | None, default: str) -> str:
    """``target`` when it is a path of this console (``/...``), else ``default``: a link taken
    from a query parameter never leads to another site or runs ``javascript:``."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return default


_env.globals["document_url"] = document_url


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """A page: ``template`` with ``context``, the session's CSRF token and log-in state."""
    state: ConsoleState = request.app.state.console
    guard = state.config.guard
    cookie = request.cookies.get(SESSION_COOKIE)
    html = _env.get_template(template).render(
        request=request,
        path=request.url.path,
        actions=guard.actions,
        logged_in=guard.session_valid(cookie),
        csrf=guard.csrf_for(cookie) or "",
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


def message(request: Request, title: str, text: str, status_code: int) -> Response:
    return render(request, "message.html", status_code, title=title, text=text)


# -- the guard around every request -------------------------------------------------------------


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


async def guard_action(request: Request) -> tuple[dict[str, str], Response | None]:
    """The POSTed form, and a refusal page when the action may not go ahead."""
    state: ConsoleState = request.app.state.console
    form = await request.form()
    fields = {key: str(value) for key, value in form.multi_items() if isinstance(value, str)}
    why = state.config.guard.action_refused(
        request.cookies.get(SESSION_COOKIE),
        fields.get("csrf"),
        request.headers.get("origin"),
        _own_origin(request),
    )
    if why is not None:
        logger.warning("console: refused %s %s: %s", request.method, request.url.path, why)
        return fields, message(request, "Refused", why, 403)
    return fields, None


def form_lists(request_form: Any, name: str) -> list[str]:
    return [str(value) for value in request_form.getlist(name)]


class _Headers:
    """Security headers on every response; the token log-in; reads off loopback need it."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        early = self._early(request)
        if early is not None:
            await _secured(early)(scope, receive, send)
            return

        async def secured_send(event: dict[str, Any]) -> None:
            if event["type"] == "http.response.start":
                headers = list(event.get("headers", []))
                headers.extend((k.encode(), v.encode()) for k, v in _SECURITY_HEADERS.items())
                event = {**event, "headers": headers}
            await send(event)

        await self.app(scope, receive, secured_send)

    def _early(self, request: Request) -> Response | None:
        state: ConsoleState = request.app.state.console
        guard = state.config.guard
        token = request.query_params.get("token")
        if token is not None:
            session = guard.session_for(token)
            if session is None:
                return HTMLResponse("<h1>Refused</h1><p>wrong token</p>", status_code=403)
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", path="/")
            return response
        if request.url.path.startswith(("/static/", "/login")):
            return None
        if not guard.may_read(request.cookies.get(SESSION_COOKIE)):
            return RedirectResponse("/login", status_code=303)
        return None


_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _secured(response: Response) -> Response:
    response.headers.update(_SECURITY_HEADERS)
    return response


# -- errors -------------------------------------------------------------------------------------


async def _not_found(request: Request, exc: Exception) -> Response:
    return message(request, "Not found", str(exc), 404)


async def _docbus_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StoreUnavailable):
        return message(request, "MongoDB unavailable", str(exc), 503)
    if getattr(exc, "transient", False):
        return message(request, "Unavailable", str(exc), 503)
    return message(request, "Cannot do that", str(exc), 400)


async def _bad_value(request: Request, exc: Exception) -> Response:
    return message(request, "Bad request", str(exc), 400)


# -- log-in ---------------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    return render(request, "login.html")


async def login(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    form = await request.form()
    session = state.config.guard.session_for(str(form.get("token") or ""))
    if session is None:
        return message(request, "Refused", "wrong token", 403)
    response = RedirectResponse("/batches", status_code=303)
    response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", path="/")
    return response


async def home(request: Request) -> Response:
    return RedirectResponse("/batches", status_code=303)


def create_app(config: ConsoleConfig, *, store: Store | None = None) -> Starlette:
    """The console for ``config``; it connects a store from the settings (or uses ``store``)."""
    from docbus.console import pages
    from docbus.ops import NotFound

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own = store or Store.from_settings(config.settings)
        if store is None:
            await own.connect()
        app.state.console = ConsoleState(config, own)
        try:
            yield
        finally:
            if store is None:
                await own.close()

    hosts = ["127.0.0.1", "localhost", "[::1]", "::1"] if loopback(config.host) else ["*"]
    if config.host not in hosts and hosts != ["*"]:
        hosts.append(config.host)
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            *pages.routes(),
            Mount("/static", StaticFiles(packages=[("docbus.console", "static")]), name="static"),
        ],
        middleware=[
            # A page on another site cannot reach a loopback console through DNS rebinding.
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            Middleware(_Headers),
        ],
        exception_handlers={
            NotFound: _not_found,
            DocbusError: _docbus_error,
            ValueError: _bad_value,
        },
        lifespan=lifespan,
    )
    return app
