"""switch: forward to a new version, back to a recorded release, exactly and idempotently."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

from conftest import NOTES_IMAGE


def test_forward_and_back_with_the_quartet(demo_app, module_playbook, docker_client):
    base = {"app": demo_app.definition(), "store": str(demo_app.store)}
    run, r10 = module_playbook("selfhost.rollback.release", base)
    assert run.rc == 0, run.stdout
    saved = demo_app.store / demo_app.name / "projects" / r10["release_id"]
    assert (saved / "index.json").stat().st_mode & 0o777 == 0o600 and saved.stat().st_mode & 0o777 == 0o700

    forward = dict(base, env={"NOTES_VERSION": "1.1"})
    run, result = module_playbook("selfhost.rollback.switch", forward, check=True, diff=True)
    assert run.rc == 0 and result["changed"] is True and result["files_changed"] == [".env"]
    assert "NOTES_VERSION=1.0" in (demo_app.project_dir / ".env").read_text()  # check mode wrote nothing
    assert "~NOTES_VERSION: 1.0 -> 1.1" in run.stdout and demo_app.password not in run.stdout

    run, result = module_playbook("selfhost.rollback.switch", forward)
    assert run.rc == 0 and result["changed"] is True
    assert demo_app.wait_healthy()["version"] == "1.1"
    assert (demo_app.project_dir / ".env").stat().st_mode & 0o777 == 0o600
    run, again = module_playbook("selfhost.rollback.switch", forward)
    assert run.rc == 0 and again["changed"] is False
    run, r11 = module_playbook("selfhost.rollback.release", base)
    assert r11["release_id"] != r10["release_id"]

    back = dict(base, release=r10["release_id"])
    run, result = module_playbook("selfhost.rollback.switch", back, check=True)
    assert run.rc == 0 and result["changed"] is True and result["files_changed"] == [".env"]
    assert result["recreated"] == ["app"], result["actions"]
    assert demo_app.wait_healthy()["version"] == "1.1"
    before = demo_app.container_ids()
    run, result = module_playbook("selfhost.rollback.switch", back)
    assert run.rc == 0 and result["changed"] is True, result.get("msg")
    # image-only: the database keeps running, only the app is recreated
    assert result["recreated"] == ["app"] and demo_app.container_ids()["db"] == before["db"], result["actions"]
    assert all(s["ok"] for s in result["services"].values()), result["services"]
    assert demo_app.wait_healthy()["version"] == "1.0"
    assert "NOTES_VERSION=1.0" in (demo_app.project_dir / ".env").read_text()
    app_image = docker_client.containers.get(result["services"]["app"]["container_id"]).attrs["Image"]
    assert app_image == r10["release"]["services"]["app"]["image_id"]
    run, again = module_playbook("selfhost.rollback.switch", back)
    assert run.rc == 0 and again["changed"] is False, again["actions"]
    assert demo_app.password not in json.dumps(run.results)
    # Compose itself sees the project as converged: a plain 'up -d' with the same files recreates nothing
    after = demo_app.container_ids()
    demo_app.compose("up", "-d")
    assert demo_app.container_ids() == after


def test_unknown_release_changes_nothing(demo_app, module_playbook):
    before = (demo_app.project_dir / ".env").read_text(), demo_app.container_ids()
    run, result = module_playbook("selfhost.rollback.switch", {"app": demo_app.definition(), "store": str(demo_app.store),
                                                               "release": "r-nope"})
    assert run.rc != 0 and result["msg"] == f"app {demo_app.name}: release r-nope is not in the ledger; recorded releases: none"
    assert ((demo_app.project_dir / ".env").read_text(), demo_app.container_ids()) == before


# A port-less copy of the app, as it would sit behind a reverse proxy on the project network. The
# demo's own main() ignores SIGTERM (PID 1) and dies mid-request at SIGKILL; this one drains on its
# stop signal as a web service behind a proxy should: it stops accepting, hands every connection
# already queued to a handler, closes the socket (new connections are refused, so clients try the
# other address of the service name) and exits when the last request is answered.
API_SERVICE = """
  api:
    image: 127.0.0.1:5000/selfhost/notes:${NOTES_VERSION:-1.0}
    command:
      - python3
      - -u
      - -c
      - |
        import importlib.util, signal, threading
        spec = importlib.util.spec_from_file_location("notes", "/opt/notes/notes.py")
        notes = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(notes)
        notes.Handler.app = notes.App()
        server = notes.ThreadingHTTPServer(("0.0.0.0", 8080), notes.Handler)
        server.daemon_threads, server.timeout = False, 0.02
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        while not stopping.is_set():
            server.handle_request()
        server.socket.setblocking(False)
        while True:
            try:
                conn, addr = server.socket.accept()
            except OSError:
                break
            server.process_request(conn, addr)
        server.server_close()
    environment:
      NOTES_DB_HOST: db
      NOTES_DB_PASSWORD: ${NOTES_DB_PASSWORD:?set NOTES_DB_PASSWORD in .env}
    depends_on:
      db:
        condition: service_healthy
"""

# probes http://api:8080/healthz at 20 Hz by service name, as a proxy would, one line per probe
PROBER = """
import time, json, urllib.request
while True:
    try:
        with urllib.request.urlopen("http://api:8080/healthz", timeout=2) as r:
            print("ok", json.loads(r.read())["version"], flush=True)
    except Exception as exc:
        print("FAIL", repr(exc), flush=True)
    time.sleep(0.05)
"""


def start_prober(project: str) -> str:
    name = f"prober-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "run", "-d", "--name", name, "--network", f"{project}_default", f"{NOTES_IMAGE}:1.0",
                    "python3", "-u", "-c", PROBER], check=True, capture_output=True)
    return name


def probes(name: str) -> list[str]:
    return subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=True).stdout.splitlines()


def test_start_first_switches_a_portless_service_without_a_failed_probe(demo_project, module_playbook, docker_client):
    compose = demo_project.project_dir / "compose.yaml"
    compose.write_text(compose.read_text().replace("\nvolumes:\n", API_SERVICE + "\nvolumes:\n", 1))
    assert demo_project.deploy("1.0").returncode == 0, demo_project.logs()
    demo_project.wait_healthy()
    base = {"app": demo_project.definition(), "store": str(demo_project.store)}
    run, r10 = module_playbook("selfhost.rollback.release", base)
    assert run.rc == 0, run.stdout
    run, result = module_playbook("selfhost.rollback.switch", dict(base, env={"NOTES_VERSION": "1.1"}))
    assert run.rc == 0, result.get("msg")
    run, r11 = module_playbook("selfhost.rollback.release", base)
    assert run.rc == 0 and r11["release_id"] != r10["release_id"]

    # a service that publishes a host port is refused, before anything changes
    before = demo_project.container_ids(), compose.read_text(), (demo_project.project_dir / ".env").read_text()
    back = dict(base, release=r10["release_id"], start_first=["api", "app"])
    run, result = module_playbook("selfhost.rollback.switch", back, check=True)
    assert run.rc != 0 and "service app publishes host port" in result["msg"], result
    run, result = module_playbook("selfhost.rollback.switch", back)
    assert run.rc != 0 and "service app publishes host port" in result["msg"] and "nothing was changed" in result["msg"]
    assert (demo_project.container_ids(), compose.read_text(), (demo_project.project_dir / ".env").read_text()) == before

    prober = start_prober(demo_project.name)
    try:
        deadline = time.monotonic() + 30
        while not any(line.startswith("ok 1.1") for line in probes(prober)):
            assert time.monotonic() < deadline, probes(prober)
            time.sleep(0.2)
        back = dict(base, release=r10["release_id"], start_first=["api"])
        run, result = module_playbook("selfhost.rollback.switch", back, check=True)
        assert run.rc == 0 and result["changed"] is True and result["started_first"] == ["api"], result
        assert result["recreated"] == ["app"] and demo_project.container_ids() == before[0]
        old_api = docker_client.containers.get(before[0]["api"])
        run, result = module_playbook("selfhost.rollback.switch", back)
        assert run.rc == 0 and result["changed"] is True, result.get("msg")
        assert result["started_first"] == ["api"] and result["recreated"] == ["app"], result["actions"]
        time.sleep(1)
        lines = probes(prober)
    finally:
        subprocess.run(["docker", "rm", "-f", prober], capture_output=True, check=False)
    failed = [line for line in lines if not line.startswith("ok ")]
    versions = [line.split()[1] for line in lines if line.startswith("ok ")]
    assert failed == [] and len(lines) > 100, (len(lines), failed[:5])
    assert versions[0] == "1.1" and versions[-1] == "1.0", versions  # the probes spanned the switch

    after = demo_project.container_ids()
    assert after["db"] == before[0]["db"] and after["api"] != before[0]["api"]
    api = docker_client.containers.list(all=True, filters={"label": [f"com.docker.compose.project={demo_project.name}",
                                                                     "com.docker.compose.service=api"]})
    assert [c.attrs["Image"] for c in api] == [r10["release"]["services"]["api"]["image_id"]]  # one container, on 1.0
    assert old_api.id not in [c.id for c in docker_client.containers.list(all=True)]
    assert all(s["ok"] for s in result["services"].values()), result["services"]

    run, again = module_playbook("selfhost.rollback.switch", back, check=True)
    assert run.rc == 0 and again["changed"] is False and again["started_first"] == [], again["actions"]
    run, again = module_playbook("selfhost.rollback.switch", back)
    assert run.rc == 0 and again["changed"] is False, again.get("actions") or again.get("msg")
    demo_project.compose("up", "-d")  # Compose agrees: nothing to recreate
    assert demo_project.container_ids() == after
