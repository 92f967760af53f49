"""The console's safety model: who may read, who may act, and that an action is meant.

Pure decisions, no I/O, tested without a server:

- :func:`loopback` says whether an address only this machine can reach; :func:`refusal` says
  why a console must not start (another interface without an action token).
- :class:`Guard` holds the action token (None: read-only). A browser proves it knows the token
  once — ``/?token=...`` (the URL printed at start) or the log-in form — and gets a session
  cookie: an HMAC of the token under a key that lives as long as the process (the cookie
  never carries the token itself). Every action is a POST carrying the session cookie *and* a
  CSRF token, the HMAC of the session under the same key, that only pages of this console
  embed; a request from another origin (``Origin`` header) is refused too. Off loopback,
  every page needs the session, not only actions.

Neighbours: :mod:`docbus.console.app` applies these, :mod:`docbus.console.serve` decides the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field

__all__ = ["SESSION_COOKIE", "Guard", "loopback", "new_token", "refusal"]

SESSION_COOKIE = "docbus_console"


def loopback(host: str) -> bool:
    """True for an address (or ``localhost``) only this machine can reach."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def refusal(host: str, token: str | None) -> str | None:
    """Why a console must not start on ``host`` with ``token``, or None when it may."""
    if token is None and not loopback(host):
        return (
            f"refusing to serve on {host} without an action token: anyone who can reach it "
            "could read documents and replay or roll back; set DOCBUS_CONSOLE__TOKEN (or "
            "--token), or serve on 127.0.0.1"
        )
    return None


def new_token() -> str:
    """A fresh random action token (URL-safe)."""
    return secrets.token_urlsafe(24)


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Guard:
    """The action token and the keys derived from it for one console process."""

    token: str | None
    """None: read-only, no action is possible."""
    reads_need_session: bool = False
    """Off loopback: every page needs a session."""
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @property
    def actions(self) -> bool:
        return self.token is not None

    def token_matches(self, given: str | None) -> bool:
        """The token offered is the action token (constant time)."""
        if self.token is None or not given:
            return False
        return hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    def session_for(self, given: str | None) -> str | None:
        """The session cookie's value for a correct token, else None."""
        if not self.token_matches(given):
            return None
        assert self.token is not None
        return _mac(self.key, f"session:{self.token}")

    def session_valid(self, cookie: str | None) -> bool:
        if self.token is None or not cookie:
            return False
        expected = _mac(self.key, f"session:{self.token}")
        return hmac.compare_digest(cookie.encode("utf-8"), expected.encode("utf-8"))

    def csrf_for(self, cookie: str | None) -> str | None:
        """The CSRF token pages embed for this session (None without one)."""
        if not self.session_valid(cookie):
            return None
        assert cookie is not None
        return _mac(self.key, f"csrf:{cookie}")

    def may_read(self, cookie: str | None) -> bool:
        return not self.reads_need_session or self.session_valid(cookie)

    def action_refused(
        self, cookie: str | None, csrf: str | None, origin: str | None, own_origin: str
    ) -> str | None:
        """Why an action (a POST) is refused, or None when it may go ahead."""
        if self.token is None:
            return "this console is read-only: start it with an action token to act"
        if not self.session_valid(cookie):
            return "not logged in: open the URL with ?token= printed at start, or log in"
        if origin is not None and origin != own_origin:
            return f"a request from another site ({origin}) is refused"
        expected = self.csrf_for(cookie)
        if not csrf or expected is None or not hmac.compare_digest(csrf, expected):
            return "the form is stale or forged (CSRF token missing or wrong): reload the page"
        return None
