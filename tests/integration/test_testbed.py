"""The test bed itself: the demo versions are real, distinct, and behave as the
rollback cases need them to."""

from __future__ import annotations

import json
import urllib.request


from conftest import NOTES_IMAGE, REGISTRY

VERSIONS = ["1.0", "1.1", "2.0", "2.1", "2.2"]


def registry_digest(repository: str, tag: str) -> str:
    request = urllib.request.Request(
        f"http://{REGISTRY}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        method="HEAD",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Docker-Content-Digest"]


def test_demo_versions_are_in_the_registry_with_distinct_digests(registry):
    digests = {v: registry_digest("selfhost/notes", v) for v in VERSIONS}
    assert all(d.startswith("sha256:") for d in digests.values()), digests
    assert len(set(digests.values())) == len(VERSIONS), digests


def test_local_images_carry_the_registry_digest(docker_client):
    for version in VERSIONS:
        image = docker_client.images.get(f"{NOTES_IMAGE}:{version}")
        repo_digests = [d.split("@", 1)[1] for d in image.attrs["RepoDigests"]]
        assert registry_digest("selfhost/notes", version) in repo_digests


def test_versions_report_themselves_and_migrate_additively(demo_app):
    assert demo_app.wait_healthy() == {"status": "ok", "version": "1.0", "schema": 1, "code_schema": 1}
    demo_app.add_note("before", "written under 1.0")
    assert demo_app.deploy("1.1").returncode == 0
    assert demo_app.wait_healthy()["schema"] == 2
    # 1.0 still runs on schema 2 (the migration was additive) and sees the data
    assert demo_app.deploy("1.0").returncode == 0
    assert demo_app.wait_healthy() == {"status": "ok", "version": "1.0", "schema": 2, "code_schema": 1}
    assert [n["title"] for n in demo_app.notes()] == ["before"]
    assert demo_app.psql("select string_agg(version::text, ',' order by version) from schema_migrations") == "1,2"


def test_1x_refuses_schema_3_with_a_clear_log_line(demo_app):
    assert demo_app.deploy("2.0").returncode == 0
    assert demo_app.wait_healthy()["schema"] == 3
    proc = demo_app.deploy("1.1")
    assert proc.returncode != 0
    assert "database schema is version 3 but notes 1.1 supports at most schema 2" in demo_app.logs()


def test_2_1_fails_its_health_check(demo_app):
    proc = demo_app.deploy("2.1")
    assert proc.returncode != 0  # compose --wait sees the container turn unhealthy
    status, body = demo_app.health()
    assert status == 503 and body["version"] == "2.1", (status, body)


def test_the_secret_lives_in_env_not_in_the_compose_file(demo_project):
    assert demo_project.password not in (demo_project.project_dir / "compose.yaml").read_text()
    assert demo_project.password in (demo_project.project_dir / ".env").read_text()
    assert (demo_project.project_dir / ".env").stat().st_mode & 0o777 == 0o600


def test_playbook_runner_parses_per_task_results(module_playbook):
    run, result = module_playbook("ansible.builtin.command", {"cmd": "docker compose version --short"})
    assert run.rc == 0, run.stdout
    assert result["rc"] == 0 and result["stdout"][0].isdigit()
    assert json.dumps(run.results)  # serialisable records
