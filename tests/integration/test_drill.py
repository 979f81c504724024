"""Drills against the real demo app: an isolated copy beside production, a killed drill, a corrupted set."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from conftest import COLLECTIONS_PATH, VENV_PYTHON, http, write_inventory

PLAYBOOK_BIN = str(Path(VENV_PYTHON).parent / "ansible-playbook")
DRILL_LABEL_APP = "io.selfhost-rollback.drill.app"


def inventory_for(demo, tmp_path: Path, **extra) -> Path:
    group_vars = {"rollback_apps": [demo.definition()], "rollback_store": str(demo.store)}
    group_vars.update(extra)
    return write_inventory(tmp_path / f"inventory-{demo.name}.json", group_vars=group_vars)


def drill_resources(client, demo) -> list[str]:
    filters = {"label": f"{DRILL_LABEL_APP}={demo.name}"}
    return ([f"container {c.name}" for c in client.containers.list(all=True, filters=filters)]
            + [f"volume {v.name}" for v in client.volumes.list(filters=filters)]
            + [f"network {n.name}" for n in client.networks.list(filters=filters)])


def volume_digest(client, name: str) -> str:
    """Content of a production volume: every file's path and sha256."""
    root = client.volumes.get(name).attrs["Mountpoint"]
    digest = hashlib.sha256()
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for file_name in sorted(files):
            path = os.path.join(directory, file_name)
            digest.update(os.path.relpath(path, root).encode())
            if os.path.isfile(path) and not os.path.islink(path):
                digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def production(demo, client) -> dict:
    return {"containers": demo.container_ids(), "notes": demo.notes(),
            "uploads": volume_digest(client, f"{demo.name}_uploads"),
            "rows": demo.psql("select count(*) || ':' || coalesce(max(id), 0) from notes"),
            "volumes": sorted(v.name for v in client.volumes.list(filters={"label": f"com.docker.compose.project={demo.name}"}))}


def port_is_free(port: int) -> bool:
    """Nothing listens there (SO_REUSEADDR: connections of the probes may linger in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def kill_module_processes(marker: Path) -> None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(marker) in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


class HealthWatch(threading.Thread):
    """Polls production's health during a drill; every answer must be 200 from the same version."""

    def __init__(self, demo) -> None:
        super().__init__(daemon=True)
        self.demo = demo
        self.answers: list[tuple[int, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status, body = http("GET", f"{self.demo.url}/healthz", timeout=3)
            except OSError as exc:
                status, body = 0, str(exc)
            self.answers.append((status, body.get("version") if isinstance(body, dict) else str(body)))
            time.sleep(0.2)


def test_drill_boots_previous_release_beside_production(demo_app, run_playbook, docker_client, tmp_path):
    settings = {demo_app.name: {"smoke": [{"path": "/notes", "contains": "written under 1.0"},
                                          {"path": "/healthz", "contains": '"version": "1.0"'}],
                                "env": {"app": {"NOTES_OUTBOUND": "off"}}}}
    inventory = inventory_for(demo_app, tmp_path, drill_settings=settings)
    demo_app.add_note("kept", "written under 1.0")
    run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "1.1"}}, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert demo_app.wait_healthy(timeout=5)["version"] == "1.1"
    demo_app.add_note("only in production", "written under 1.1")
    before = production(demo_app, docker_client)
    releases = [json.loads(p.read_text()) for p in (demo_app.store / demo_app.name / "releases").glob("*.json")]
    release_10 = next(r["release_id"] for r in releases if r["schema_version"] == "1")

    watch = HealthWatch(demo_app)
    watch.start()
    try:
        run = run_playbook("selfhost.rollback.drill", inventory=inventory)
    finally:
        watch.stop.set()
        watch.join(5)
    assert run.rc == 0, run.stdout[-4000:]
    result = run.task("Rehearse the rollback in an isolated copy")["result"]
    assert result["passed"] is True and result["failures"] == []
    assert result["release_id"] == release_10
    timings = result["timings"]
    for phase in ("restore_s", "boot_s", "healthy_s", "time_to_healthy_s", "teardown_s", "total_s"):
        assert isinstance(timings[phase], float) and timings[phase] >= 0, (phase, timings)
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["rows db-notes"]["passed"] and checks["production untouched"]["passed"] and checks["teardown"]["passed"]
    assert checks["smoke GET /notes"]["passed"] and checks["smoke GET /healthz"]["passed"]
    assert any(name.startswith("checksums path config") for name in checks)
    note = run.task("Say what the drills showed")["result"]["msg"][0]
    print(note)
    assert f"restore {timings['restore_s']} s, boot {timings['boot_s']} s, healthy {timings['healthy_s']} s" in note

    # the evidence: JSON and Markdown in the ledger, no secret in either
    record = json.loads(Path(result["record"]["json"]).read_text())
    markdown = Path(result["record"]["markdown"]).read_text()
    assert record["passed"] and record["target"]["release_id"] == release_10 and record["timings"] == timings
    assert record["muted_env"] == {"app": ["NOTES_OUTBOUND"]}
    assert "PASSED" in markdown and "| restore |" in markdown
    for text in (json.dumps(record), markdown, run.stdout):
        assert demo_app.password not in text

    # production: same containers, same data, healthy on 1.1 throughout; nothing of the copy left, its port free again
    assert production(demo_app, docker_client) == before
    assert len(watch.answers) > 10 and set(watch.answers) == {(200, "1.1")}, set(watch.answers)
    assert drill_resources(docker_client, demo_app) == []
    assert not (demo_app.store / demo_app.name / "drills" / "work").exists() or \
        list((demo_app.store / demo_app.name / "drills" / "work").iterdir()) == []
    drill_port = int(record["ports"]["app"][0].rsplit(":", 1)[1])
    assert drill_port != demo_app.port and port_is_free(drill_port)


def test_killed_drill_then_corrupted_set(demo_app, run_playbook, docker_client, tmp_path):
    inventory = inventory_for(demo_app, tmp_path, drill_target="current")
    demo_app.add_note("kept", "written under 1.0")
    run = run_playbook("selfhost.rollback.pre_upgrade", inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    before = production(demo_app, docker_client)

    # kill -9 a drill once its copy exists
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_REMOTE_TMP=str(tmp_path / "remote-tmp"))
    proc = subprocess.Popen([PLAYBOOK_BIN, "-i", str(inventory), "selfhost.rollback.drill"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    filters = {"label": f"{DRILL_LABEL_APP}={demo_app.name}", "status": "running"}
    while not docker_client.containers.list(filters=filters) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert docker_client.containers.list(filters=filters), "the drill never started its copy"
    os.killpg(proc.pid, signal.SIGKILL)
    # the module runs in its own session, and its 'docker compose' children too: kill them all, as a crash would
    kill_module_processes(tmp_path / "remote-tmp")
    kill_module_processes(demo_app.store / demo_app.name / "drills")
    proc.wait(30)
    leftovers = drill_resources(docker_client, demo_app)
    assert leftovers, "a killed drill should have left its copy behind for this test to mean anything"
    assert production(demo_app, docker_client) == before

    # the next drill sweeps the leftovers first, says so, and passes
    run = run_playbook("selfhost.rollback.drill", inventory=inventory)
    assert run.rc == 0, run.stdout[-4000:]
    result = run.task("Rehearse the rollback in an isolated copy")["result"]
    assert result["passed"] and any("was interrupted" in s for s in result["swept"]), result["swept"]
    assert any(s.startswith("container ") for s in result["swept"])
    assert drill_resources(docker_client, demo_app) == []
    assert production(demo_app, docker_client) == before

    # a corrupted set: the drill fails, says why, and still leaves nothing behind
    set_dir = Path(demo_app.store / demo_app.name / "backups" / result["set_id"])
    archive = next(p for p in set_dir.iterdir() if p.name.startswith("database-"))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    run = run_playbook("selfhost.rollback.drill", inventory=inventory)
    assert run.rc != 0
    failed = run.task("Rehearse the rollback in an isolated copy")["result"]
    assert failed["passed"] is False
    assert f"of app {demo_app.name} failed: backup set verification: database db-notes: " in failed["msg"], failed["msg"]
    assert "the copy was torn down" in failed["msg"]
    final = run.task("Fail on failed drills")["result"]["msg"]
    assert "1 drill(s) failed" in final and failed["drill_id"] in final
    record = json.loads(Path(failed["record"]["json"]).read_text())
    assert record["passed"] is False and {c["name"]: c["passed"] for c in record["checks"]}["teardown"] is True
    assert drill_resources(docker_client, demo_app) == []
    assert production(demo_app, docker_client) == before
