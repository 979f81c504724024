"""The project the containers say Compose ran, against the one the definition resolves to;
one-shot services; what a gate makes of a container's state (the engine faked at its boundary)."""

from __future__ import annotations

import types

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils._compose import check_live_project, one_shot_services
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import state_failed, state_ok
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError


def container(project, workdir, files, created=1796000000, status="running"):
    """What a sparse listing gives: the list endpoint's fields, labels and creation time (epoch) included."""
    labels = {"com.docker.compose.project": project, "com.docker.compose.project.working_dir": workdir,
              "com.docker.compose.project.config_files": ",".join(files), "com.docker.compose.service": "app"}
    return types.SimpleNamespace(attrs={"Labels": labels, "Created": created, "State": status, "Names": [f"/{project}-app-1"]})


class Client:
    def __init__(self, *containers):
        def listing(**kwargs):
            assert kwargs.get("sparse") is True  # no inspect per container: others may vanish meanwhile
            return list(containers)

        self.containers = types.SimpleNamespace(list=listing)


@pytest.fixture
def app(tmp_path):
    return {"name": "shop", "project_name": "shop", "project_name_from": "the project directory's name",
            "project_dir": str(tmp_path), "compose_files": [str(tmp_path / "compose.yaml"), str(tmp_path / "compose.override.yaml")],
            "compose_files_from": "the default file names"}


def test_agreeing_labels_and_an_app_not_deployed_pass(app, tmp_path):
    files = app["compose_files"]
    check_live_project(Client(container("shop", str(tmp_path), files)), app)
    check_live_project(Client(), app)
    check_live_project(Client(container("other", "/srv/other", ["/srv/other/compose.yaml"])), app)


def test_the_collection_s_own_override_outside_the_project_is_not_compared(app, tmp_path):
    files = app["compose_files"] + ["/var/lib/selfhost-rollback/shop/switch-override.yml"]
    check_live_project(Client(container("shop", str(tmp_path), files)), app)


def test_another_project_name_in_this_directory_names_the_option(app, tmp_path):
    app["project_name_from"] = "project_name"  # a default name gives way instead: test_live_project.py
    with pytest.raises(OperatorError, match=r"belong to Compose project 'ai', not 'shop' \(from project_name\); "
                                            r"set project_name: ai"):
        check_live_project(Client(container("ai", str(tmp_path), app["compose_files"])), app)


def test_another_directory_names_the_option(app):
    with pytest.raises(OperatorError, match="runs from /srv/elsewhere, not from .*; set project_dir: /srv/elsewhere"):
        check_live_project(Client(container("shop", "/srv/elsewhere", ["/srv/elsewhere/compose.yaml"])), app)


def test_other_files_are_named_from_the_newest_container(app, tmp_path):
    old = container("shop", str(tmp_path), app["compose_files"], created=1796000000)
    new = container("shop", str(tmp_path), [str(tmp_path / "compose.yaml")], created=1796000100)
    with pytest.raises(OperatorError, match=r"started with the compose files compose.yaml, but the definition reads "
                                            r"compose.yaml, compose.override.yaml \(from the default file names\); "
                                            r"set compose_files: \[compose.yaml\]"):
        check_live_project(Client(old, new), app)
    check_live_project(Client(new, container("shop", str(tmp_path), app["compose_files"], created=1796000200)), app)


def test_one_shot_services_are_those_awaited_to_completion_or_declared():
    config = {"services": {
        "app": {"depends_on": {"migrate": {"condition": "service_completed_successfully"}, "db": {"condition": "service_healthy"}}},
        "migrate": {}, "db": {}, "seed": {}}}
    assert one_shot_services(config, {"one_shot": ["seed"]}) == {"migrate", "seed"}
    assert one_shot_services({"services": {"a": {"depends_on": ["b"]}}}, {}) == set()


@pytest.mark.parametrize(("state", "ok", "failed"), [
    ({"state": "running", "health": None}, True, False),
    ({"state": "running", "health": "starting"}, False, False),
    ({"state": "running", "health": "unhealthy"}, False, True),
    ({"state": "exited", "health": None}, False, True),
    ({"state": "exited", "one_shot": True, "exit_code": 0}, True, False),
    ({"state": "exited", "one_shot": True, "exit_code": 1}, False, True),
    ({"state": "running", "one_shot": True, "exit_code": 0}, True, False),
    ({"state": "created", "one_shot": True, "exit_code": 0}, False, False),
])
def test_what_a_gate_makes_of_a_state(state, ok, failed):
    assert (state_ok(state), state_failed(state)) == (ok, failed)
