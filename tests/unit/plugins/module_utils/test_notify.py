"""Notifications: each webhook format, the mail, the next step, and no token anywhere it could be read."""

from __future__ import annotations

import json

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _notify

TOKEN = "tk_" + "s3cr3t" * 4
EVENT = _notify.complete({"kind": "upgrade", "outcome": "reverted", "app": "notes", "host": "shop1",
                          "summary": "The upgrade of notes to 2.1 failed its health gate and was reverted.", "at": "2026-12-02T10:00:00Z"})


def test_an_event_gets_its_title_and_next_step():
    assert EVENT["title"] == "selfhost.rollback upgrade reverted: notes on shop1"
    assert EVENT["next_step"].startswith("nothing is urgent: the app runs the release before again")
    assert _notify.complete({"kind": "drill", "outcome": "drill_failed"})["next_step"].startswith("the restore point is not proven")
    assert _notify.next_step("anything", "failed").startswith("read the summary")


@pytest.mark.parametrize("fmt, auth_header", [("generic", "Authorization"), ("ntfy", "Authorization"), ("gotify", "X-Gotify-Key"),
                                              ("slack", None)])
def test_every_format_carries_the_story_and_keeps_the_token_in_a_header(fmt, auth_header):
    url, headers, body = _notify.render({"url": "https://hooks.example/x", "format": fmt, "token": TOKEN}, EVENT)
    assert url == "https://hooks.example/x"
    text = body.decode()
    assert TOKEN not in text
    for part in ("notes", "shop1", "reverted", "nothing is urgent"):
        assert part in text, (fmt, part)
    if auth_header:
        assert TOKEN in headers[auth_header]
    else:
        assert TOKEN not in json.dumps(headers)
    if fmt == "ntfy":
        assert headers["Title"] == EVENT["title"] and headers["Priority"] == "default"
    if fmt == "gotify":
        assert json.loads(body)["priority"] == 4
    if fmt == "slack":
        assert set(json.loads(body)) == {"text"}


def test_a_failure_is_urgent():
    failed = _notify.complete({"kind": "upgrade", "outcome": "revert_failed", "app": "notes"})
    _url, headers, _body = _notify.render({"url": "https://ntfy.example/t", "format": "ntfy"}, failed)
    assert headers["Priority"] == "high"


def test_a_url_is_shown_without_credentials_or_query():
    assert _notify.shown_url("https://user:pw@hooks.example:8443/p/x?token=abc") == "https://hooks.example:8443/p/x"


def test_the_mail_says_the_same():
    message = _notify.message_of({"sender": "alerts@example.com", "to": ["a@example.com", "b@example.com"]}, EVENT)
    assert message["Subject"] == EVENT["title"] and message["To"] == "a@example.com, b@example.com"
    assert "next step: nothing is urgent" in message.get_content()


def test_an_unreachable_webhook_is_one_line_not_an_exception():
    def refuse(*_args, **_kwargs):
        raise OSError("connection refused")
    row = _notify.send_webhook(refuse, {"url": "http://127.0.0.1:9/x?token=abc", "format": "generic", "token": TOKEN}, EVENT, 1)
    assert row == {"channel": "webhook", "format": "generic", "to": "http://127.0.0.1:9/x", "delivered": False,
                   "error": "connection refused"}
