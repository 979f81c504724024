"""Bad input: a clear error, nothing marked complete, containers back as they were."""

from __future__ import annotations

import os
import subprocess

BACKUP = "selfhost.rollback.backup"


def states(docker_client, project: str) -> dict:
    return {c.name: c.status for c in docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"})}


def sets(demo) -> list:
    directory = demo.store / demo.name / "backups"
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_bad_input_leaves_no_set_and_containers_as_they_were(demo_app, module_playbook, docker_client, tmp_path):
    demo = demo_app
    before = states(docker_client, demo.name)
    assert set(before.values()) == {"running"}

    run, result = module_playbook(BACKUP, {"app": demo.definition(volumes=["uploads", "nosuch"]), "store": str(demo.store)})
    assert run.rc != 0 and "volume 'nosuch' is not a named volume" in result["msg"], result["msg"]

    bad_db = demo.definition(databases=[{"service": "nosuchdb", "engine": "postgres", "database": "notes", "user": "notes"}])
    run, result = module_playbook(BACKUP, {"app": bad_db, "store": str(demo.store)})
    assert run.rc != 0 and "database service 'nosuchdb' is not a service" in result["msg"], result["msg"]

    wrong_db = demo.definition(databases=[{"service": "db", "engine": "postgres", "database": "nosuch", "user": "notes"}])
    run, result = module_playbook(BACKUP, {"app": wrong_db, "store": str(demo.store)})
    assert run.rc != 0 and "not reachable" in result["msg"], result["msg"]
    assert sets(demo) == [] and states(docker_client, demo.name) == before

    # target full: a 1 MB file system as the store
    small = tmp_path / "small-store"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        uploads = docker_client.volumes.get(f"{demo.name}_uploads").attrs["Mountpoint"]
        with open(os.path.join(uploads, "big.bin"), "wb") as handle:
            handle.write(os.urandom(3 * 1024 * 1024))
        run, result = module_playbook(BACKUP, {"app": demo.definition(), "store": str(small)})
        assert run.rc != 0 and "not enough free space" in result["msg"], result["msg"]
        assert states(docker_client, demo.name) == before
        # past the estimate (check off), the file system fills mid-write while the app is paused
        run, result = module_playbook(BACKUP, {"app": demo.definition(), "store": str(small), "space_check": False})
        assert run.rc != 0 and "full" in result["msg"], result["msg"]
        assert not any(os.path.exists(os.path.join(small, demo.name, "backups", s, "manifest.json"))
                       for s in os.listdir(small / demo.name / "backups"))
        assert os.listdir(small / demo.name / "backups") == []  # the partial set is gone
        assert states(docker_client, demo.name) == before  # unpaused
        assert demo.password not in run.stdout
    finally:
        subprocess.run(["umount", str(small)], check=False)

    # database engine not reachable: its container is stopped; it stays stopped, the app stays up
    demo.compose("stop", "db")
    stopped = states(docker_client, demo.name)
    run, result = module_playbook(BACKUP, {"app": demo.definition(), "store": str(demo.store)})
    assert run.rc != 0 and "not reachable" in result["msg"] and "'db'" in result["msg"], result["msg"]
    assert states(docker_client, demo.name) == stopped and sets(demo) == []

    # stop mode: a stopped container stays stopped, a running one is running after
    demo.compose("start", "db")
    run, result = module_playbook(BACKUP, {"app": demo.definition(), "store": str(demo.store),
                                           "consistency": {"uploads": "stop", "config": "stop"}})
    assert run.rc == 0, run.stdout
    assert "stop app" in result["actions"] and "start app" in result["actions"]
    assert set(states(docker_client, demo.name).values()) == {"running"}
    demo.wait_healthy()
