#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: notify
short_description: Tell people how a run ended - webhooks (generic JSON, ntfy, Gotify, Slack or Discord) and mail
version_added: 0.1.0
description:
  - Sends one event - the app, the host, the outcome, the run's own sentence and the next step - to every configured
    webhook and by mail over SMTP, when its outcome is one of O(outcomes).
  - The roles call it from C(rescue) and on notable outcomes (an upgrade reverted, a rollback blocked, a drill failed, a red
    restore point) with the inventory's C(rollback_notify); see C(docs/notifications.md).
  - Tokens and passwords (O(webhooks[].token), O(mail.password)) are C(no_log); they go into a request header or the SMTP login
    only, never into a message, a subject, a result or a log. Results show each webhook's URL without its query and credentials.
  - A notification that cannot be delivered never hides the outcome it tells - the module warns and returns C(delivered=false)
    for it, unless O(required=true).
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
attributes:
  check_mode:
    support: full
    description: Renders every message and returns it in RV(sent) with C(delivered=null); nothing is sent.
  diff_mode:
    support: none
    description: Nothing on the host changes.
  idempotent:
    support: none
    description: Every run that is not in check mode sends again; that is its purpose.
options:
  event:
    description: What to tell.
    type: dict
    required: true
    suboptions:
      kind:
        description: The run - V(upgrade), V(rollback), V(drill), V(pre_upgrade), V(report), V(schedule), ...
        type: str
        required: true
      outcome:
        description: How it ended (V(reverted), V(revert_failed), V(failed), V(blocked), V(drill_failed), V(red), ...).
        type: str
        required: true
      app:
        description: The app's name.
        type: str
      host:
        description: The host's inventory name.
        type: str
      summary:
        description: The run's own sentence (a failure message, a drill's note).
        type: str
      next_step:
        description: What the operator should do; by default the collection's sentence for the kind and outcome.
        type: str
      details:
        description: More lines (the lost data, the reasons).
        type: list
        elements: str
        default: []
  outcomes:
    description: The outcomes that are told; others return RV(told=false) and send nothing.
    type: list
    elements: str
    default: [failed, reverted, revert_failed, blocked, drill_failed, recovery_failed, red]
  webhooks:
    description: Webhooks, each sent one HTTP POST.
    type: list
    elements: dict
    default: []
    suboptions:
      url:
        description:
          - Where to post - an ntfy topic URL (V(https://ntfy.sh/shop-alerts)), Gotify's C(/message) URL, a Slack incoming
            webhook URL or a Discord webhook URL with C(/slack) appended, or any endpoint that takes JSON.
        type: str
        required: true
      format:
        description:
          - V(generic) - a JSON object with every field of the event (C(source), C(kind), C(app), C(host), C(outcome), C(summary),
            C(next_step), C(details), C(at), C(title)).
          - V(ntfy) - the text as body, with C(Title), C(Priority) (high for failures) and C(Tags) headers.
          - V(gotify) - JSON C(title), C(message) and C(priority) (8 for failures).
          - V(slack) - JSON C(text), which Slack and Discord's Slack-compatible endpoint both take.
        type: str
        choices: [generic, ntfy, gotify, slack]
        default: generic
      token:
        description: Sent as C(Authorization Bearer) (generic, ntfy) or C(X-Gotify-Key) (gotify); never in the body.
        type: str
      validate_certs:
        description: Check the server's TLS certificate.
        type: bool
        default: true
  mail:
    description: Mail over SMTP; one message to every address of O(mail.to).
    type: dict
    suboptions:
      host:
        description: The SMTP server.
        type: str
        required: true
      port:
        description: Its port.
        type: int
        default: 25
      security:
        description: V(none) (plain SMTP), V(starttls) (upgrade the connection, typically port 587) or V(tls) (port 465).
        type: str
        choices: [none, starttls, tls]
        default: none
      username:
        description: Login name, when the server needs one.
        type: str
      password:
        description: Login password.
        type: str
      sender:
        description: The From address.
        type: str
        required: true
      to:
        description: The addresses.
        type: list
        elements: str
        required: true
      validate_certs:
        description: Check the server's TLS certificate (V(starttls), V(tls)).
        type: bool
        default: true
  required:
    description: Fail when a channel cannot be reached, instead of warning.
    type: bool
    default: false
  timeout:
    description: Seconds allowed for each delivery.
    type: float
    default: 10
seealso:
  - module: selfhost.rollback.operation
"""

EXAMPLES = r"""
- name: Tell the phone and the team's mailbox that the upgrade was reverted
  selfhost.rollback.notify:
    event:
      kind: upgrade
      outcome: reverted
      app: notes
      host: "{{ inventory_hostname }}"
      summary: "{{ ansible_failed_result.msg }}"
    webhooks:
      - url: https://ntfy.sh/shop-alerts
        format: ntfy
        token: "{{ vault_ntfy_token }}"
    mail:
      host: smtp.example.com
      port: 587
      security: starttls
      username: alerts@example.com
      password: "{{ vault_smtp_password }}"
      sender: alerts@example.com
      to: [owner@example.com]
"""

RETURN = r"""
told:
  description: Whether the event's outcome is one of O(outcomes) (false - nothing was sent).
  returned: always
  type: bool
sent:
  description: One entry per channel.
  returned: always
  type: list
  elements: dict
  contains:
    channel:
      description: V(webhook) or V(mail).
      type: str
    format:
      description: The webhook's format.
      type: str
    to:
      description: The webhook's URL without query and credentials, or the mail's addresses.
      type: str
    delivered:
      description: V(true) once the server accepted it, V(false) when it could not be delivered, V(null) in check mode.
      type: bool
    status:
      description: The webhook's HTTP status.
      type: int
    error:
      description: Why it could not be delivered.
      type: str
  sample: [{channel: webhook, format: ntfy, to: "https://ntfy.sh/shop-alerts", delivered: true, status: 200}]
message:
  description: The text every channel carries (the title, app, host, outcome, time, summary and next step).
  returned: always
  type: str
outcome:
  description: V(sent) (every channel took it), V(partly_sent), V(not_sent) (no channel took it), V(skipped) (not in O(outcomes)) or V(planned) (check mode).
  returned: always
  type: str
"""

from ansible.module_utils.urls import open_url

from ansible_collections.selfhost.rollback.plugins.module_utils import _notify
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule


def notify(module: AppModule) -> dict:
    params = module.params
    event = _notify.complete(dict(params["event"]))
    text = _notify.text_of(event)
    if event["outcome"] not in params["outcomes"]:
        return {"told": False, "sent": [], "message": text, "outcome": "skipped",
                "reasons": [f"outcome {event['outcome']} is not one of outcomes ({', '.join(params['outcomes'])})"]}
    if not params["webhooks"] and not params["mail"]:
        raise OperatorError("notify has nowhere to send: give webhooks or mail (the inventory's rollback_notify)")
    if module.check_mode:
        planned = [{"channel": "webhook", "format": h["format"], "to": _notify.shown_url(h["url"]), "delivered": None}
                   for h in params["webhooks"]]
        if params["mail"]:
            planned.append({"channel": "mail", "to": ", ".join(params["mail"]["to"]), "delivered": None})
        return {"told": True, "sent": planned, "message": text, "outcome": "planned"}
    sent = [_notify.send_webhook(open_url, hook, event, params["timeout"]) for hook in params["webhooks"]]
    if params["mail"]:
        sent.append(_notify.send_mail(params["mail"], event, params["timeout"]))
    missed = [row for row in sent if not row["delivered"]]
    reasons = [f"{row['channel']} {row['to']}: not delivered ({row.get('error')})" for row in missed]
    if missed and params["required"]:
        module.result.update(told=True, sent=sent, message=text)
        raise OperatorError("notification not delivered: " + "; ".join(reasons))
    for reason in reasons:
        module.warn(reason)
    outcome = "not_sent" if len(missed) == len(sent) else "partly_sent" if missed else "sent"
    return {"changed": len(missed) < len(sent), "told": True, "sent": sent, "message": text, "outcome": outcome, "reasons": reasons}


def main() -> None:
    module = AppModule(
        {
            "event": {"type": "dict", "required": True, "options": {
                "kind": {"type": "str", "required": True},
                "outcome": {"type": "str", "required": True},
                "app": {"type": "str"},
                "host": {"type": "str"},
                "summary": {"type": "str"},
                "next_step": {"type": "str"},
                "details": {"type": "list", "elements": "str", "default": []},
            }},
            "outcomes": {"type": "list", "elements": "str", "default": list(_notify.DEFAULT_ON)},
            "webhooks": {"type": "list", "elements": "dict", "default": [], "options": {
                "url": {"type": "str", "required": True},
                "format": {"type": "str", "default": "generic", "choices": list(_notify.FORMATS)},
                "token": {"type": "str", "no_log": True},
                "validate_certs": {"type": "bool", "default": True},
            }},
            "mail": {"type": "dict", "options": {
                "host": {"type": "str", "required": True},
                "port": {"type": "int", "default": 25},
                "security": {"type": "str", "default": "none", "choices": ["none", "starttls", "tls"]},
                "username": {"type": "str"},
                "password": {"type": "str", "no_log": True},
                "sender": {"type": "str", "required": True},
                "to": {"type": "list", "elements": "str", "required": True},
                "validate_certs": {"type": "bool", "default": True},
            }},
            "required": {"type": "bool", "default": False},
            "timeout": {"type": "float", "default": 10},
        },
        app=False, docker=False, failure="notification failed",
    )
    module.run(notify)


if __name__ == "__main__":
    main()
