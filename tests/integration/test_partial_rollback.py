"""Partial rollbacks on a chat front end and its worker, deployed with a plain ``docker compose up -d``
and upgraded together: only the worker back (the front end keeps its container), only the settings
back (every image stays), only the model file back (by digest, from the copy the release kept).
Each is first run in check mode, which changes nothing and prints its plan; after each, what runs
is what a plain ``docker compose up -d`` in the directory gives (it changes nothing). Then both
services read one APP_VERSION (the common shape): only the worker back, held in the collection's
images file while the project files keep the shared variable, until a full rollback takes it away."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import uuid
from pathlib import Path

import pytest

from conftest import free_port, http, write_inventory
from stacks import assert_runs_what_compose_says, compose

STACK = Path(__file__).parent / "stacks" / "chat"


class Chat:
    def __init__(self, tmp_path: Path, client) -> None:
        self.name = f"chat-{uuid.uuid4().hex[:8]}"
        self.dir = tmp_path / "srv" / self.name
        shutil.copytree(STACK, self.dir)
        (self.dir / "models").mkdir()
        self.model = self.dir / "models" / "assistant.gguf"
        self.model.write_bytes(b"weights of the assistant, first training run\n" * 4096)
        self.port = free_port()
        self.password = f"canary-{secrets.token_hex(12)}"
        self.store = tmp_path / "ledger"
        self.client = client
        self.env = {"APP_VERSION": "1.0", "WORKER_VERSION": "1.0", "WORKER_THREADS": "2", "ANSWER_STYLE": "concise",
                    "NOTES_DB_PASSWORD": self.password, "NOTES_PORT": str(self.port)}
        path = self.dir / ".env"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        path.chmod(0o600)

    def definition(self) -> dict:
        return {"name": "chat", "project_dir": str(self.dir),
                "health": {"url": f"http://127.0.0.1:{self.port}/healthz"},
                "databases": [{"service": "db", "engine": "postgres", "database": "notes", "user": "notes"}],
                "volumes": ["dbdata"],
                "schema_probe": {"service": "db", "sql": "select coalesce(max(version), 0) from schema_migrations",
                                 "additive": ["2"]},
                "artifacts": [{"name": "model", "path": "models/assistant.gguf", "restart": ["app"]}]}

    def compose(self, *args: str) -> str:
        return compose(self.dir, *args).stdout

    def containers(self) -> dict[str, dict]:
        found = {}
        for c in self.client.containers.list(filters={"label": f"com.docker.compose.project={self.name}"}):
            env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
            found[c.labels["com.docker.compose.service"]] = {"id": c.id, "image": c.attrs["Image"], "env": env}
        return found

    def version(self) -> str:
        status, body = http("GET", f"http://127.0.0.1:{self.port}/healthz")
        assert status == 200, (status, body)
        return body["version"]

    def image_id(self, tag: str) -> str:
        return self.client.images.get(f"127.0.0.1:5000/selfhost/notes:{tag}").id

    def set_env(self, **values: str) -> None:
        path = self.dir / ".env"
        text = path.read_text()
        for key, value in values.items():
            text, found = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
            text += "" if found else f"{key}={value}\n"
        path.write_text(text)


@pytest.fixture
def chat(tmp_path, docker_client, registry):
    stack = Chat(tmp_path, docker_client)
    try:
        yield stack
    finally:
        compose(stack.dir, "down", "-v", "--remove-orphans", "--timeout", "5", check=False)


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def plan_of(run) -> list[str]:
    return run.task("Say the plan")["result"]["msg"]


def assert_a_plain_up_keeps_the_mix(chat: Chat, step: str) -> None:
    """The part is in the project files: a plain ``docker compose up -d`` runs the same images with the same settings."""
    before = {n: (c["image"], c["env"]) for n, c in chat.containers().items()}
    chat.compose("up", "-d", "--wait", "--wait-timeout", "60")
    assert {n: (c["image"], c["env"]) for n, c in chat.containers().items()} == before, f"{step}: a plain up changed what runs"
    assert_runs_what_compose_says(chat.dir, chat.client, step)


def test_put_back_only_what_broke(chat, run_playbook, module_playbook, tmp_path):
    chat.compose("up", "-d", "--wait", "--wait-timeout", "120")
    inventory = write_inventory(tmp_path / "inventory.json",
                                group_vars={"rollback_apps": [chat.definition()], "rollback_store": str(chat.store)})
    first_model = sha256(chat.model)

    # both services upgraded together, with new settings
    upgrade = {"APP_VERSION": "1.1", "WORKER_VERSION": "1.1", "WORKER_THREADS": "8", "ANSWER_STYLE": "verbose"}
    run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": upgrade}, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    ledger = chat.store / "chat"
    releases = sorted((json.loads(p.read_text()) for p in (ledger / "releases").glob("r-*.json")), key=lambda r: r["recorded_at"])
    v1 = releases[0]
    assert v1["artifacts"]["model"]["digest"] == first_model
    assert (ledger / "artifacts" / first_model.split(":")[1]).read_bytes() == chat.model.read_bytes()
    upgraded = chat.containers()
    assert upgraded["worker"]["image"] == chat.image_id("1.1") and upgraded["worker"]["env"]["WORKER_THREADS"] == "8"
    assert chat.version() == "1.1"
    env_before = (chat.dir / ".env").read_bytes()

    # 1. only the worker: check mode first
    worker_only = {"rollback_services": ["worker"], "rollback_target": v1["release_id"]}
    run = run_playbook("selfhost.rollback.rollback", worker_only, inventory=inventory, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    plan = " ".join(plan_of(run))
    assert "partial (scope all, services worker)" in plan, plan
    assert "bring back worker's image 127.0.0.1:5000/selfhost/notes:1.0" in plan, plan
    assert "bring back WORKER_THREADS in .env" in plan and "bring back WORKER_VERSION in .env" in plan, plan
    assert (chat.dir / ".env").read_bytes() == env_before
    assert {n: c["id"] for n, c in chat.containers().items()} == {n: c["id"] for n, c in upgraded.items()}

    run = run_playbook("selfhost.rollback.rollback", worker_only, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    now = chat.containers()
    assert now["worker"]["image"] == chat.image_id("1.0") and now["worker"]["env"]["WORKER_THREADS"] == "2"
    assert now["app"]["id"] == upgraded["app"]["id"], "the front end was recreated"
    assert now["db"]["id"] == upgraded["db"]["id"]
    assert now["app"]["env"]["ANSWER_STYLE"] == "verbose" and chat.version() == "1.1"
    switched = run.task("Switch to the release")["result"]
    assert switched["partial"]["untouched"]["app"]["same"] is True, switched["partial"]
    mixed = json.loads((ledger / "releases" / f"{run.task('Record the release that runs now')['result']['release_id']}.json")
                       .read_text())["mixed"]
    assert (mixed["target"], mixed["services"], mixed["back"]["images"]) == (v1["release_id"], ["worker"], ["worker"]), mixed
    assert sorted(mixed["kept"]["images"]) == ["app", "db"], mixed
    op = json.loads((ledger / "last_operation.json").read_text())
    assert (op["outcome"], op["partial"]) == ("rolled_back", {"services": ["worker"], "scope": "all"}), op
    assert_a_plain_up_keeps_the_mix(chat, "after the worker went back")
    run = run_playbook("selfhost.rollback.rollback", worker_only, inventory=inventory)
    assert run.rc == 0 and run.changed() == [], run.changed()

    # 2. only the settings: the front end's style comes back, every image stays
    config_only = {"rollback_scope": "config", "rollback_target": v1["release_id"]}
    run = run_playbook("selfhost.rollback.rollback", config_only, inventory=inventory, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert "bring back ANSWER_STYLE in .env" in " ".join(plan_of(run)), plan_of(run)
    assert chat.containers()["app"]["env"]["ANSWER_STYLE"] == "verbose"
    run = run_playbook("selfhost.rollback.rollback", config_only, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    now = chat.containers()
    assert now["app"]["env"]["ANSWER_STYLE"] == "concise"
    assert now["app"]["image"] == chat.image_id("1.1") and chat.version() == "1.1"
    assert now["worker"]["image"] == chat.image_id("1.0")
    assert_a_plain_up_keeps_the_mix(chat, "after the settings went back")

    # 3. only the model file, by digest, from the copy the release kept
    chat.model.write_bytes(b"weights of the assistant, a bad third run\n" * 4096)
    model_only = {"rollback_scope": "artifacts", "rollback_target": v1["release_id"]}
    run = run_playbook("selfhost.rollback.rollback", model_only, inventory=inventory, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    assert f"put back artifact model (models/assistant.gguf) as {v1['artifacts']['model']['digest']}" in " ".join(plan_of(run))
    assert sha256(chat.model) != v1["artifacts"]["model"]["digest"]
    app_before = chat.containers()["app"]
    run = run_playbook("selfhost.rollback.rollback", model_only, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert sha256(chat.model) == v1["artifacts"]["model"]["digest"]
    now = chat.containers()
    assert now["app"]["image"] == app_before["image"] and now["app"]["env"]["ANSWER_STYLE"] == "concise"
    assert now["app"]["id"] == app_before["id"]  # restarted (its artifact says so), not recreated
    run = run_playbook("selfhost.rollback.rollback", model_only, inventory=inventory)
    assert run.rc == 0 and run.changed() == [], run.changed()

    # an artifact whose copy was not kept is one sentence before anything changes
    (ledger / "artifacts" / v1["artifacts"]["model"]["digest"].split(":")[1]).unlink()
    chat.model.write_bytes(b"another bad run\n")
    run = run_playbook("selfhost.rollback.rollback", model_only, inventory=inventory)
    assert run.rc != 0
    failed = next(r for r in run.results if r["status"] == "failed")["result"]["msg"]
    assert "artifact 'model': release" in failed and "no copy was kept" in failed, failed
    assert chat.model.read_bytes() == b"another bad run\n"

    # a refusal names its reason on the run's last line, not only "see the table"
    run = run_playbook("selfhost.rollback.rollback", {"rollback_services": ["wrker"], "rollback_target": v1["release_id"]},
                       inventory=inventory)
    assert run.rc != 0
    last = run.task("Fail the run when a host did not roll back")["result"]["msg"]
    assert last.startswith("Not every host rolled back: localhost blocked (part: scope all, services wrker: rollback_services "
                           "names wrker, which release"), last

    # 4. one APP_VERSION for the front end and the worker (the common shape), two releases apart by it alone
    pins = ledger / "pins.yaml"
    (chat.dir / "compose.yaml").write_text((STACK / "compose.yaml").read_text().replace(
        "${WORKER_VERSION:?set WORKER_VERSION in .env}", "${APP_VERSION:?set APP_VERSION in .env}"))
    shared = {}
    for version in ("1.0", "1.1"):
        chat.set_env(APP_VERSION=version)
        chat.compose("up", "-d", "--wait", "--wait-timeout", "120")
        run, recorded = module_playbook("selfhost.rollback.release", {"app": chat.definition(), "store": str(chat.store)})
        assert run.rc == 0, run.stdout[-3000:]
        shared[version] = recorded["release_id"]
    before = chat.containers()
    assert before["worker"]["image"] == chat.image_id("1.1")
    env_before = (chat.dir / ".env").read_bytes()
    worker_alone = {"rollback_services": ["worker"], "rollback_target": shared["1.0"]}
    run = run_playbook("selfhost.rollback.rollback", worker_alone, inventory=inventory, check=True)
    assert run.rc == 0, run.stdout[-3000:]
    plan = " ".join(plan_of(run))
    assert "hold worker on 127.0.0.1:5000/selfhost/notes:1.0@sha256:" in plan and f"in {pins}, the collection's images file" in plan, plan
    assert "reads APP_VERSION, which app also reads" in plan, plan
    assert "a plain 'docker compose up -d' without that file brings worker forward again" in plan, plan
    assert f"COMPOSE_FILE=compose.yaml:{pins} in .env keeps it" in plan, plan
    assert not pins.exists() and (chat.dir / ".env").read_bytes() == env_before
    assert {n: c["id"] for n, c in chat.containers().items()} == {n: c["id"] for n, c in before.items()}

    run = run_playbook("selfhost.rollback.rollback", worker_alone, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    now = chat.containers()
    assert now["worker"]["image"] == chat.image_id("1.0")
    assert now["app"]["id"] == before["app"]["id"] and now["db"]["id"] == before["db"]["id"], "a service that stays was recreated"
    assert chat.version() == "1.1"
    held = run.task("Switch to the release")["result"]["partial"]["images_file"]
    assert (held["path"], held["hold"]) == (str(pins), ["worker"]), held
    assert held["services"]["worker"].startswith("127.0.0.1:5000/selfhost/notes:1.0@sha256:"), held
    assert (chat.dir / ".env").read_bytes() == env_before, "the shared variable changed"
    assert f'image: "{held["services"]["worker"]}"' in pins.read_text()
    run = run_playbook("selfhost.rollback.rollback", worker_alone, inventory=inventory)
    assert run.rc == 0 and run.changed() == [], run.changed()

    # what the plan says keeps it: COMPOSE_FILE in .env, then a plain 'docker compose up -d' leaves the worker back
    chat.set_env(COMPOSE_FILE=f"compose.yaml:{pins}")
    assert_a_plain_up_keeps_the_mix(chat, "with COMPOSE_FILE naming the images file")
    assert chat.containers()["worker"]["image"] == chat.image_id("1.0")

    # a full rollback to a release that held nothing there takes the file away: the worker comes forward
    run = run_playbook("selfhost.rollback.rollback", {"rollback_target": shared["1.1"]}, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert not pins.exists()
    now = chat.containers()
    assert now["worker"]["image"] == chat.image_id("1.1") and now["app"]["id"] == before["app"]["id"]
    assert_a_plain_up_keeps_the_mix(chat, "after the full rollback")
