"""The fleet test bed itself: three hosts with their own engines, reached over real SSH,
the demo healthy on each, secrets kept per host, failures visible where they happen,
and nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import fleet as fleet_lib

# one fleet per pytest worker: keep every fleet test on the same worker
pytestmark = pytest.mark.xdist_group("fleet")


def _write_play(path: Path, tasks: list[dict], hosts: str = "fleet") -> Path:
    path.write_text(json.dumps([{"name": "fleet probe", "hosts": hosts, "gather_facts": False, "tasks": tasks}]))
    return path


def _app_info_play(tmp_path: Path) -> Path:
    return _write_play(tmp_path / "app_info.yml", [{
        "name": "read the demo",
        "selfhost.rollback.app_info": {"app": "{{ rollback_apps[0] }}", "store": "{{ rollback_store }}"},
    }])


def _labelled(kind: str, label: str) -> list[str]:
    args = ["docker", kind, "ls", "-q", "--filter", f"label={label}"] if kind == "volume" else \
        ["docker", "ps", "-aq", "--filter", f"label={label}"]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


def test_ansible_reaches_every_host_over_ssh(fleet, run_playbook, tmp_path):
    play = _write_play(tmp_path / "reach.yml", [
        {"name": "ping", "ansible.builtin.ping": {}},
        {"name": "who answers", "ansible.builtin.command": "sh -c 'hostname; echo $SSH_CONNECTION'", "changed_when": False},
    ], hosts="all")
    run = run_playbook(play, inventory=fleet.inventory)
    assert run.rc == 0, run.stdout + run.stderr
    for host in fleet.hosts:
        assert run.task("ping", host=host.name)["result"]["ping"] == "pong"
        hostname, ssh_connection = run.task("who answers", host=host.name)["result"]["stdout_lines"]
        assert hostname == host.name
        # a real SSH session: the client on this machine, sshd on port 22 in the test host
        assert ssh_connection.split()[-1] == "22"
    canary = run_playbook(_write_play(tmp_path / "canary.yml", [{"name": "ping", "ansible.builtin.ping": {}}], hosts="canary"),
                          inventory=fleet.inventory)
    assert canary.rc == 0 and {r["host"] for r in canary.results} == {fleet.canary.name}


def test_app_info_reports_the_demo_healthy_on_each_host(fleet, run_playbook, tmp_path):
    run = run_playbook(_app_info_play(tmp_path), inventory=fleet.inventory)
    assert run.rc == 0, run.stdout + run.stderr
    for host in fleet.hosts:
        info = run.task("read the demo", host=host.name)["result"]
        assert info["running"] is True and info["changed"] is False
        app = info["services"]["app"]
        assert app["state"] == "running" and app["health"] == "healthy"
        assert fleet.container_ids(host)["app"].startswith(app["container_id"])
        assert info["health"]["ok"] and info["health"]["body"]["version"] == "1.0"
        # images came by 'docker load' (no registry on the hosts): tags, no RepoDigests
        assert app["repo_digests"] == []


def test_each_host_has_its_own_engine(fleet, docker_client):
    import docker

    engines = {fleet.engine_id(host) for host in fleet.hosts}
    assert len(engines) == len(fleet.hosts)
    assert docker_client.info()["ID"] not in engines
    ids = [fleet.container_ids(host) for host in fleet.hosts]
    assert all(set(i) == {"app", "db"} for i in ids)
    flat = [cid for i in ids for cid in i.values()]
    assert len(set(flat)) == len(flat)
    # the outer engine runs the test hosts, not their apps
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(ids[0]["app"])
    # every host has the demo's images, loaded once from one archive
    for host in fleet.hosts:
        tags = fleet.docker(host, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        assert set(fleet_lib.DEMO_IMAGES) <= set(tags)


def test_a_secret_stays_on_its_host(fleet, run_playbook, tmp_path):
    passwords = {host.name: host.password for host in fleet.hosts}
    assert all(passwords.values()) and len(set(passwords.values())) == len(passwords)
    play = _write_play(tmp_path / "env.yml", [
        {"name": "read the env file", "ansible.builtin.command": f"cat {fleet_lib.DEMO_PROJECT_DIR}/.env", "changed_when": False},
        {"name": "read the demo", "selfhost.rollback.app_info": {"app": "{{ rollback_apps[0] }}", "store": "{{ rollback_store }}"}},
    ])
    run = run_playbook(play, inventory=fleet.inventory, verbosity=2)
    assert run.rc == 0, run.stdout + run.stderr
    for host in fleet.hosts:
        others = [p for name, p in passwords.items() if name != host.name]
        env_file = json.dumps(run.task("read the env file", host=host.name))
        assert f"NOTES_DB_PASSWORD={host.password}" in env_file
        assert not any(p in env_file for p in others)
        info = json.dumps(run.task("read the demo", host=host.name))
        assert not any(p in info for p in passwords.values())


def test_a_killed_app_container_shows_on_that_host_only(fleet, run_playbook, tmp_path):
    victim = fleet.hosts[1]
    killed = fleet.kill_service(victim, "app")
    run = run_playbook(_app_info_play(tmp_path), inventory=fleet.inventory)
    assert run.rc == 0, run.stdout + run.stderr
    for host in fleet.hosts:
        info = run.task("read the demo", host=host.name)["result"]
        if host is victim:
            assert info["running"] is False and info["health"]["ok"] is False
            assert info["services"]["app"]["state"] == "exited"
            assert killed.startswith(info["services"]["app"]["container_id"])
            assert info["services"]["db"]["state"] == "running"
        else:
            assert info["running"] is True and info["health"]["ok"] is True
    assert fleet.repair() == [victim.name]
    assert fleet.health(victim)[0] == 200


def test_a_host_that_goes_away_is_unreachable_and_comes_back(fleet, run_playbook, tmp_path):
    victim = fleet.hosts[-1]
    fleet.kill_host(victim)
    play = _write_play(tmp_path / "ping.yml", [{"name": "ping", "ansible.builtin.ping": {}}])
    run = run_playbook(play, inventory=fleet.inventory)
    assert run.rc != 0
    assert {r["host"] for r in run.failed} == {victim.name}
    assert run.task("ping", host=victim.name)["status"] == "unreachable"
    fleet.start_host(victim)
    # the engine brings the app back by itself (restart: unless-stopped)
    assert fleet.wait_healthy(victim, version="1.0")["status"] == "ok"
    assert run_playbook(play, inventory=fleet.inventory).rc == 0


def test_a_stopped_engine_is_reported_by_the_prerequisites_role(fleet, run_playbook, tmp_path):
    victim = fleet.canary
    fleet.stop_engine(victim)
    play = tmp_path / "prereq.yml"
    play.write_text(json.dumps([{"name": "prerequisites", "hosts": "fleet", "gather_facts": True,
                                 "roles": [{"role": "selfhost.rollback.prerequisites"}]}]))
    run = run_playbook(play, inventory=fleet.inventory)
    assert {r["host"] for r in run.failed} == {victim.name}
    assert "The Docker Engine does not answer on host1" in run.task("Stop when there is no Docker Engine", host=victim.name)["result"]["msg"]
    fleet.start_engine(victim)
    assert fleet.wait_healthy(victim)["version"] == "1.0"


def test_a_missing_host_image_says_how_to_build_it(monkeypatch):
    monkeypatch.setattr(fleet_lib, "HOST_IMAGE", "selfhost/host:not-built")
    with pytest.raises(fleet_lib.FleetError, match=r"run scripts/build-host-image.sh \(make setup\)"):
        fleet_lib.up(1)


def test_teardown_and_sweep_leave_nothing_behind(tmp_path):
    # a failed start tears down what it started
    failed_owner = f"state:{tmp_path / 'failed'}"
    with pytest.raises(fleet_lib.FleetError, match="images missing on this machine"):
        fleet_lib.up(1, tmp_path / "failed", deploy=False, images=["127.0.0.1:5000/selfhost/absent:0"], owner=failed_owner)
    assert not _labelled("container", f"{fleet_lib.OWNER_LABEL}={failed_owner}")
    assert not _labelled("volume", f"{fleet_lib.OWNER_LABEL}={failed_owner}")

    # a normal teardown removes the hosts and their engines' volumes
    small = fleet_lib.up(1, tmp_path / "small", deploy=False, images=())
    label = f"{fleet_lib.RUN_LABEL}={small.run_id}"
    assert len(_labelled("container", label)) == 1 and len(_labelled("volume", label)) == 1
    small.down()
    assert not _labelled("container", label) and not _labelled("volume", label)

    # hosts of a run that died before its teardown are swept; live fleets stay
    orphan = fleet_lib.up(1, tmp_path / "orphan", deploy=False, images=(), owner="pid:999999999:0")
    live = fleet_lib.up(1, tmp_path / "live", deploy=False, images=())
    try:
        removed = fleet_lib.sweep()
        assert orphan.hosts[0].container in removed and orphan.hosts[0].volume in removed
        assert not _labelled("container", f"{fleet_lib.RUN_LABEL}={orphan.run_id}")
        assert live.running(live.hosts[0])
    finally:
        orphan.down()
        live.down()


def test_the_cli_brings_a_fleet_up_and_down(tmp_path):
    state = tmp_path / "cli"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cli = [fleet_lib.sys.executable, str(fleet_lib.REPO / "tests" / "fleet.py")]
    up = subprocess.run([*cli, "up", "--hosts", "1", "--no-deploy", "--state", str(state)],
                        capture_output=True, text=True, env=env, timeout=300, check=False)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == str(state / "inventory.yml")
        ping = subprocess.run([fleet_lib.ansible_bin("ansible"), "-i", up.stdout.strip(), "all", "-m", "ansible.builtin.ping"],
                              capture_output=True, text=True, env=fleet_lib.Fleet.load(state).ansible_env(), timeout=120, check=False)
        assert ping.returncode == 0 and '"ping": "pong"' in ping.stdout, ping.stdout + ping.stderr
        # a CLI fleet belongs to its state dir: a sweep leaves it alone
        assert fleet_lib.Fleet.load(state).hosts[0].container not in fleet_lib.sweep()
    finally:
        down = subprocess.run([*cli, "down", "--state", str(state)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert down.returncode == 0, down.stderr
    assert not (state / "fleet.json").exists()
