"""The console's safety model as pure decisions: who may start it where, who may read and act."""

from __future__ import annotations

from docbus.console.security import Guard, loopback, refusal

ORIGIN = "http://127.0.0.1:8765"


def test_only_loopback_may_serve_without_a_token() -> None:
    assert loopback("127.0.0.1") and loopback("::1") and loopback("[::1]")
    assert loopback("localhost") and loopback("127.1.2.3")
    assert not loopback("0.0.0.0") and not loopback("192.168.1.5") and not loopback("myhost")
    assert refusal("127.0.0.1", None) is None
    why = refusal("0.0.0.0", None)
    assert why is not None and "DOCBUS_CONSOLE__TOKEN" in why and "0.0.0.0" in why
    assert refusal("0.0.0.0", "secret") is None


def test_a_session_comes_only_from_the_token_and_never_carries_it() -> None:
    guard = Guard("secret")
    assert guard.session_for("wrong") is None and guard.session_for("") is None
    session = guard.session_for("secret")
    assert session is not None and "secret" not in session
    assert guard.session_valid(session)
    assert not Guard("secret").session_valid(session)  # another process: another key
    assert not guard.session_valid("forged") and not guard.session_valid(None)


def test_an_action_needs_the_session_the_csrf_token_and_the_same_origin() -> None:
    guard = Guard("secret")
    session = guard.session_for("secret")
    csrf = guard.csrf_for(session)
    assert csrf is not None and guard.action_refused(session, csrf, ORIGIN, ORIGIN) is None
    assert guard.action_refused(session, csrf, None, ORIGIN) is None  # no Origin sent
    assert "not logged in" in str(guard.action_refused(None, csrf, ORIGIN, ORIGIN))
    assert "CSRF" in str(guard.action_refused(session, None, ORIGIN, ORIGIN))
    assert "CSRF" in str(guard.action_refused(session, "0" * 64, ORIGIN, ORIGIN))
    assert "another site" in str(guard.action_refused(session, csrf, "http://evil", ORIGIN))
    assert "another site" in str(guard.action_refused(session, csrf, "null", ORIGIN))


def test_read_only_refuses_every_action_and_reads_follow_the_binding() -> None:
    read_only = Guard(None)
    assert not read_only.actions and read_only.session_for("anything") is None
    assert "read-only" in str(read_only.action_refused(None, None, None, ORIGIN))
    assert read_only.may_read(None)
    remote = Guard("secret", reads_need_session=True)
    assert not remote.may_read(None)
    assert remote.may_read(remote.session_for("secret"))


def test_a_back_link_from_the_query_stays_on_the_console() -> None:
    from docbus.console.app import local_path

    assert local_path("/documents?batch=b&doc=d", "/x") == "/documents?batch=b&doc=d"
    for hostile in ("javascript:alert(1)", "//evil.example/", "/\\evil.example", "http://e", None):
        assert local_path(hostile, "/batches") == "/batches"
