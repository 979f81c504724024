"""selfhost.rollback.release and release_info against the deployed demo app."""

from __future__ import annotations

import json
import os
import stat

from conftest import REGISTRY

RELEASE = "selfhost.rollback.release"
INFO = "selfhost.rollback.release_info"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def every_byte_under(path) -> bytes:
    data = b""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                data += handle.read()
    return data


def test_record_check_run_check_run_and_what_a_release_holds(demo_app, module_playbook, docker_client):
    (demo_app.project_dir / "models").mkdir()
    (demo_app.project_dir / "models" / "embed.gguf").write_bytes(b"weights v1")
    app = demo_app.definition(artifacts=[
        {"name": "models", "path": "models"},
        {"name": "model-list", "command": ["ls", "-1", "models"]},
    ])
    params = {"app": app, "store": str(demo_app.store), "archive_images": False}
    ledger = demo_app.store / demo_app.name

    run, result = module_playbook(RELEASE, params, check=True)
    assert run.rc == 0, run.stdout
    assert result["changed"] is True and result["created"] is True
    assert not demo_app.store.exists(), "check mode wrote to the ledger"

    run, result = module_playbook(RELEASE, params)
    assert run.rc == 0, run.stdout
    assert result["changed"] is True and result["created"] is True
    release_id = result["release_id"]
    record = json.loads((ledger / "releases" / f"{release_id}.json").read_text())
    assert record == result["release"]

    for check in (True, False):
        run, again = module_playbook(RELEASE, params, check=check)
        assert run.rc == 0, run.stdout
        assert again["changed"] is False and again["release_id"] == release_id, again["actions"]

    # the record: format, id from content, digests, fingerprint, runtime, schema, artifacts, volumes
    assert record["format"] == 1 and record["app"] == demo_app.name
    assert release_id.startswith("r-") and release_id.endswith(record["content_digest"][7:15])
    notes = docker_client.images.get(f"{REGISTRY}/selfhost/notes:1.0")
    app_service = record["services"]["app"]
    assert app_service["image_ref"] == f"{REGISTRY}/selfhost/notes:1.0"
    assert app_service["image_id"] == notes.id
    assert f"{REGISTRY}/selfhost/notes@{app_service['repo_digest']}" in notes.attrs["RepoDigests"]
    assert app_service["pinned_ref"] == f"{REGISTRY}/selfhost/notes:1.0@{app_service['repo_digest']}"
    assert record["services"]["db"]["source"] == "registry"
    assert sorted(record["config_fingerprint"]) == ["NOTES_DB_PASSWORD", "NOTES_PORT", "NOTES_VERSION"]
    assert all(v.startswith("hmac-sha256:") for v in record["config_fingerprint"].values())
    version = docker_client.version()
    assert record["runtime"]["engine_version"] == version["Version"]
    assert record["runtime"]["api_version"] == version["ApiVersion"]
    assert record["runtime"]["compose_version"][0].isdigit()
    assert record["schema_version"] == "1"
    assert record["artifacts"]["models"]["kind"] == "dir" and record["artifacts"]["models"]["files"] == 1
    assert record["artifacts"]["model-list"]["digest"].startswith("sha256:")
    assert record["volumes"] == {"dbdata": f"{demo_app.name}_dbdata", "uploads": f"{demo_app.name}_uploads"}
    assert record["compose"]["files"][0]["path"] == "compose.yaml"
    assert record["compose"]["config"]["services"]["app"]["image"] == "127.0.0.1:5000/selfhost/notes:${NOTES_VERSION:-1.0}"

    # current_release.json, modes, and no secret value anywhere in the ledger
    assert json.loads((ledger / "current_release.json").read_text())["release_id"] == release_id
    assert mode(ledger) == 0o700 and mode(ledger / "releases") == 0o700
    assert mode(ledger / "salt") == 0o600 and mode(ledger / "releases" / f"{release_id}.json") == 0o600
    assert demo_app.password.encode() not in every_byte_under(demo_app.store)
    assert demo_app.password not in json.dumps(result) + run.stdout

    # an artifact changes: a new release, and current follows it
    (demo_app.project_dir / "models" / "embed.gguf").write_bytes(b"weights v2")
    run, changed = module_playbook(RELEASE, params)
    assert run.rc == 0, run.stdout
    assert changed["changed"] is True and changed["release_id"] != release_id
    assert changed["release"]["artifacts"]["models"]["digest"] != record["artifacts"]["models"]["digest"]

    run, info = module_playbook(INFO, {"app": app, "store": str(demo_app.store), "release_id": "current"})
    assert run.rc == 0, run.stdout
    assert [r["release_id"] for r in info["releases"]] == [release_id, changed["release_id"]]
    assert [r["current"] for r in info["releases"]] == [False, True]
    assert info["current_release_id"] == changed["release_id"]
    assert info["release"]["release_id"] == changed["release_id"]
    assert all(r["restorable"] for r in info["releases"])  # the images are still on the engine

    # back to the first state: the first release is found again, not a third one
    (demo_app.project_dir / "models" / "embed.gguf").write_bytes(b"weights v1")
    run, back = module_playbook(RELEASE, params)
    assert run.rc == 0, run.stdout
    assert back["release_id"] == release_id and back["created"] is False
    assert back["changed"] is True and back["actions"] == [f"point current_release.json at {release_id}"]


def test_recording_a_stopped_app_fails_and_writes_nothing(demo_project, module_playbook):
    run, result = module_playbook(RELEASE, {"app": demo_project.definition(), "store": str(demo_project.store)})
    assert run.rc != 0
    assert "is running" in result["msg"] and "docker compose up -d" in result["msg"], result["msg"]
    assert not demo_project.store.exists()


def test_a_missing_release_is_named_clearly(demo_project, module_playbook):
    run, result = module_playbook(INFO, {"app": demo_project.definition(), "store": str(demo_project.store),
                                         "release_id": "r-nope"})
    assert run.rc != 0
    assert "release r-nope is not in" in result["msg"]
