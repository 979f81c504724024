"""The compatibility gate and migration notes against the real demo app.

Releases, backup sets and verifications are made by the real modules, then the gate
is asked about going back; it must change nothing while it looks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import yaml


def snapshot(demo, docker_client) -> dict:
    """Everything the gate must leave alone: containers, images, project files, ledger files."""
    def tree(root: Path) -> dict:
        out = {}
        for base, _dirs, files in os.walk(root):
            for name in files:
                path = Path(base) / name
                if name == "lock":
                    continue  # the lock file's owner note is rewritten by any locked run
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        return out
    # only this project's containers and images: other tests run beside this one
    project = docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={demo.name}"})
    containers = {c.id: (c.status, c.image.id) for c in project}
    images = sorted({(c.image.id, tuple(sorted(docker_client.images.get(c.image.id).tags))) for c in project})
    return {"containers": containers, "images": images, "project": tree(demo.project_dir), "ledger": tree(demo.store)}


class Steps:
    def __init__(self, demo, module_playbook, **app_overrides):
        self.demo, self.run, self.app_overrides = demo, module_playbook, app_overrides

    def params(self, **extra):
        return {"app": self.demo.definition(**self.app_overrides), "store": str(self.demo.store), **extra}

    def ok(self, module, **extra):
        run, result = self.run(f"selfhost.rollback.{module}", self.params(**extra))
        assert run.rc == 0, f"{module} failed: {result.get('msg')}\n{run.stdout[-2000:]}"
        return result

    def release(self):
        return self.ok("release")["release_id"]

    def backup(self):
        set_id = self.ok("backup")["set_id"]
        self.ok("backup_verify", set_id=set_id)
        return set_id

    def check(self, check_mode=False, **extra):
        run, result = self.run("selfhost.rollback.rollback_check", self.params(**extra), check=check_mode)
        assert run.rc == 0, f"rollback_check failed: {result.get('msg')}\n{run.stdout[-2000:]}"
        return result


def test_gate_verdicts_across_the_demo_versions(demo_app, module_playbook, docker_client):
    steps = Steps(demo_app, module_playbook)
    demo_app.add_note("kept", "written under 1.0")
    r10 = steps.release()
    steps.backup()

    assert demo_app.deploy("1.1").returncode == 0
    r11 = steps.release()
    s11 = steps.backup()

    # 1.1 -> back to 1.0: schema 2 is additive, so the images alone suffice
    result = steps.check()
    assert result["verdict"] == "ready", result["table"]
    assert result["target"]["release_id"] == r10
    assert result["restore_set"] is None
    assert any(line.startswith("schema ") and " ok " in line for line in result["table"])

    assert demo_app.deploy("2.0").returncode == 0
    steps.release()
    demo_app.add_note("lost", "written under 2.0, after the backup")

    # 2.0 -> back to 1.1: schema 3 is destructive; the verified set taken under 1.1 brings the data back
    before = snapshot(demo_app, docker_client)
    result = steps.check()
    after = snapshot(demo_app, docker_client)
    assert before == after, "the gate changed something on the host"
    assert result["verdict"] == "needs_data_restore", result["table"]
    assert result["target"]["release_id"] == r11
    assert result["restore_set"]["set_id"] == s11
    assert result["restore_set"]["release_id"] == r11
    assert result["data_loss"]["tables"]["public.documents"] == {"in_set": None, "now": 2}
    assert result["data_loss"]["tables"]["public.notes"] == {"in_set": 1, "now": None}
    assert "no longer exists under that name" in result["data_loss"]["summary"]
    assert any(r.startswith("schema: the live schema 3 is newer than the target's 2 and step 3 is not additive") and s11 in r
               for r in result["reasons"])
    checked = {c["check"]: c for c in result["checks"]}
    assert checked["images"]["level"] == "ok" and checked["space"]["level"] == "ok"
    assert checked["runtime"]["level"] == "ok"

    # the same answer in check mode
    assert steps.check(check_mode=True)["verdict"] == "needs_data_restore"

    # that set failing verification: blocked, in one sentence
    archive = next(p for p in (demo_app.store / demo_app.name / "backups" / s11).iterdir() if p.name.startswith("database-"))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    run, verify = module_playbook("selfhost.rollback.backup_verify", steps.params(set_id=s11, checks=["deep"], fail_on_mismatch=False))
    assert run.rc == 0 and verify["passed"] is False
    result = steps.check()
    assert result["verdict"] == "blocked", result["table"]
    schema = next(r for r in result["reasons"] if r.startswith("schema: "))
    assert f"no verified backup set taken under {r11}" in schema and f"{s11} exist but did not pass verification" in schema

    # and deleted: still blocked
    shutil.rmtree(demo_app.store / demo_app.name / "backups" / s11)
    result = steps.check()
    assert result["verdict"] == "blocked"
    assert any(f"no verified backup set taken under {r11}" in r for r in result["reasons"])

    # everything the gate said is free of the secret
    assert demo_app.password not in json.dumps(result)


def test_migration_note_between_releases(demo_app, module_playbook):
    steps = Steps(demo_app, module_playbook)
    r11_before = steps.release()
    s10 = steps.backup()
    assert demo_app.deploy("2.0").returncode == 0
    demo_app.write_env(NOTES_FEATURE_FLAG="on")  # a key added with the upgrade
    assert demo_app.compose("up", "-d", "--wait").returncode == 0
    r20 = steps.release()

    params = dict(text="2.0 renames notes to documents", backup_set=s10)
    run, first = module_playbook("selfhost.rollback.migration_note", steps.params(**params), check=True)
    assert run.rc == 0 and first["changed"] is True
    notes_dir = demo_app.store / demo_app.name / "notes"
    assert not notes_dir.exists()

    run, first = module_playbook("selfhost.rollback.migration_note", steps.params(**params), diff=True)
    assert run.rc == 0 and first["changed"] is True
    note = first["note"]
    assert (note["from_release"], note["to_release"], note["backup_set"]) == (r11_before, r20, s10)
    assert note["schema"]["before"] == "1" and note["schema"]["after"] == "3"
    assert note["schema"]["reversible_without_data"] is False
    assert note["config"] == {"added": ["NOTES_FEATURE_FLAG"], "removed": [], "changed": ["NOTES_VERSION"]}
    assert [(c["service"], c["change"], c["before_version"], c["after_version"]) for c in note["images"]] == [("app", "changed", "1.0", "2.0")]
    assert "restore the data from a backup set taken under" in note["how_to_reverse"]
    md = Path(first["path"][: -len(".json")] + ".md").read_text()
    assert md.startswith(f"# Migration note: {r11_before} → {r20}")
    assert "## Operator's note\n2.0 renames notes to documents" in md
    assert (notes_dir.stat().st_mode & 0o777, Path(first["path"]).stat().st_mode & 0o777) == (0o700, 0o600)
    for path in notes_dir.iterdir():
        assert demo_app.password not in path.read_text()

    run, again = module_playbook("selfhost.rollback.migration_note", steps.params(**params))
    assert run.rc == 0 and again["changed"] is False

    run, bad = module_playbook("selfhost.rollback.migration_note", steps.params(from_release="r-unknown"))
    assert run.rc != 0 and bad["msg"].startswith(f"app {demo_app.name}: from_release release r-unknown is not in the ledger")


def test_version_lock_violated_blocks(demo_project, module_playbook):
    compose_path = demo_project.project_dir / "compose.yaml"
    compose = yaml.safe_load(compose_path.read_text())
    worker = dict(compose["services"]["app"])
    worker.pop("ports")
    worker["image"] = "127.0.0.1:5000/selfhost/notes:${WORKER_VERSION:-1.0}"
    compose["services"]["worker"] = worker
    compose_path.write_text(yaml.safe_dump(compose, sort_keys=False))
    steps = Steps(demo_project, module_playbook, version_locks=[["app", "worker"]])

    assert demo_project.deploy("1.0").returncode == 0
    steps.release()
    demo_project.write_env(WORKER_VERSION="1.1")  # one service of the locked group changed alone
    assert demo_project.compose("up", "-d", "--wait").returncode == 0
    steps.release()
    demo_project.version = "1.1"
    demo_project.write_env(WORKER_VERSION="1.1")
    assert demo_project.compose("up", "-d", "--wait").returncode == 0
    steps.release()

    result = steps.check()
    assert result["verdict"] == "blocked", result["table"]
    assert "version locks: version lock ['app', 'worker'] is violated: app 1.0, worker 1.1; locked services must run the same version" in result["reasons"]

    run, result = module_playbook("selfhost.rollback.rollback_check", steps.params(target="r-does-not-exist"))
    assert run.rc != 0
    assert result["msg"].startswith(f"app {demo_project.name}: release r-does-not-exist is not in the ledger; recorded releases: r-")
