"""Notifications to a real local HTTP receiver and a real local SMTP server: a failed upgrade and a
failed scheduled drill each deliver one webhook and one mail with app, host, outcome and next step,
and no secret; the schedule's OnFailure= unit does not tell the drill's failure twice, and tells a
job that failed without a word."""

from __future__ import annotations

import asyncore
import json
import os
import re
import shlex
import subprocess
import threading
import uuid
import warnings
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import COLLECTIONS_PATH, VENV_PYTHON, free_port, write_inventory

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import smtpd  # pylint: disable=deprecated-module  # Python 3.11's own SMTP server, a real one

TOKEN = "ntfy-tk-" + uuid.uuid4().hex


class Receiver:
    """An HTTP server that keeps every POST (path, headers, body)."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Mailbox(smtpd.SMTPServer):
    """An SMTP server that keeps every message."""

    def __init__(self, port: int) -> None:
        self.messages: list = []
        self.port = port
        super().__init__(("127.0.0.1", port), None, decode_data=False)
        self.thread = threading.Thread(target=asyncore.loop, kwargs={"timeout": 0.2, "map": self._map}, daemon=True)
        self.thread.start()

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):  # noqa: ARG002 - smtpd's signature
        self.messages.append(message_from_bytes(data))


@pytest.fixture
def receivers():
    receiver = Receiver()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mailbox = Mailbox(free_port())
    try:
        yield receiver, mailbox
    finally:
        receiver.close()
        mailbox.close()


def told(receiver: Receiver, mailbox: Mailbox) -> tuple[list[dict], list]:
    return [json.loads(p["body"]) for p in receiver.posts], list(mailbox.messages)


def assert_no_secret(*texts: str, secrets: tuple[str, ...]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret leaked: {text[:300]}"


def test_a_failed_upgrade_and_a_failed_scheduled_drill_each_tell_once(demo_app, run_playbook, receivers, tmp_path):
    receiver, mailbox = receivers
    demo = demo_app
    notify = {"webhooks": [{"url": f"http://127.0.0.1:{receiver.port}/hooks/shop", "format": "generic", "token": TOKEN}],
              "mail": {"host": "127.0.0.1", "port": mailbox.port,
                       "sender": "rollback@shop.example", "to": ["owner@shop.example"]},
              "told_dir": str(tmp_path / "told")}
    inventory = write_inventory(tmp_path / "inventory.json", group_vars={
        "rollback_apps": [demo.definition()], "rollback_store": str(demo.store), "rollback_notify": notify})
    secrets = (TOKEN, demo.password)

    # 1. a failed upgrade: reverted, and told once, at -vvvv without the token
    run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "2.1"}}, inventory=inventory, verbosity=4)
    assert run.rc != 0
    assert_no_secret(run.stdout, run.stderr, secrets=(TOKEN,))
    posts, mails = told(receiver, mailbox)
    assert len(posts) == 1 and len(mails) == 1, (posts, [m["Subject"] for m in mails])
    post = posts[0]
    assert (post["kind"], post["app"], post["host"], post["outcome"]) == ("upgrade", demo.name, "localhost", "reverted"), post
    assert "health gate" in post["summary"] and post["next_step"].startswith("nothing is urgent"), post
    assert receiver.posts[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    mail = mails[0]
    assert mail["Subject"] == f"selfhost.rollback upgrade reverted: {demo.name} on localhost"
    body = mail.get_payload(decode=True).decode()
    assert f"app: {demo.name}" in body and "host: localhost" in body and "next step: nothing is urgent" in body, body
    assert_no_secret(receiver.posts[0]["body"].decode(), mail.as_string(), secrets=secrets)

    # 2. the schedule's drill, run as its timer runs it, fails its smoke request: told once
    release_id = json.loads((demo.store / demo.name / "current_release.json").read_text())["release_id"]
    units = tmp_path / "units"
    units.mkdir()
    book = tmp_path / "schedule.yml"
    book.write_text(json.dumps([{"name": "Schedule", "hosts": "localhost", "gather_facts": False, "roles": [{
        "role": "selfhost.rollback.schedule", "vars": {
            "schedule_backend": "systemd", "schedule_systemd_dir": str(units), "schedule_manage_units": False,
            "schedule_inventory": str(inventory), "schedule_working_dir": str(tmp_path),
            "schedule_env": {"ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS_PATH)},
            "schedule_jobs": [{"name": "drill", "playbook": "selfhost.rollback.drill", "on_calendar": "Sun *-*-* 03:30:00",
                               "cron": "30 3 * * 0", "extra_args": ["-e", json.dumps({
                                   "drill_target": release_id,
                                   "drill_settings": {demo.name: {"smoke": [{"path": "/healthz", "contains": "no such answer"}]}}})]}]}}]}]))
    assert run_playbook(book).rc == 0
    service = (units / "selfhost-rollback-drill.service").read_text()
    assert "OnFailure=selfhost-rollback-notify@%n.service" in service
    invocation = uuid.uuid4().hex
    job = unit_command(service, {"INVOCATION_ID": invocation})
    assert job.returncode != 0, job.stdout[-2000:]
    posts, mails = told(receiver, mailbox)
    assert len(posts) == 2 and len(mails) == 2, [p["outcome"] for p in posts]
    post, mail = posts[1], mails[1]
    assert (post["kind"], post["app"], post["outcome"]) == ("drill", demo.name, "drill_failed"), post
    assert "no such answer" in json.dumps(post) and post["next_step"].startswith("the restore point is not proven"), post
    assert mail["Subject"] == f"selfhost.rollback drill drill_failed: {demo.name} on localhost"
    assert_no_secret(receiver.posts[1]["body"].decode(), mail.as_string(), job.stdout, secrets=secrets)

    # 3. the unit's OnFailure= runs the notify playbook: the drill told already, so nothing more
    on_failure = (units / "selfhost-rollback-notify@.service").read_text()
    again = unit_command(on_failure, {"MONITOR_INVOCATION_ID": invocation, "MONITOR_SERVICE_RESULT": "exit-code"},
                         instance="selfhost-rollback-drill.service")
    assert again.returncode == 0, again.stdout[-2000:]
    assert len(receiver.posts) == 2 and len(mailbox.messages) == 2
    # ... and a job that failed before it could say a word is told by it
    silent = unit_command(on_failure, {"MONITOR_INVOCATION_ID": uuid.uuid4().hex, "MONITOR_SERVICE_RESULT": "exit-code"},
                          instance="selfhost-rollback-backup.service")
    assert silent.returncode == 0, silent.stdout[-2000:]
    posts, mails = told(receiver, mailbox)
    assert len(posts) == 3 and len(mails) == 3
    assert (posts[2]["kind"], posts[2]["outcome"], posts[2]["app"]) == ("schedule", "failed", "selfhost-rollback-backup.service")
    assert "journalctl -u selfhost-rollback-backup.service" in posts[2]["summary"]


def unit_command(unit: str, env: dict[str, str], instance: str = "") -> subprocess.CompletedProcess:
    """Run a unit's ExecStart= the way systemd does: its Environment= lines, %i and ${VAR} expanded."""
    run_env = dict(os.environ)
    for line in unit.splitlines():
        if line.startswith("Environment="):
            key, value = shlex.split(line[len("Environment="):])[0].split("=", 1)
            run_env[key] = value
    run_env.update(env)
    command = next(line[len("ExecStart="):] for line in unit.splitlines() if line.startswith("ExecStart="))
    command = command.replace("%i", instance)
    command = re.sub(r"\$\{(\w+)\}", lambda m: run_env.get(m.group(1), ""), command)
    argv = shlex.split(command)
    assert Path(argv[0]).name == "ansible-playbook" and Path(argv[0]).parent == Path(VENV_PYTHON).parent, argv[0]
    return subprocess.run(argv, capture_output=True, text=True, env=run_env, timeout=900, check=False)
