"""selfhost.rollback.pin and the pin role against the real engine and the local registry."""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid

import pytest

from conftest import REGISTRY, REPO, write_inventory

PIN = "selfhost.rollback.pin"


def registry_digest(repository: str, tag: str) -> str:
    request = urllib.request.Request(
        f"http://{REGISTRY}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}, method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Docker-Content-Digest"]


def without_pins(text: str) -> str:
    """The text with every '@sha256:<hex>' (and the ':latest' pin adds to untagged images) taken out."""
    import re

    return re.sub(r"(:latest)?@sha256:[0-9a-f]{64}", "", text)


def test_pin_the_demo_check_run_check_run(demo_app, module_playbook):
    compose = demo_app.project_dir / "compose.yaml"
    original = compose.read_bytes()
    params = {"app": demo_app.definition(), "store": str(demo_app.store)}

    run, result = module_playbook(PIN, params, check=True, diff=True)
    assert run.rc == 0, run.stdout
    assert result["changed"] is True
    assert compose.read_bytes() == original, "check mode changed the file"
    assert not demo_app.store.exists(), "check mode created the ledger"
    assert result["diff"][0]["before"] == original.decode()
    predicted = result["diff"][0]["after"]

    run, result = module_playbook(PIN, params, diff=True)
    assert run.rc == 0, run.stdout
    assert result["changed"] is True
    pinned = compose.read_text()
    assert pinned == predicted, "the real run differs from what check mode showed"
    postgres = registry_digest("selfhost/postgres", "15")
    notes = registry_digest("selfhost/notes", "1.0")
    assert f"    image: {REGISTRY}/selfhost/postgres:15@{postgres}\n" in pinned
    assert f"    image: {REGISTRY}/selfhost/notes:${{NOTES_VERSION:-1.0}}@{notes}  # the version users upgrade\n" in pinned
    # byte-for-byte outside the image lines: comments, anchors, interpolation, blank lines
    assert without_pins(pinned).encode() == original
    assert sorted(p["after"].rsplit("@", 1)[1] for p in result["pins"]) == sorted([postgres, notes])
    assert oct(compose.stat().st_mode & 0o777) == "0o644"

    for check in (True, False):
        run, result = module_playbook(PIN, params, check=check)
        assert run.rc == 0, run.stdout
        assert result["changed"] is False, (check, result["pins"])
        assert compose.read_text() == pinned

    # Compose reads the pinned file and the app still runs the very same images
    config = json.loads(demo_app.compose("config", "--format", "json").stdout)
    assert config["services"]["app"]["image"] == f"{REGISTRY}/selfhost/notes:1.0@{notes}"
    assert demo_app.compose("up", "-d", "--wait", "--wait-timeout", "90").returncode == 0
    assert demo_app.wait_healthy()["version"] == "1.0"


AI_BASE = """\
# An AI stack written the way people write them.
x-tools-image: &tools-image 127.0.0.1:5000/selfhost/tools:busybox
x-common: &common
  restart: "no"
  command: ["sleep", "3600"]

services:
  embedder:
    <<: *common
    image: *tools-image          # shared with the gpu variant
  embedder-gpu:
    <<: *common
    image: *tools-image
    profiles: [gpu]
  vectors:
    <<: *common
    image: "{untagged}"
  custom:
    <<: *common
    build: ./custom
    image: selfhost/base:bookworm
  only-built:
    <<: *common
    build: ./custom
    profiles: [never]
  from-env:
    <<: *common
    image: ${{TOOLS_IMAGE:-127.0.0.1:5000/selfhost/tools:busybox}}
  future:
    <<: *common
    image: 127.0.0.1:5000/selfhost/notes:9.9
    profiles: [next]
"""

AI_OVERRIDE = """\
services:
  db:   # second file, tag from a variable
    image: '127.0.0.1:5000/selfhost/postgres:${{PG_TAG:-15}}'
    command: ["sleep", "3600"]
"""


@pytest.fixture
def untagged_image(docker_client, registry):
    """A registry repository with only 'latest', as untagged references use."""
    repo = f"{REGISTRY}/selfhost-test/vec-{uuid.uuid4().hex[:8]}"
    image = docker_client.images.get(f"{REGISTRY}/selfhost/tools:busybox")
    image.tag(repo, "latest")
    subprocess.run(["docker", "push", "-q", f"{repo}:latest"], check=True, capture_output=True, timeout=120)
    digest = docker_client.images.get(f"{repo}:latest").attrs["RepoDigests"]
    try:
        yield repo, [d.split("@")[1] for d in digest if d.startswith(repo)][0]
    finally:
        name = repo.split("/", 1)[1]
        for entry in digest:
            if entry.startswith(repo):
                request = urllib.request.Request(f"http://{REGISTRY}/v2/{name}/manifests/{entry.split('@')[1]}", method="DELETE")
                try:
                    urllib.request.urlopen(request, timeout=5)
                except OSError:
                    pass
        docker_client.images.remove(f"{repo}:latest", noprune=True)


def test_pin_the_shapes_of_ai_stacks(demo_project, module_playbook, untagged_image):
    repo, vec_digest = untagged_image
    project = demo_project.project_dir
    (project / "custom").mkdir()
    (project / "custom" / "Dockerfile").write_text("FROM selfhost/base:bookworm\n")
    base = project / "compose.yaml"
    override = project / "compose.gpu.yaml"
    base.write_text(AI_BASE.format(untagged=repo))
    override.write_text(AI_OVERRIDE.format())
    demo_project.write_env(COMPOSE_PROFILES="gpu")
    original_base, original_override = base.read_bytes(), override.read_bytes()
    app = {"name": demo_project.name, "project_dir": str(project), "compose_files": ["compose.yaml", "compose.gpu.yaml"]}
    params = {"app": app, "store": str(demo_project.store)}

    run, result = module_playbook(PIN, params, check=True)
    assert run.rc == 0, run.stdout
    assert result["changed"] is True
    assert base.read_bytes() == original_base and override.read_bytes() == original_override

    run, result = module_playbook(PIN, params)
    assert run.rc == 0, run.stdout
    tools = registry_digest("selfhost/tools", "busybox")
    postgres = registry_digest("selfhost/postgres", "15")
    text = base.read_text()
    assert f"x-tools-image: &tools-image 127.0.0.1:5000/selfhost/tools:busybox@{tools}\n" in text
    assert f'    image: "{repo}:latest@{vec_digest}"\n' in text
    assert "    image: selfhost/base:bookworm\n" in text  # built locally: no registry digest
    assert "    image: ${TOOLS_IMAGE:-127.0.0.1:5000/selfhost/tools:busybox}\n" in text
    assert "    image: 127.0.0.1:5000/selfhost/notes:9.9\n" in text  # inactive profile, not on the engine
    assert without_pins(text).encode() == original_base
    assert f"    image: '127.0.0.1:5000/selfhost/postgres:${{PG_TAG:-15}}@{postgres}'\n" in override.read_text()
    assert without_pins(override.read_text()).encode() == original_override

    statuses = {(i["services"][0], i["status"]) for f in result["files"] for i in f["images"]}
    assert ("embedder", "pinned") in statuses
    assert ("future", "not pinned: not on this engine and not the image of an active service "
                      "(overridden or in an inactive profile)") in statuses
    warnings = "\n".join(result.get("warnings", []))
    assert "selfhost/base:bookworm" in warnings and "image ID" in warnings
    assert "${TOOLS_IMAGE:-" in warnings
    assert "only-built" in warnings
    anchor = next(i for i in result["files"][0]["images"] if i["services"][0] == "embedder")
    assert anchor["services"] == ["embedder", "embedder-gpu"]

    # Compose still reads both files, interpolation and profiles intact
    proc = subprocess.run(["docker", "compose", "--project-directory", str(project), "-f", str(base), "-f", str(override),
                           "config", "--format", "json"], capture_output=True, text=True, check=True)
    config = json.loads(proc.stdout)
    assert config["services"]["embedder-gpu"]["image"] == f"127.0.0.1:5000/selfhost/tools:busybox@{tools}"
    assert config["services"]["db"]["image"] == f"127.0.0.1:5000/selfhost/postgres:15@{postgres}"

    run, result = module_playbook(PIN, params)
    assert run.rc == 0 and result["changed"] is False, run.stdout


@pytest.mark.parametrize("case", ["malformed yaml", "missing project dir", "unresolvable image"])
def test_bad_input_fails_clearly_and_changes_nothing(demo_project, module_playbook, case):
    compose = demo_project.project_dir / "compose.yaml"
    app = demo_project.definition()
    if case == "malformed yaml":
        compose.write_text(compose.read_text().replace("    image: 127.0.0.1:5000/selfhost/postgres:15",
                                                       "    image: [127.0.0.1:5000/selfhost/postgres:15"))
        expected = "is not valid YAML"
    elif case == "missing project dir":
        app["project_dir"] = str(demo_project.project_dir / "nowhere")
        expected = "does not exist"
    else:
        demo_project.write_env(NOTES_VERSION="0.0-missing")
        expected = "127.0.0.1:5000/selfhost/notes:0.0-missing of service app is not on this engine"
    before = compose.read_bytes()
    run, result = module_playbook(PIN, {"app": app, "store": str(demo_project.store)})
    assert run.rc != 0
    assert run.task("module under test")["status"] == "failed"
    assert expected in result["msg"], result["msg"]
    assert demo_project.name in result["msg"]
    assert compose.read_bytes() == before
    assert not demo_project.store.exists()


def test_the_pin_role_pins_and_records_each_app(demo_app, run_playbook, tmp_path):
    inventory = write_inventory(tmp_path / "inventory.json", group_vars={
        "rollback_apps": [demo_app.definition()], "rollback_store": str(demo_app.store)})
    playbook = tmp_path / "pin.yml"
    playbook.write_text(json.dumps([{"name": "pin", "hosts": "all", "gather_facts": False,
                                     "roles": [{"role": "selfhost.rollback.pin", "pin_archive_images": False}]}]))
    run = run_playbook(playbook, inventory=inventory)
    assert run.rc == 0, run.stdout
    assert "Pin the images of each app by digest" in " ".join(run.changed())
    assert "@sha256:" in (demo_app.project_dir / "compose.yaml").read_text()
    releases = list((demo_app.store / demo_app.name / "releases").glob("r-*.json"))
    assert len(releases) == 1
    run = run_playbook(playbook, inventory=inventory)
    assert run.rc == 0, run.stdout
    assert run.changed() == [], run.changed()
    assert REPO.exists()


def test_pins_in_the_collection_s_own_file_leave_the_project_untouched(demo_app, run_playbook, module_playbook, tmp_path):
    """A deploy tool owns compose.yaml: with pins: own_file the digests live in <store>/<app>/pins.yaml,
    every Compose call uses it, an upgrade takes it away and pins again, a rollback goes back."""
    compose = demo_app.project_dir / "compose.yaml"
    original = compose.read_bytes()
    app = demo_app.definition(pins="own_file")
    pins = demo_app.store / demo_app.name / "pins.yaml"
    inventory = write_inventory(tmp_path / "inventory.json", group_vars={
        "rollback_apps": [app], "rollback_store": str(demo_app.store),
        "pre_upgrade_verify_checks": ["deep"], "pre_upgrade_baseline_probes": 5, "upgrade_health_probes": 5,
        "upgrade_max_p99_ratio": 0})

    run = run_playbook("selfhost.rollback.pre_upgrade", inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    notes10 = registry_digest("selfhost/notes", "1.0")
    assert compose.read_bytes() == original
    assert f'image: "{REGISTRY}/selfhost/notes:1.0@{notes10}"' in pins.read_text()
    assert oct(pins.stat().st_mode & 0o777) == "0o600"
    run, info = module_playbook("selfhost.rollback.app_info", {"app": app, "store": str(demo_app.store)})
    assert info["compose_command"].endswith(f"-f {compose} -f {pins}"), info["compose_command"]
    by_hand = subprocess.run(info["compose_command"].split() + ["config", "--format", "json"], capture_output=True, text=True, check=True)
    assert json.loads(by_hand.stdout)["services"]["app"]["image"] == f"{REGISTRY}/selfhost/notes:1.0@{notes10}"

    run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "1.1"}}, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert demo_app.wait_healthy(timeout=10)["version"] == "1.1"
    assert compose.read_bytes() == original
    assert registry_digest("selfhost/notes", "1.1") in pins.read_text()  # pinned again after the upgrade

    run = run_playbook("selfhost.rollback.rollback", inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert demo_app.wait_healthy(timeout=10)["version"] == "1.0"
    assert compose.read_bytes() == original
    assert notes10 in pins.read_text() and registry_digest("selfhost/notes", "1.1") not in pins.read_text()
