# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Notifications: one event, told to webhooks and by mail (private to the collection).

An *event* is what a run ended with on one app of one host: ``kind`` (upgrade, rollback, drill,
pre_upgrade, report, schedule), ``app``, ``host``, ``outcome`` (reverted, revert_failed, failed,
blocked, drill_failed, red...), ``summary`` (the run's own sentence) and ``next_step``, which
:func:`next_step` gives per kind and outcome when the caller has none. :func:`render` builds
each webhook format's request; :func:`send_webhook` and :func:`send_mail` deliver it. Tokens
and passwords go into headers and the SMTP login only, never into a body, a subject or a URL
that is reported back.
"""

from __future__ import annotations

import datetime
import json
import smtplib
import ssl
import typing as t
import urllib.parse
from email.message import EmailMessage

FORMATS = ("generic", "ntfy", "gotify", "slack")
DEFAULT_ON = ("failed", "reverted", "revert_failed", "blocked", "drill_failed", "recovery_failed", "red")
FAILURES = ("failed", "revert_failed", "recovery_failed", "drill_failed", "red")

NEXT_STEPS = {
    ("upgrade", "reverted"): "nothing is urgent: the app runs the release before again; find why the new version failed "
                             "(the summary says), then run the upgrade again",
    ("upgrade", "revert_failed"): "the app may be between releases: run selfhost.rollback.rollback for it now "
                                  "(the summary lists the choices)",
    ("upgrade", "failed"): "nothing was changed: fix what the summary names and run the upgrade again",
    ("upgrade", "blocked"): "nothing was changed: fix what the summary names and run the upgrade again",
    ("rollback", "failed"): "the app may be between releases: follow the choices in the summary",
    ("rollback", "blocked"): "nothing was changed: the target cannot be rolled back to; choose another release "
                             "(selfhost.rollback.report lists them) or fix what the summary names",
    ("rollback", "recovery_failed"): "an interrupted operation could not be finished: follow the choices in the summary",
    ("drill", "drill_failed"): "the restore point is not proven: read the drill record, fix what failed, and run "
                               "selfhost.rollback.drill again before the next upgrade",
    ("drill", "failed"): "the drill could not run: fix what the summary names and run selfhost.rollback.drill again",
    ("report", "red"): "a restore point is missing or unproven: run selfhost.rollback.pre_upgrade or a drill for the app",
    ("schedule", "failed"): "a scheduled job failed: read its log (journalctl -u UNIT, or the cron mail) and run it by hand",
}


def next_step(kind: str, outcome: str) -> str:
    return NEXT_STEPS.get((kind, outcome)) or ("read the summary and the run's output, fix what it names, and run again"
                                               if outcome in FAILURES else "nothing to do")


def complete(event: dict[str, t.Any]) -> dict[str, t.Any]:
    """The event with ``at``, ``next_step`` and a one-line ``title``."""
    out = {k: v for k, v in event.items() if v not in (None, "")}
    out.setdefault("kind", "run")
    out.setdefault("outcome", "failed")
    out.setdefault("at", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    out.setdefault("next_step", next_step(out["kind"], out["outcome"]))
    where = " on ".join(p for p in (out.get("app"), out.get("host")) if p)
    out["title"] = f"selfhost.rollback {out['kind']} {out['outcome']}" + (f": {where}" if where else "")
    return out


def text_of(event: dict[str, t.Any]) -> str:
    lines = [event["title"], ""]
    for label, key in (("app", "app"), ("host", "host"), ("outcome", "outcome"), ("when", "at")):
        if event.get(key):
            lines.append(f"{label}: {event[key]}")
    if event.get("summary"):
        lines += ["", str(event["summary"])]
    lines += ["", f"next step: {event['next_step']}"]
    for detail in event.get("details") or []:
        lines.append(f"- {detail}")
    return "\n".join(lines) + "\n"


def is_failure(event: dict[str, t.Any]) -> bool:
    return event.get("outcome") in FAILURES


def render(hook: dict[str, t.Any], event: dict[str, t.Any]) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and body of one webhook request in the hook's format."""
    fmt = hook.get("format") or "generic"
    url = hook["url"]
    headers = {"User-Agent": "selfhost.rollback"}
    token = hook.get("token")
    if fmt == "ntfy":
        headers.update({"Title": event["title"], "Priority": "high" if is_failure(event) else "default",
                        "Tags": "rotating_light" if is_failure(event) else "information_source",
                        "Content-Type": "text/plain; charset=utf-8"})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return url, headers, text_of(event).encode()
    if fmt == "gotify":
        if token:
            headers["X-Gotify-Key"] = token
        headers["Content-Type"] = "application/json"
        body = {"title": event["title"], "message": text_of(event), "priority": 8 if is_failure(event) else 4,
                "extras": {"client::display": {"contentType": "text/plain"}}}
        return url, headers, json.dumps(body).encode()
    if fmt == "slack":  # Slack's incoming webhooks; Discord takes the same at its webhook URL + /slack
        headers["Content-Type"] = "application/json"
        return url, headers, json.dumps({"text": text_of(event)}).encode()
    headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"source": "selfhost.rollback"}
    body.update(event)
    return url, headers, json.dumps(body, sort_keys=True).encode()


def shown_url(url: str) -> str:
    """The URL as a result may show it: no credentials, no query (either may hold a token)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def send_webhook(open_url: t.Callable[..., t.Any], hook: dict[str, t.Any], event: dict[str, t.Any], timeout: float) -> dict[str, t.Any]:
    url, headers, body = render(hook, event)
    row = {"channel": "webhook", "format": hook.get("format") or "generic", "to": shown_url(url)}
    try:
        response = open_url(url, data=body, headers=headers, method="POST", timeout=timeout,
                            validate_certs=hook.get("validate_certs", True))
        row.update(delivered=True, status=getattr(response, "status", None) or response.getcode())
    except Exception as exc:  # pylint: disable=broad-except  # every failure to deliver is one line, never the run's end
        row.update(delivered=False, error=" ".join(str(exc).split())[:300])
    return row


def message_of(mail: dict[str, t.Any], event: dict[str, t.Any]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = event["title"]
    message["From"] = mail["sender"]
    message["To"] = ", ".join(mail["to"])
    message["X-Selfhost-Rollback-Outcome"] = str(event.get("outcome"))
    message.set_content(text_of(event))
    return message


def send_mail(mail: dict[str, t.Any], event: dict[str, t.Any], timeout: float) -> dict[str, t.Any]:
    row = {"channel": "mail", "to": ", ".join(mail["to"]), "server": f"{mail['host']}:{mail['port']}"}
    try:
        context = ssl.create_default_context()
        if not mail.get("validate_certs", True):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if mail.get("security") == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(mail["host"], mail["port"], timeout=timeout, context=context)
        else:
            server = smtplib.SMTP(mail["host"], mail["port"], timeout=timeout)
        with server:
            if mail.get("security") == "starttls":
                server.starttls(context=context)
            if mail.get("username"):
                server.login(mail["username"], mail.get("password") or "")
            server.send_message(message_of(mail, event))
        row["delivered"] = True
    except (OSError, smtplib.SMTPException) as exc:
        row.update(delivered=False, error=" ".join(str(exc).split())[:300])
    return row
