"""The image archive: a release whose tag left the registry and whose image was pruned
locally is still restorable, and starts."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import NOTES_IMAGE, REGISTRY

RELEASE = "selfhost.rollback.release"
ARCHIVE = "selfhost.rollback.image_archive"
INFO = "selfhost.rollback.release_info"


def delete_manifest(repository: str, digest: str) -> int:
    request = urllib.request.Request(f"http://{REGISTRY}/v2/{repository}/manifests/{digest}", method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def own_notes_image(docker_client, registry, tmp_path):
    """notes 1.0 under a repository of its own, with an image ID of its own, so that deleting and
    pruning it touches nothing the rest of the test bed uses."""
    repository = f"selfhost-test/notes-{uuid.uuid4().hex[:8]}"
    ref = f"{REGISTRY}/{repository}:1.0"
    context = tmp_path / "own-image"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {NOTES_IMAGE}:1.0\nLABEL selfhost.test={uuid.uuid4().hex}\n")
    subprocess.run(["docker", "build", "-q", "-t", ref, str(context)], check=True, capture_output=True, timeout=300,
                   env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"})
    subprocess.run(["docker", "push", "-q", ref], check=True, capture_output=True, timeout=300)
    image = docker_client.images.get(ref)
    digest = [d.split("@")[1] for d in image.attrs["RepoDigests"] if d.startswith(f"{REGISTRY}/{repository}@")][0]
    try:
        yield {"repository": repository, "ref": ref, "image_id": image.id, "digest": digest}
    finally:
        delete_manifest(repository, digest)
        # this fixture is torn down before demo_project: stop what runs the image first
        for container in docker_client.containers.list(all=True, filters={"ancestor": image.id}):
            container.remove(force=True)
        for leftover in (image.id, ref):
            try:
                docker_client.images.remove(leftover, force=True)
            except Exception:  # already gone: the test prunes it and may not load it back
                pass


def test_a_release_whose_image_left_registry_and_engine_starts_from_the_archive(
        demo_project, own_notes_image, module_playbook, docker_client):
    compose = demo_project.project_dir / "compose.yaml"
    compose.write_text(compose.read_text().replace(f"{NOTES_IMAGE}:", f"{REGISTRY}/{own_notes_image['repository']}:"))
    assert demo_project.deploy("1.0").returncode == 0, demo_project.logs()
    demo_project.wait_healthy()
    demo_project.add_note("kept", "across the restore")
    app = demo_project.definition()
    store = str(demo_project.store)
    ledger = demo_project.store / demo_project.name

    run, result = module_playbook("selfhost.rollback.pin", {"app": app, "store": store})
    assert run.rc == 0 and result["changed"], run.stdout
    run, recorded = module_playbook(RELEASE, {"app": app, "store": store})
    assert run.rc == 0, run.stdout
    release_id = recorded["release_id"]
    assert sorted(recorded["archive"]["exported"]) == sorted(s["image_id"] for s in recorded["release"]["services"].values())
    archived = recorded["release"]["images_archived"]
    assert own_notes_image["image_id"] in archived
    index = json.loads((ledger / "images" / "index.json").read_text())
    assert index["archives"][own_notes_image["image_id"]]["releases"] == [release_id]
    assert (ledger / archived[own_notes_image["image_id"]]).stat().st_mode & 0o777 == 0o600
    assert demo_project.password.encode() not in b"".join(p.read_bytes() for p in ledger.rglob("*.json"))

    # the archive is kept in step already: nothing to do
    for check in (True, False):
        run, result = module_playbook(ARCHIVE, {"app": app, "store": store}, check=check)
        assert run.rc == 0 and result["changed"] is False, run.stdout

    # the tag leaves the registry and the image leaves the engine
    demo_project.compose("down", "--timeout", "5")
    assert delete_manifest(own_notes_image["repository"], own_notes_image["digest"]) == 202
    docker_client.images.remove(own_notes_image["image_id"], force=True)
    assert subprocess.run(["docker", "pull", "-q", own_notes_image["ref"]], capture_output=True, check=False).returncode != 0

    run, info = module_playbook(INFO, {"app": app, "store": store})
    assert run.rc == 0, run.stdout
    assert info["releases"][0]["restorable"] is True and info["releases"][0]["missing_images"] == []

    override = demo_project.project_dir / "compose.restored.yaml"
    params = {"app": app, "store": store, "state": "loaded", "release_id": release_id, "override_file": str(override)}
    run, result = module_playbook(ARCHIVE, params, check=True)
    assert run.rc == 0, run.stdout
    assert result["changed"] is True
    assert not override.exists()
    with pytest.raises(Exception):
        docker_client.images.get(own_notes_image["image_id"])

    run, result = module_playbook(ARCHIVE, params)
    assert run.rc == 0, run.stdout
    assert result["changed"] is True
    rows = {r["service"]: r for r in result["images"]}
    assert rows["app"]["source"] == "archive" and rows["app"]["action"] == "loaded"
    assert rows["db"]["source"] == "local"
    assert docker_client.images.get(own_notes_image["image_id"]).id == own_notes_image["image_id"]
    # a loaded image has no registry digest here, so the app service runs by image ID
    assert result["compose_override"] == {"services": {"app": {"image": own_notes_image["image_id"]}}}
    assert json.loads(override.read_text()) == result["compose_override"]

    for check in (True, False):
        run, again = module_playbook(ARCHIVE, params, check=check)
        assert run.rc == 0 and again["changed"] is False, run.stdout

    # the proof: the release starts from what came out of the archive, with its data
    proc = demo_project.compose("-f", str(compose), "-f", str(override), "up", "-d", "--pull", "never",
                                "--wait", "--wait-timeout", "90", check=False)
    assert proc.returncode == 0, proc.stderr + demo_project.logs()
    assert demo_project.wait_healthy()["version"] == "1.0"
    assert [n["title"] for n in demo_project.notes()] == ["kept"]
    assert demo_project.container_ids()["app"]
    running = docker_client.containers.get(demo_project.container_ids()["app"])
    assert running.attrs["Image"] == own_notes_image["image_id"]


def test_loading_a_release_nothing_can_bring_back_fails_clearly(demo_project, module_playbook):
    ledger = demo_project.store / demo_project.name
    (ledger / "releases").mkdir(parents=True)
    gone = "sha256:" + "0" * 64
    (ledger / "releases" / "r-20200101T000000Z-00000000.json").write_text(json.dumps({
        "format": 1, "release_id": "r-20200101T000000Z-00000000", "recorded_at": "2020-01-01T00:00:00Z",
        "services": {"app": {"image_id": gone, "image_ref": f"{REGISTRY}/selfhost-test/gone:1",
                             "repo_digest": "sha256:" + "1" * 64,
                             "pinned_ref": f"{REGISTRY}/selfhost-test/gone:1@sha256:" + "1" * 64}}}))
    run, result = module_playbook(ARCHIVE, {"app": demo_project.definition(), "store": str(demo_project.store),
                                            "state": "loaded", "release_id": "r-20200101T000000Z-00000000"})
    assert run.rc != 0
    assert "cannot be restored" in result["msg"] and "selfhost-test/gone:1" in result["msg"], result["msg"]
