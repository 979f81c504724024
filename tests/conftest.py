"""Shared test harness: the engine, the registry, a fresh demo deployment, and a
helper that runs ``ansible-playbook`` and returns parsed per-task results.

Integration tests use real parts only: the Docker Engine and registry brought up by
``make setup``, real ``ansible-playbook`` runs, real PostgreSQL in containers.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS_PATH = Path(os.environ.get("SELFHOST_VENV", REPO / ".venv")) / "collections"
# unit tests import the collection's code as Ansible does: from ansible_collections.selfhost.rollback
if COLLECTIONS_PATH.is_dir() and str(COLLECTIONS_PATH) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_PATH))
REGISTRY = os.environ.get("SELFHOST_REGISTRY", "127.0.0.1:5000")
VENV_PYTHON = sys.executable
DEMO_TEMPLATE = REPO / "demo"
NOTES_IMAGE = f"{REGISTRY}/selfhost/notes"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, data: bytes | None = None, timeout: float = 5) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    try:
        return status, json.loads(body or b"null")
    except ValueError:
        return status, body.decode(errors="replace")


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="session")
def docker_client():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker Engine answers ({exc}); run 'make setup' first")
    return client


@pytest.fixture(scope="session")
def registry() -> str:
    try:
        urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=3).read()
    except OSError as exc:
        pytest.fail(f"no registry answers on {REGISTRY} ({exc}); run 'make setup' first")
    return REGISTRY


# --------------------------------------------------------------------------- demo app


@dataclass
class DemoApp:
    """One deployment of the demo app in its own temp project dir, with random names."""

    name: str
    project_dir: Path
    port: int
    password: str
    store: Path
    version: str = "1.0"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def definition(self, **overrides: Any) -> dict[str, Any]:
        """The app as a user declares it in ``rollback_apps``."""
        app: dict[str, Any] = {
            "name": self.name,
            "project_dir": str(self.project_dir),
            "health": {"url": f"{self.url}/healthz"},
            "databases": [{"service": "db", "engine": "postgres", "database": "notes", "user": "notes"}],
            "volumes": ["dbdata", "uploads"],
            "paths": ["config"],
            "schema_probe": {"service": "db", "sql": "select coalesce(max(version), 0) from schema_migrations", "additive": ["2"]},
        }
        app.update(overrides)
        return app

    def write_env(self, **extra: str) -> None:
        env = {"NOTES_DB_PASSWORD": self.password, "NOTES_PORT": str(self.port), "NOTES_VERSION": self.version}
        env.update(extra)
        path = self.project_dir / ".env"
        path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        path.chmod(0o600)

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "--project-directory", str(self.project_dir), "-p", self.name, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def deploy(self, version: str | None = None, wait: bool = True) -> subprocess.CompletedProcess:
        """Set NOTES_VERSION in .env and bring the project up (as a user would by hand)."""
        if version:
            self.version = version
        self.write_env()
        args = ["up", "-d", "--remove-orphans"] + (["--wait", "--wait-timeout", "90"] if wait else [])
        return self.compose(*args, check=False)

    def health(self) -> tuple[int, Any]:
        try:
            return http("GET", f"{self.url}/healthz")
        except OSError as exc:
            return 0, str(exc)

    def wait_healthy(self, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status, body = 0, None
        while time.monotonic() < deadline:
            status, body = self.health()
            if status == 200:
                return body
            time.sleep(0.5)
        raise AssertionError(f"{self.name} not healthy after {timeout}s: {status} {body}\n{self.logs()}")

    def add_note(self, title: str, body: str = "") -> int:
        status, reply = http("POST", f"{self.url}/notes", json.dumps({"title": title, "body": body}).encode())
        assert status == 201, (status, reply)
        return int(reply["id"])

    def notes(self) -> list[dict[str, Any]]:
        status, reply = http("GET", f"{self.url}/notes")
        assert status == 200, (status, reply)
        return reply

    def logs(self, service: str = "app") -> str:
        return self.compose("logs", "--no-color", service, check=False).stdout

    def container_ids(self) -> dict[str, str]:
        proc = self.compose("ps", "-a", "--format", "json", check=False)
        ids: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            line = line.strip()
            if not line:
                continue
            items = json.loads(line)
            for item in items if isinstance(items, list) else [items]:
                ids[item["Service"]] = item["ID"]
        return ids

    def psql(self, sql: str) -> str:
        proc = self.compose("exec", "-T", "db", "psql", "-U", "notes", "-d", "notes", "-tAc", sql)
        return proc.stdout.strip()

    def destroy(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "5", check=False)


@pytest.fixture
def demo_project(tmp_path: Path, docker_client, registry) -> Iterator[DemoApp]:
    """A fresh copy of the demo project with random names, not yet started."""
    name = f"notes-{uuid.uuid4().hex[:8]}"
    project_dir = tmp_path / name
    shutil.copytree(DEMO_TEMPLATE, project_dir)
    store = tmp_path / "ledger"
    app = DemoApp(name=name, project_dir=project_dir, port=free_port(),
                  password=f"canary-{secrets.token_hex(12)}", store=store)
    app.write_env()
    try:
        yield app
    finally:
        app.destroy()
        # the project's volumes are removed by 'down -v'; anything a module created with
        # the project label (drill copies, helpers) goes too
        for container in docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={name}"}):
            container.remove(force=True, v=True)
        for volume in docker_client.volumes.list(filters={"label": f"com.docker.compose.project={name}"}):
            volume.remove(force=True)


@pytest.fixture
def demo_app(demo_project: DemoApp) -> DemoApp:
    """The demo app deployed at 1.0 and healthy."""
    proc = demo_project.deploy("1.0")
    assert proc.returncode == 0, proc.stderr + demo_project.logs()
    demo_project.wait_healthy()
    return demo_project


# --------------------------------------------------------------------------- ansible-playbook


@dataclass
class PlaybookRun:
    rc: int
    stdout: str
    stderr: str
    results: list[dict[str, Any]] = field(default_factory=list)

    def task(self, name: str, host: str | None = None) -> dict[str, Any]:
        """The last result of the task called ``name`` (exact, or a unique substring)."""
        matches = [r for r in self.results if (r["task"] == name or name in r["task"]) and (host is None or r["host"] == host)]
        if not matches:
            raise AssertionError(f"no task {name!r} ran; tasks: {[r['task'] for r in self.results]}\n{self.stdout[-3000:]}")
        return matches[-1]

    def changed(self) -> list[str]:
        return [r["task"] for r in self.results if r["result"].get("changed")]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] in ("failed", "unreachable")]


# Saving the engine's images into each test's fresh ledger costs about 15 s per pre_upgrade
# (1.1 GB of layers, the same every time). The image archive has its own tests
# (test_image_archive.py) and the full reliability cycle keeps it on; elsewhere it is off
# unless a test asks for it. Likewise the cutover set of every upgrade is checked by its
# checksums only; test_upgrade_rollback.py proves it by a test restore, as the role's default does.
TEST_DEFAULTS = {"pre_upgrade_archive_images": False, "upgrade_cutover_verify_checks": ["deep"]}


def write_inventory(path: Path, hosts: dict[str, dict[str, Any]] | None = None, group_vars: dict[str, Any] | None = None) -> Path:
    """An inventory file (YAML). Default: localhost over the local connection."""
    hosts = hosts or {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": VENV_PYTHON}}
    inventory = {"all": {"hosts": hosts, "vars": dict(TEST_DEFAULTS, **(group_vars or {}))}}
    path.write_text(json.dumps(inventory, indent=2))
    return path


# What each test costs, for the profile at the end of a run (tests/integration/conftest.py prints it):
# the ansible-playbook starts and their wall time, counted by run_playbook
_PLAYBOOKS: dict[str, list[float]] = {}


@pytest.fixture
def run_playbook(tmp_path: Path, request: pytest.FixtureRequest):
    """Run ``ansible-playbook`` for real; return rc, output and one parsed result per task."""
    counter = {"n": 0}
    spent = _PLAYBOOKS.setdefault(request.node.nodeid, [0, 0.0])

    def run(playbook: str | Path, extra_vars: dict[str, Any] | None = None, *, inventory: Path | None = None,
            check: bool = False, diff: bool = False, verbosity: int = 0, limit: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 900, args: list[str] | None = None) -> PlaybookRun:
        counter["n"] += 1
        workdir = tmp_path / f"playbook-run-{counter['n']}"
        workdir.mkdir()
        results_file = workdir / "results.jsonl"
        if inventory is None:
            inventory = write_inventory(workdir / "inventory.json")
        cmd = [str(Path(VENV_PYTHON).parent / "ansible-playbook"), "-i", str(inventory), str(playbook)]
        if extra_vars:
            vars_file = workdir / "extra_vars.json"
            vars_file.write_text(json.dumps(extra_vars))
            cmd += ["-e", f"@{vars_file}"]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        if verbosity:
            cmd.append("-" + "v" * verbosity)
        if limit:
            cmd += ["--limit", limit]
        cmd += args or []
        run_env = dict(os.environ)
        run_env.update({
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS_PATH),
            "ANSIBLE_CALLBACK_PLUGINS": str(REPO / "tests" / "plugins" / "callback"),
            "ANSIBLE_CALLBACKS_ENABLED": "selfhost_results",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            # as the README recommends: the module goes to Python on stdin, with no temporary
            # directory, copy, chmod and removal around it (about 0.2 s a task on a busy host)
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_LOCAL_TEMP": str(workdir / "tmp"),
            "SELFHOST_RESULTS_FILE": str(results_file),
        })
        run_env.update(env or {})
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env, cwd=str(workdir), check=False)
        spent[0] += 1
        spent[1] += time.monotonic() - started
        results = []
        if results_file.exists():
            results = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
        return PlaybookRun(proc.returncode, proc.stdout, proc.stderr, results)

    return run


@pytest.fixture
def module_playbook(tmp_path: Path, run_playbook):
    """Run one module task against localhost: ``module_playbook('selfhost.rollback.x', {...})``."""
    counter = {"n": 0}

    def run(module: str, params: dict[str, Any], **kwargs: Any) -> tuple[PlaybookRun, dict[str, Any]]:
        counter["n"] += 1
        playbook = tmp_path / f"module-{counter['n']}.yml"
        play = [{
            "name": f"run {module}",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [{"name": "module under test", module: params, "register": "out"}],
        }]
        playbook.write_text(json.dumps(play))
        outcome = run_playbook(playbook, **kwargs)
        return outcome, outcome.task("module under test")["result"] if outcome.results else {}

    return run
