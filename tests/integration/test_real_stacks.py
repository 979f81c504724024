"""Projects shaped the way people really ship them, deployed with a plain ``docker compose up -d``
in their directory, through pre_upgrade, upgrade (broken, then good) and rollback.

After every step the running project must be what ``docker compose config`` gives for the
directory: every service it defines (the override file's included, the inactive profile's not)
has a container on the image and with the settings Compose resolves; nothing else runs; the
one-shot migration ended with exit code 0. The app definition names no compose file and no
project name: Compose decides both.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import free_port, http, write_inventory
from stacks import assert_runs_what_compose_says, compose

STACKS = Path(__file__).parent / "stacks"


class Stack:
    """One copy of a corpus project in a temp directory, driven the way its user drives it."""

    def __init__(self, template: str, tmp_path: Path, docker_client) -> None:
        self.name = f"stack-{uuid.uuid4().hex[:8]}"
        self.dir = tmp_path / "srv" / template  # the directory's name is not the project's name
        shutil.copytree(STACKS / template, self.dir)
        self.port = free_port()
        self.password = f"canary-{secrets.token_hex(12)}"
        self.store = tmp_path / "ledger"
        self.client = docker_client
        self.env = {
            "STACK_NAME": self.name,
            "NOTES_VERSION": "1.0",
            "NOTES_DB_PASSWORD": self.password,
            "NOTES_PORT": str(self.port),
            "COMPOSE_PROFILES": "jobs",
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_env(self) -> None:
        lines = [f"{k}={v}" for k, v in self.env.items()]
        # quoted with a trailing comment: Compose reads 'concise answers', quotes and comment gone
        lines.append('ANSWER_STYLE="concise answers" # how the assistant replies')
        path = self.dir / ".env"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return compose(self.dir, *args, check=check)

    def definition(self) -> dict:
        return {
            "name": "shop-assistant",
            "project_dir": str(self.dir),
            "health": {"url": f"{self.url}/healthz"},
            "databases": [{"service": "db", "engine": "postgres", "database": "notes", "user": "notes"}],
            "volumes": ["dbdata", "uploads"],
            "schema_probe": {"service": "db", "sql": "select coalesce(max(version), 0) from schema_migrations",
                             "additive": ["2"]},
        }

    def containers(self) -> dict[str, object]:
        found = {}
        for container in self.client.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.name}"}):
            found.setdefault(container.labels["com.docker.compose.service"], []).append(container)
        return found

    def assert_runs_what_compose_says(self, step: str) -> None:
        config = assert_runs_what_compose_says(self.dir, self.client, step, one_shot=("migrate",))
        assert {"db", "migrate", "app", "worker", "sidecar"} == set(config["services"]), (step, sorted(config["services"]))

    def health(self) -> dict:
        status, body = http("GET", f"{self.url}/healthz")
        assert status == 200, (status, body)
        return body

    def add_note(self, title: str) -> None:
        status, reply = http("POST", f"{self.url}/notes", json.dumps({"title": title, "body": ""}).encode())
        assert status == 201, (status, reply)

    def titles(self) -> list[str]:
        status, reply = http("GET", f"{self.url}/notes")
        assert status == 200, (status, reply)
        return [n["title"] for n in reply]

    def destroy(self) -> None:
        # every profile, or the services of the profile .env switches on would stay behind
        self.compose("--profile", "jobs", "--profile", "gpu", "down", "-v", "--remove-orphans", "--timeout", "5", check=False)


@pytest.fixture
def ai_stack(tmp_path, docker_client, registry):
    stack = Stack("ai-stack", tmp_path, docker_client)
    stack.write_env()
    try:
        yield stack
    finally:
        stack.destroy()


def test_ai_stack_keeps_every_service_and_setting_through_the_cycle(ai_stack, run_playbook, tmp_path):
    stack = ai_stack
    stack.compose("up", "-d", "--wait", "--wait-timeout", "120")
    stack.assert_runs_what_compose_says("deployed")
    assert stack.health()["version"] == "1.0"
    assert "gpu-runner" not in stack.containers()
    inventory = write_inventory(tmp_path / "inventory.json",
                                group_vars={"rollback_apps": [stack.definition()], "rollback_store": str(stack.store)})
    ledger = stack.store / "shop-assistant"

    stack.add_note("order 1017: two mugs")

    # pre_upgrade finds the project Compose named (from the file's name:), with its override file
    run = run_playbook("selfhost.rollback.pre_upgrade", inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    stack.assert_runs_what_compose_says("after pre_upgrade")
    release = json.loads(next((ledger / "releases").glob("r-*.json")).read_text())
    assert release["compose"]["project_name"] == stack.name
    assert sorted(f["path"] for f in release["compose"]["files"]) == ["compose.override.yaml", "compose.yaml"]
    assert {"migrate", "sidecar", "worker"} <= set(release["services"])

    # a broken version whose one-shot migration succeeds (schema 3), then the app fails its gate:
    # reverted automatically, with the data, and nothing left stuck
    run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "2.1"}}, inventory=inventory)
    assert run.rc != 0
    op = json.loads((ledger / "last_operation.json").read_text())
    assert (op["kind"], op["outcome"], op["phase"]) == ("upgrade", "reverted", "done"), op
    assert not (ledger / "journal.json").exists()
    assert stack.health() == {"status": "ok", "version": "1.0", "schema": 1, "code_schema": 1}
    assert stack.titles() == ["order 1017: two mugs"]
    stack.assert_runs_what_compose_says("after the automatic revert")

    # a good version migrates in its one-shot service and passes the gate
    run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "1.1"}, "upgrade_max_p99_ratio": 0},
                       inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert stack.health()["version"] == "1.1"
    stack.assert_runs_what_compose_says("after the upgrade")

    # and back, the way the user runs it at 11 p.m.
    run = run_playbook("selfhost.rollback.rollback", inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert stack.health()["version"] == "1.0"
    assert stack.titles() == ["order 1017: two mugs"]
    stack.assert_runs_what_compose_says("after the rollback")
    assert "gpu-runner" not in stack.containers()
    for path in run.stdout, json.dumps(json.loads((ledger / "last_operation.json").read_text())):
        assert stack.password not in path


def test_a_project_started_under_another_name_is_one_sentence(ai_stack, module_playbook):
    """The inventory names a project; the containers in that directory say another: stop, name the option."""
    stack = ai_stack
    stack.compose("up", "-d", "--wait", "--wait-timeout", "120")
    app = dict(stack.definition(), project_name="shop")
    run, result = module_playbook("selfhost.rollback.app_info", {"app": app, "store": str(stack.store)})
    assert run.rc != 0
    assert f"belong to Compose project {stack.name!r}, not 'shop'" in result["msg"], result["msg"]
    assert f"set project_name: {stack.name}" in result["msg"]
    # files: the user brought it up with the base file only; the definition (Compose's defaults) reads the override too
    stack.compose("-f", "compose.yaml", "up", "-d")
    run, result = module_playbook("selfhost.rollback.app_info", {"app": stack.definition(), "store": str(stack.store)})
    assert run.rc != 0
    assert "were started with the compose files compose.yaml, but the definition reads compose.yaml, compose.override.yaml" \
        in result["msg"], result["msg"]


def test_env_values_are_read_as_compose_reads_them(ai_stack):
    """The env file parser against Compose itself, on the lines that trip hand-written parsers."""
    from ansible_collections.selfhost.rollback.plugins.module_utils._app import validate_app
    from ansible_collections.selfhost.rollback.plugins.module_utils._compose import Compose
    from ansible_collections.selfhost.rollback.plugins.module_utils._project import parse_env_text

    stack = ai_stack
    lines = ['A="x" # comment', "B='y' # c2", "C=plain # c3", "D=plain#nospace", 'E="multi\\nline \\"q\\" \\$HOME"',
             "F='lit ${A} \\n'", "G=${A}-exp", 'H="${B}-dq"', "I=  spaced  ", "J:colon", "export K=exported", "L=",
             "N=with'quote", "O=$A$B", 'P="a', 'b"', "Q=${NOPE:-fallback}"]
    text = "\n".join(lines) + "\n"
    (stack.dir / ".env").write_text((stack.dir / ".env").read_text() + text)
    ours = parse_env_text((stack.dir / ".env").read_text(), environ={})
    theirs = Compose(validate_app(stack.definition())).env_values(ours)
    assert ours == theirs


# --------------------------------------------------------------------------- an embedded database


SCHEMA_BY_COMMAND = ["python3", "-c", "import sqlite3; print(sqlite3.connect('file:/data/store.db?mode=ro', uri=True)"
                     ".execute('pragma user_version').fetchone()[0])"]


@pytest.fixture
def vectors(tmp_path, docker_client, registry):
    directory = tmp_path / f"vectors-{uuid.uuid4().hex[:8]}"
    shutil.copytree(STACKS / "vectors", directory)
    port = free_port()
    (directory / ".env").write_text(f"VECTORS_VERSION=1\nVECTORS_PORT={port}\n")

    compose(directory, "up", "-d", "--wait", "--wait-timeout", "120")
    try:
        yield directory, f"http://127.0.0.1:{port}"
    finally:
        compose(directory, "down", "-v", "--timeout", "5", check=False)


def test_an_embedded_database_and_its_files_come_back_together(vectors, run_playbook, module_playbook, tmp_path):
    """SQLite plus one index file per item in one volume, no schema probe, a heartbeat health URL and a smoke
    request that reads the data: upgrade, rollback (the compatibility is unknown, so the data comes back), a
    rollback that keeps the unreadable data (it fails its gate), and a drill, with every item readable."""
    directory, url = vectors
    texts = [f"item {n} about {'mugs' if n % 7 == 0 else 'plates'}" for n in range(2000)]
    status, reply = http("POST", f"{url}/items", json.dumps({"texts": texts}).encode(), timeout=60)
    assert status == 201 and len(reply["ids"]) == 2000, (status, reply)
    before = http("GET", f"{url}/search?q=mugs")[1]["ids"]
    assert len(before) == 286
    known_ids = str(before[:3])[1:-1]

    app = {
        "name": "vectors",
        "project_dir": str(directory),
        "health": {"url": f"{url}/healthz"},  # a heartbeat: answers on any data
        "smoke": [{"path": "/search?q=mugs", "status": 200, "contains": known_ids, "timeout": 30}],
        "databases": [{"service": "vectors", "engine": "sqlite", "database": "store", "path": "/data/store.db"}],
        "volumes": ["store"],
        "consistency": {"store": "stop"},
    }
    # a schema probe by command reads what the app wrote (the app under test declares none)
    _run, probed = module_playbook("selfhost.rollback.release", {
        "app": dict(app, schema_probe={"service": "vectors", "command": SCHEMA_BY_COMMAND}), "store": str(tmp_path / "probe")})
    assert probed["release"]["schema_version"] == "1", probed["release"]
    store = tmp_path / "ledger"
    inventory = write_inventory(tmp_path / "inventory.json", group_vars={"rollback_apps": [app], "rollback_store": str(store)})

    run = run_playbook("selfhost.rollback.pre_upgrade", inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    manifest = json.loads(next((store / "vectors" / "backups").glob("b-*/manifest.json")).read_text())
    kinds = [(item["kind"], item["name"]) for item in manifest["items"]]
    assert kinds == [("volume", "store")], kinds  # the SQLite file is captured once, with its index files
    assert manifest["items"][0]["consistency"] == "stop" and manifest["items"][0]["databases"][0]["path"] == "/data/store.db"

    to_2 = {"upgrade_env": {"VECTORS_VERSION": "2"}, "upgrade_max_p99_ratio": 0}
    run = run_playbook("selfhost.rollback.upgrade", to_2, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert http("GET", f"{url}/healthz")[1]["version"] == 2
    assert http("GET", f"{url}/search?q=mugs")[1]["ids"] == before

    # no schema probe: the plan says so, and brings back the data taken under version 1
    check = run_playbook("selfhost.rollback.rollback", inventory=inventory, check=True)
    assert check.rc == 0, check.stdout[-3000:]
    gate = check.task("Ask the compatibility gate")["result"]
    assert (gate["compatibility"], gate["verdict"]) == ("unknown", "needs_data_restore"), gate["table"]
    plan = check.task("Say the plan")["result"]["msg"]
    assert any(line.startswith("compatibility of the data: unknown;") and "rollback_keep_data=true" in line for line in plan), plan
    assert any(line.startswith("data: restored from b-") for line in plan), plan
    run = run_playbook("selfhost.rollback.rollback", inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert http("GET", f"{url}/healthz")[1]["version"] == 1
    items = http("GET", f"{url}/items", timeout=30)[1]
    assert len(items) == 2000 and all(item["readable"] for item in items), sum(1 for i in items if not i["readable"])
    assert http("GET", f"{url}/search?q=mugs")[1]["ids"] == before
    assert run.task("Check health against the release's baseline")["result"]["smoke"][0]["passed"]

    # keeping today's data is a choice; here it leaves version 1 on data it cannot read, and its gate says so
    run = run_playbook("selfhost.rollback.upgrade", to_2, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    run = run_playbook("selfhost.rollback.rollback", {"rollback_keep_data": True}, inventory=inventory)
    assert run.rc != 0
    assert http("GET", f"{url}/healthz")[1]["version"] == 1  # the heartbeat alone would have passed
    failure = run.task("Stop with what to do next")["result"]["msg"]
    assert "failed its health gate" in failure and "GET /search?q=mugs answered 500, expected 200" in failure, failure
    record = json.loads((store / "vectors" / "last_operation.json").read_text())
    assert record["outcome"] == "failed" and record["keep_data"] is True, record

    # the drill of version 1 restores its verified set into a copy: its smoke request passes there
    drill = run_playbook("selfhost.rollback.drill", {"drill_target": gate["target"]["release_id"]}, inventory=inventory)
    assert drill.rc == 0, drill.stdout[-3000:]
    assert any(c["kind"] == "smoke" and c["passed"] for c in drill.task("Rehearse")["result"]["checks"]), drill.stdout[-2000:]
