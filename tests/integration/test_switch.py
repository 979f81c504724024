"""switch: forward to a new version, back to a recorded release, exactly and idempotently."""

from __future__ import annotations

import json


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
    assert demo_app.wait_healthy()["version"] == "1.1"
    run, result = module_playbook("selfhost.rollback.switch", back)
    assert run.rc == 0 and result["changed"] is True, result.get("msg")
    assert all(s["ok"] for s in result["services"].values()), result["services"]
    assert demo_app.wait_healthy()["version"] == "1.0"
    assert "NOTES_VERSION=1.0" in (demo_app.project_dir / ".env").read_text()
    app_image = docker_client.containers.get(result["services"]["app"]["container_id"]).attrs["Image"]
    assert app_image == r10["release"]["services"]["app"]["image_id"]
    run, again = module_playbook("selfhost.rollback.switch", back)
    assert run.rc == 0 and again["changed"] is False, again["actions"]
    assert demo_app.password not in json.dumps(run.results)


def test_unknown_release_changes_nothing(demo_app, module_playbook):
    before = (demo_app.project_dir / ".env").read_text(), demo_app.container_ids()
    run, result = module_playbook("selfhost.rollback.switch", {"app": demo_app.definition(), "store": str(demo_app.store),
                                                               "release": "r-nope"})
    assert run.rc != 0 and result["msg"] == f"app {demo_app.name}: release r-nope is not in the ledger; recorded releases: none"
    assert ((demo_app.project_dir / ".env").read_text(), demo_app.container_ids()) == before
