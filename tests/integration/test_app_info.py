"""app_info against the real demo deployment, and the prerequisites role."""

from __future__ import annotations

import json
import uuid

from conftest import REGISTRY, REPO, write_inventory
from stacks import compose

BUSYBOX = f"{REGISTRY}/selfhost/tools:busybox"


def test_reports_running_services_digests_and_health(demo_app, module_playbook):
    params = {"app": demo_app.definition(), "store": str(demo_app.store)}
    run, info = module_playbook("selfhost.rollback.app_info", params, verbosity=3)
    assert run.rc == 0, run.stdout
    assert info["changed"] is False and info["running"] is True
    app = info["services"]["app"]
    assert app["state"] == "running" and app["health"] == "healthy"
    assert any(d.startswith("127.0.0.1:5000/selfhost/notes@sha256:") for d in app["repo_digests"])
    assert app["ports"] == [f"127.0.0.1:{demo_app.port}->8080/tcp"]
    assert info["health"]["ok"] and info["health"]["body"]["version"] == "1.0"
    assert demo_app.password not in run.stdout + run.stderr + json.dumps(run.results)

    check_run, check_info = module_playbook("selfhost.rollback.app_info", params, check=True)
    assert check_run.rc == 0 and check_info["services"]["app"]["container_id"] == app["container_id"]


def test_reports_a_stopped_service(demo_app, module_playbook):
    demo_app.compose("stop", "app")
    run, info = module_playbook("selfhost.rollback.app_info", {"app": demo_app.definition()})
    assert run.rc == 0
    assert info["running"] is False and info["services"]["app"]["state"] == "exited"
    assert info["health"]["ok"] is False


def test_missing_project_dir_is_one_clear_sentence(demo_project, module_playbook):
    run, result = module_playbook("selfhost.rollback.app_info", {"app": demo_project.definition(project_dir="/nonexistent/notes")})
    assert run.rc != 0
    assert result["msg"].startswith(f"app {demo_project.name}: project_dir /nonexistent/notes does not exist")


def test_malformed_compose_file_is_reported_not_traced(demo_project, module_playbook):
    (demo_project.project_dir / "compose.yaml").write_text("services:\n  app: [unclosed\n")
    run, result = module_playbook("selfhost.rollback.app_info", {"app": demo_project.definition()})
    assert run.rc != 0
    assert result["msg"].startswith(f"app {demo_project.name}: reading the compose files failed:")
    assert "Traceback" not in result["msg"]


def test_a_project_started_with_p_is_adopted_and_a_second_one_refused(tmp_path, module_playbook, docker_client, registry):
    """``docker compose -p NAME up -d`` leaves the name in the containers only: app_info takes it from them
    (the definition names none), and refuses once a second project runs from the same directory."""
    token = uuid.uuid4().hex[:8]
    project = tmp_path / f"plain-{token}"  # the name the definition defaults to: no container carries it
    project.mkdir()
    (project / "compose.yaml").write_text(
        "services:\n"
        "  app:\n"
        f"    image: {BUSYBOX}\n"
        "    command: ['sleep', '3600']\n"
        "    stop_grace_period: 1s\n")
    first, second = f"by-hand-{token}", f"copy-{token}"
    params = {"app": {"name": f"plain-{token}", "project_dir": str(project)}, "store": str(tmp_path / "ledger")}
    try:
        compose(project, "-p", first, "up", "-d")
        run, info = module_playbook("selfhost.rollback.app_info", params)
        assert run.rc == 0, run.stdout[-3000:]
        assert (info["project_name"], info["project_name_from"]) == (first, "containers")
        assert info["running"] is True and info["services"]["app"]["container"] == f"{first}-app-1"
        assert f" -p {first} " in info["compose_command"]
        said = " ".join((run.stdout + run.stderr + " ".join(info.get("warnings") or [])).split())
        assert f"set project_name: {first} in the app definition so that it holds when no container runs" in said

        compose(project, "-p", second, "up", "-d")
        run, failed = module_playbook("selfhost.rollback.app_info", params)
        assert run.rc != 0 and failed["outcome"] == "failed"
        names = sorted([first, second])
        assert f"belong to two Compose projects, {names[0]!r} and {names[1]!r}, not 'plain-{token}' " in failed["msg"], failed["msg"]
        assert f"set project_name: {names[0]} or project_name: {names[1]} in the app definition" in failed["msg"]
        assert failed["reasons"] == [failed["msg"]]
    finally:
        for name in (first, second):
            compose(project, "-p", name, "down", "-v", "--timeout", "1", check=False)


def test_prerequisites_role_converges_and_is_idempotent(tmp_path, run_playbook):
    store = tmp_path / "ledger-root"
    playbook = tmp_path / "prereq.yml"
    playbook.write_text(json.dumps([{
        "name": "prerequisites", "hosts": "all", "gather_facts": True,
        "roles": [{"role": "selfhost.rollback.prerequisites", "vars": {"prerequisites_install": False, "prerequisites_store": str(store)}}],
    }]))
    check = run_playbook(playbook, check=True)
    assert check.rc == 0, check.stdout
    assert not store.exists()  # check mode changed nothing
    first = run_playbook(playbook)
    assert first.rc == 0 and first.changed() == ["selfhost.rollback.prerequisites : Create the ledger root"], first.stdout
    assert store.stat().st_mode & 0o777 == 0o700
    second = run_playbook(playbook)
    assert second.rc == 0 and second.changed() == []


def test_demo_playbook_parses(run_playbook):
    run = run_playbook(REPO / "demo" / "deploy.yml", inventory=REPO / "demo" / "inventory.yml", args=["--syntax-check"])
    assert run.rc == 0, run.stdout + run.stderr


def test_inventory_helper_writes_local_host(tmp_path):
    inventory = json.loads(write_inventory(tmp_path / "inv.json").read_text())
    assert inventory["all"]["hosts"]["localhost"]["ansible_connection"] == "local"
