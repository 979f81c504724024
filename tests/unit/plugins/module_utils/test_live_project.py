"""Which Compose project the containers say the app is: a name the definition only defaults to gives
way to the one its containers carry (``docker compose -p NAME up``), an explicit one never does
(the engine faked at its boundary: the labels of a sparse listing)."""

from __future__ import annotations

import re
import types
import typing as t
from pathlib import Path

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _module
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import (
    NAME_FROM_CONTAINERS,
    NAME_FROM_DIRECTORY,
    NAME_FROM_FILE,
    adopt_live_project,
    check_live_project,
    judge_live_project,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from test_module import FakeAnsibleModule  # the skeleton's own fake (same directory)

ELSEWHERE = "/srv/elsewhere"
OWN_OVERRIDE = "/var/lib/selfhost-rollback/shop/switch-override.yml"


def labels(project: str, workdir: str, files: list[str]) -> dict[str, str]:
    found = {"com.docker.compose.project": project, "com.docker.compose.project.working_dir": workdir,
             "com.docker.compose.service": "app"}
    if files:
        found["com.docker.compose.project.config_files"] = ",".join(files)
    return found


def make_app(directory: Path, source: str = NAME_FROM_DIRECTORY) -> dict[str, t.Any]:
    return {"name": "shop", "project_name": "shop", "project_name_from": source, "project_dir": str(directory),
            "compose_files": [str(directory / "compose.yaml"), str(directory / "compose.override.yaml")],
            "compose_files_from": "the default file names"}


def listed(directory: Path, spec: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    """Containers newest first, each (project, where: here | elsewhere, files: same | base | none | own)."""
    workdirs = {"here": str(directory), "elsewhere": ELSEWHERE}
    files = {"same": [str(directory / "compose.yaml"), str(directory / "compose.override.yaml")],
             "base": [str(directory / "compose.yaml")], "none": [],
             "own": [str(directory / "compose.yaml"), str(directory / "compose.override.yaml"), OWN_OVERRIDE]}
    return [labels(project, workdirs[where], files[which] if where == "here" else [f"{ELSEWHERE}/compose.yaml"])
            for project, where, which in spec]


@pytest.mark.parametrize(("source", "spec", "verdict", "name", "message"), [
    pytest.param(NAME_FROM_DIRECTORY, [], "agrees", None, None, id="nothing runs"),
    pytest.param(NAME_FROM_DIRECTORY, [("shop", "here", "same")], "agrees", None, None, id="the resolved project runs"),
    pytest.param(NAME_FROM_DIRECTORY, [("other", "elsewhere", "same")], "agrees", None, None, id="only another app runs"),
    pytest.param(NAME_FROM_CONTAINERS, [("shop", "here", "same")], "agrees", None, None, id="already adopted"),
    pytest.param(NAME_FROM_DIRECTORY, [("ai", "here", "same"), ("ai", "here", "same")], "adopt", "ai",
                 r"Compose project 'ai' is taken from the containers started from .*, not 'shop' \(from the project "
                 r"directory's name\); set project_name: ai in the app definition so that it holds when no container runs",
                 id="-p with the directory's name"),
    pytest.param(NAME_FROM_FILE, [("ai", "here", "same")], "adopt", "ai", r"not 'shop' \(from the compose file's name:\)",
                 id="-p over the compose file's name:"),
    pytest.param(NAME_FROM_DIRECTORY, [("ai", "here", "own")], "adopt", "ai", "taken from the containers",
                 id="the collection's own override is not compared"),
    pytest.param(NAME_FROM_DIRECTORY, [("ai", "here", "same"), ("ai", "here", "base")], "adopt", "ai", "taken from",
                 id="the newest container decides the files"),
    pytest.param(NAME_FROM_DIRECTORY, [("ai", "here", "same"), ("other", "elsewhere", "same")], "adopt", "ai", "taken from",
                 id="other apps do not count"),
    pytest.param("project_name", [("ai", "here", "same")], "refuse", None,
                 r"belong to Compose project 'ai', not 'shop' \(from project_name\); set project_name: ai in the app definition",
                 id="an explicit project_name never gives way"),
    pytest.param("COMPOSE_PROJECT_NAME", [("ai", "here", "same")], "refuse", None,
                 r"not 'shop' \(from COMPOSE_PROJECT_NAME\); set project_name: ai", id="nor COMPOSE_PROJECT_NAME"),
    pytest.param(NAME_FROM_DIRECTORY, [("ai", "here", "same"), ("blue", "here", "same")], "refuse", None,
                 r"the containers started from .* belong to two Compose projects, 'ai' and 'blue', not 'shop' \(from the "
                 r"project directory's name\); set project_name: ai or project_name: blue in the app definition, whichever this "
                 r"app is, and take the other down \(docker compose -p NAME down\); nothing was changed",
                 id="two projects claim the directory"),
    pytest.param(NAME_FROM_DIRECTORY, [("c", "here", "same"), ("a", "here", "same"), ("b", "here", "same")], "refuse", None,
                 r"three Compose projects, 'a', 'b' and 'c'.*set project_name: a, project_name: b or project_name: c",
                 id="three projects"),
    pytest.param("project_name", [("ai", "here", "same"), ("blue", "here", "same")], "refuse", None,
                 r"two Compose projects, 'ai' and 'blue', not 'shop' \(from project_name\)", id="two, with an explicit name"),
    pytest.param(NAME_FROM_DIRECTORY, [("ai", "here", "base"), ("ai", "here", "same")], "refuse", None,
                 r"its containers were started with the compose files compose.yaml, but the definition reads compose.yaml, "
                 r"compose.override.yaml \(from the default file names\); set compose_files: \[compose.yaml\]",
                 id="other files"),
    pytest.param(NAME_FROM_DIRECTORY, [("ai", "here", "none")], "refuse", None, r"belong to Compose project 'ai'.*set project_name: ai",
                 id="no record of the files is no evidence"),
    pytest.param(NAME_FROM_DIRECTORY, [("ai", "elsewhere", "same"), ("ai", "here", "same")], "refuse", None,
                 r"Compose project 'ai' runs from /srv/elsewhere, not from .*; set project_dir: /srv/elsewhere",
                 id="the adopted project also runs elsewhere"),
    pytest.param(NAME_FROM_DIRECTORY, [("shop", "elsewhere", "same"), ("ai", "here", "same")], "refuse", None,
                 r"Compose project 'shop' runs from /srv/elsewhere", id="the resolved name runs elsewhere"),
    pytest.param(NAME_FROM_DIRECTORY, [("shop", "here", "base"), ("shop", "here", "same")], "refuse", None,
                 r"started with the compose files compose.yaml, but", id="the resolved project with other files"),
])
def test_the_containers_settle_a_default_name_and_nothing_else(tmp_path, source, spec, verdict, name, message):
    app = make_app(tmp_path, source)
    before = dict(app)
    found = judge_live_project(listed(tmp_path, spec), app)
    assert (found.verdict, found.name) == (verdict, name)
    if message is None:
        assert found.message is None
    else:
        assert found.message is not None and found.message.startswith("app shop: ")
        assert len(found.message.split("; nothing was changed")) <= 2  # one sentence
        assert re.search(message, found.message), found.message
    assert app == before  # judging changes nothing


class Client:
    """A Docker SDK client whose sparse listing gives these containers (``Created`` in epoch seconds)."""

    def __init__(self, *containers: tuple[dict[str, str], int]) -> None:
        self.calls = 0
        self.listed = [types.SimpleNamespace(attrs={"Labels": found, "Created": created}) for found, created in containers]
        self.containers = types.SimpleNamespace(list=self.listing)

    def listing(self, **kwargs: t.Any) -> list[t.Any]:
        assert kwargs.get("sparse") is True  # no inspect per container: others may vanish meanwhile
        self.calls += 1
        return list(self.listed)


def test_adopting_changes_the_app_in_place_and_refusing_raises(tmp_path):
    files = make_app(tmp_path)["compose_files"]
    # listed oldest first: the newest (by Created) decides the files
    client = Client((labels("ai", str(tmp_path), [files[0]]), 1796000000), (labels("ai", str(tmp_path), files), 1796000100))
    app = make_app(tmp_path)
    assert adopt_live_project(client, app).verdict == "adopt"
    assert (app["project_name"], app["project_name_from"]) == ("ai", NAME_FROM_CONTAINERS)
    assert check_live_project(client, app).verdict == "agrees"  # a second look agrees with the adopted name

    app = make_app(tmp_path, "project_name")
    with pytest.raises(OperatorError, match="set project_name: ai"):
        check_live_project(client, app)
    assert app["project_name"] == "shop"

    older_with_the_files = Client((labels("ai", str(tmp_path), files), 1796000000), (labels("ai", str(tmp_path), [files[0]]), 1796000100))
    with pytest.raises(OperatorError, match=r"started with the compose files compose.yaml, but"):
        check_live_project(older_with_the_files, make_app(tmp_path))


@pytest.mark.parametrize("app_first", [True, False], ids=["app first", "client first"])
def test_a_module_takes_the_name_before_anything_reads_it(tmp_path, monkeypatch, app_first):
    project = tmp_path / "shop"
    project.mkdir()
    (project / "compose.yaml").write_text("services: {}\n")
    client = Client((labels("ai", str(project), [str(project / "compose.yaml")]), 1796000000))
    monkeypatch.setattr(_module, "docker_client", lambda timeout=120: client)

    class Module(FakeAnsibleModule):
        params = {"app": {"name": "shop", "project_dir": str(project), "compose_files": None, "env_file": ".env"},
                  "store": str(tmp_path / "store")}

    module = AppModule({}, module_class=Module, docker=False)
    if app_first:
        assert module.app["project_name"] == "shop"  # no engine yet: the default stands
        assert module.client is client
    else:
        assert module.client is client
    assert (module.app["project_name"], module.app["project_name_from"]) == ("ai", NAME_FROM_CONTAINERS)
    assert client.calls == 1
    warnings = module.module.warnings
    assert len(warnings) == 1 and "set project_name: ai" in warnings[0]
    assert module.app is module.app  # one dict: what Compose(module.app) reads at each call


def test_resolving_again_keeps_the_name_taken_from_the_containers(tmp_path, monkeypatch):
    """A switch resolves the app again after writing its files; the name only the containers know must survive that."""
    project = tmp_path / "shop"
    project.mkdir()
    (project / "compose.yaml").write_text("services: {}\n")
    client = Client((labels("ai", str(project), [str(project / "compose.yaml")]), 1796000000))
    monkeypatch.setattr(_module, "docker_client", lambda timeout=120: client)

    class Module(FakeAnsibleModule):
        params = {"app": {"name": "shop", "project_dir": str(project), "compose_files": None, "env_file": ".env"},
                  "store": str(tmp_path / "store")}

    module = AppModule({}, module_class=Module, docker=False)
    assert module.client is client and module.app["project_name"] == "ai"
    again = module.revalidate()
    assert again is not module.app
    assert (again["project_name"], again["project_name_from"]) == ("ai", NAME_FROM_CONTAINERS)

    plain = AppModule({}, module_class=Module, docker=False)  # no engine: the default is resolved again as it is
    assert plain.revalidate()["project_name"] == "shop"
