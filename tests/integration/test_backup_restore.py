"""Backup sets on the demo app, end to end through ansible-playbook: capture, prove,
restore after disaster (Velero-style), refuse a corrupted set, and bad input."""

from __future__ import annotations

import json


from conftest import http

BACKUP = "selfhost.rollback.backup"
VERIFY = "selfhost.rollback.backup_verify"
RESTORE = "selfhost.rollback.restore"


def params(demo, **extra):
    return {"app": demo.definition(), "store": str(demo.store), **extra}


def uploads(demo) -> list:
    status, body = http("GET", f"{demo.url}/uploads")
    assert status == 200, body
    return body


def upload(demo, name: str, data: bytes) -> None:
    status, body = http("POST", f"{demo.url}/uploads/{name}", data)
    assert status in (200, 201), (status, body)


def test_backup_prove_disaster_restore(demo_app, module_playbook, docker_client):
    demo = demo_app
    demo.add_note("kept", "written before the backup")
    demo.add_note("also kept", "x" * 1000)
    upload(demo, "report.txt", b"quarterly numbers\n")
    before_ids = demo.container_ids()

    # check mode predicts, changes nothing
    run, result = module_playbook(BACKUP, params(demo), check=True)
    assert run.rc == 0, run.stdout
    assert result["changed"] is True and result["set_id"] is None
    assert not (demo.store / demo.name / "backups").exists() or not list((demo.store / demo.name / "backups").iterdir())
    kinds = {(i["kind"], i["name"]) for i in result["items"]}
    assert kinds == {("database", "db-notes"), ("volume", "uploads"), ("path", "config")}
    assert result["left_out"][0]["name"] == "dbdata"

    run, result = module_playbook(BACKUP, params(demo))
    assert run.rc == 0, run.stdout
    assert result["changed"] is True
    set_id = result["set_id"]
    set_dir = demo.store / demo.name / "backups" / set_id
    manifest = json.loads((set_dir / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["set_id"] == set_id and manifest["app"] == demo.name
    assert manifest["schema_version"] == "1" and manifest["release_id"] is None
    db = next(i for i in manifest["items"] if i["kind"] == "database")
    assert db["tables"]["public.notes"] == 2
    vol = next(i for i in manifest["items"] if i["name"] == "uploads")
    assert vol["files"]["report.txt"]["size"] == len(b"quarterly numbers\n")
    assert oct(set_dir.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in set_dir.iterdir())
    assert demo.password not in (set_dir / "manifest.json").read_text() and demo.password not in run.stdout
    # running containers still running, same containers
    assert demo.container_ids() == before_ids
    assert all(c.status == "running" for c in docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={demo.name}"}))

    # a second run makes a second set (documented: not idempotent)
    run, again = module_playbook(BACKUP, params(demo))
    assert run.rc == 0 and again["changed"] and again["set_id"] != set_id

    run, verified = module_playbook(VERIFY, params(demo, set_id=set_id))
    assert run.rc == 0, run.stdout
    assert verified["passed"] is True and verified["failures"] == []
    assert [r["kind"] for r in verified["runs"]] == ["deep", "test_restore"]
    recorded = json.loads((set_dir / "verification.json").read_text())
    assert [r["passed"] for r in recorded] == [True, True]

    # disaster: data changes, a sentinel appears, then the volumes are destroyed
    demo.add_note("after the backup")
    upload(demo, "sentinel", b"must vanish")
    demo.compose("down", "-v", "--timeout", "5")
    assert not docker_client.volumes.list(filters={"label": f"com.docker.compose.project={demo.name}"})

    run, restored = module_playbook(RESTORE, params(demo, set_id=set_id), check=True)
    assert run.rc == 0, run.stdout
    assert restored["changed"] is True
    run, restored = module_playbook(RESTORE, params(demo, set_id=set_id))
    assert run.rc == 0, run.stdout
    assert restored["changed"] is True and restored["live"] is True
    demo.wait_healthy()
    assert [n["title"] for n in demo.notes()] == ["kept", "also kept"]
    names = [u["name"] if isinstance(u, dict) else u for u in uploads(demo)]
    assert "report.txt" in names and "sentinel" not in names

    # idempotence: the target still holds exactly what the restore left
    run, second = module_playbook(RESTORE, params(demo, set_id=set_id))
    assert run.rc == 0, run.stdout
    assert second["changed"] is False, second
    run, second = module_playbook(RESTORE, params(demo, set_id=set_id), check=True)
    assert run.rc == 0 and second["changed"] is False

    # a flipped bit: verification fails naming the item, restore refuses and changes nothing
    archive = set_dir / vol["archive"]
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    demo.add_note("written after restore")
    run, verified = module_playbook(VERIFY, params(demo, set_id=set_id, checks=["deep"]))
    assert run.rc != 0
    assert verified["passed"] is False
    assert any(f.startswith("volume uploads:") and "checksum" in f for f in verified["failures"]), verified["failures"]
    ids = demo.container_ids()
    run, refused = module_playbook(RESTORE, params(demo, set_id=set_id, force=True))
    assert run.rc != 0 and "restore refused" in refused["msg"], refused
    assert demo.container_ids() == ids
    assert [n["title"] for n in demo.notes()][-1] == "written after restore"
