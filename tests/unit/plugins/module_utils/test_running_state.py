"""Reading the live state: the Compose CLI reads run side by side, and a failure still reads
as it did when they ran one after the other (Compose and the engine replaced at their boundary)."""

from __future__ import annotations

import json
import threading
import types
import typing as t

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _release
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError

IMAGE_ID = "sha256:" + "1" * 64
CONFIG = {"name": "notes", "services": {"app": {"image": "r/notes:1.0", "environment": {"NOTES_VERSION": "1.0"}}},
          "volumes": {"data": {"name": "notes_data"}}}


class FakeCompose:
    """``docker compose`` for the app: each read either answers or fails; every call is noted with its thread."""

    failures: dict[str, str] = {}
    calls: list[tuple[str, str]] = []

    def __init__(self, app: dict[str, t.Any]) -> None:
        self.app = app

    def _answer(self, what: str) -> None:
        type(self).calls.append((what, threading.current_thread().name))
        if what in self.failures:
            raise OperatorError(self.failures[what])

    def config(self) -> dict[str, t.Any]:
        self._answer("config")
        return json.loads(json.dumps(CONFIG))

    def run(self, *args: str, **_kwargs: t.Any) -> types.SimpleNamespace:
        self._answer("structure" if "--no-interpolate" in args else " ".join(args))
        return types.SimpleNamespace(stdout=json.dumps(CONFIG), returncode=0)

    def version(self) -> str:
        self._answer("version")
        return "2.29.1"

    def env_values(self, keys: t.Iterable[str]) -> dict[str, str]:
        self._answer("env")
        return {k: "1.0" for k in keys}


class FakeImage:
    id = IMAGE_ID
    attrs: dict[str, t.Any] = {"RepoDigests": [], "RepoTags": ["r/notes:1.0"]}


class FakeClient:
    def __init__(self, running: bool = True) -> None:
        status = "running" if running else "exited"
        container = types.SimpleNamespace(status=status, name="notes-app-1", labels={"com.docker.compose.service": "app"},
                                          attrs={"Image": IMAGE_ID})
        self.containers = types.SimpleNamespace(list=lambda **_kwargs: [container])
        self.images = types.SimpleNamespace(get=lambda _ref: FakeImage())

    def version(self) -> dict[str, str]:
        return {"Version": "27.3.1", "ApiVersion": "1.47"}


@pytest.fixture
def app(tmp_path, monkeypatch):
    project = tmp_path / "notes"
    project.mkdir()
    (project / "compose.yaml").write_text("services: {}\n")
    (project / ".env").write_text("NOTES_VERSION=1.0\n")
    FakeCompose.failures = {}
    FakeCompose.calls = []
    monkeypatch.setattr(_release, "Compose", FakeCompose)
    monkeypatch.setattr(_release, "schema_version", lambda _client, _app: "2")
    return {"name": "notes", "project_name": "notes", "project_dir": str(project), "compose_files": [str(project / "compose.yaml")],
            "env_file": str(project / ".env")}


def test_the_compose_reads_run_beside_this_thread(app):
    state = _release.running_state(FakeClient(), app, b"salt", [])
    assert sorted(what for what, _thread in FakeCompose.calls) == ["config", "env", "structure", "version"]
    assert all(thread != threading.current_thread().name for _what, thread in FakeCompose.calls)
    assert state["runtime"] == {"engine_version": "27.3.1", "api_version": "1.47", "compose_version": "2.29.1"}
    assert state["schema_version"] == "2" and state["services"]["app"]["image_id"] == IMAGE_ID
    assert "name" not in state["compose"]["config"] and state["volumes"] == {"data": "notes_data"}


@pytest.mark.parametrize("failing, running, first", [
    ({"config": "app notes: reading the compose files failed: bad"}, False, "reading the compose files failed"),
    ({}, False, "no container of Compose project notes is running"),
    ({"structure": "app notes: no JSON", "version": "the Compose v2 CLI plugin is missing"}, True, "no JSON"),
    ({"version": "the Compose v2 CLI plugin is missing"}, True, "Compose v2 CLI plugin is missing"),
])
def test_a_failure_reads_as_it_did_one_read_after_the_other(app, failing, running, first):
    FakeCompose.failures = failing
    with pytest.raises(OperatorError, match=first):
        _release.running_state(FakeClient(running=running), app, b"salt", [])


def test_a_failed_schema_probe_comes_after_the_compose_reads_before_it(app, monkeypatch):
    def probe_fails(_client, _app):
        raise OperatorError("app notes: the schema probe failed in service db (rc 2)")

    monkeypatch.setattr(_release, "schema_version", probe_fails)
    with pytest.raises(OperatorError, match="schema probe failed"):
        _release.running_state(FakeClient(), app, b"salt", [])
    FakeCompose.failures = {"structure": "app notes: no JSON"}
    with pytest.raises(OperatorError, match="no JSON"):
        _release.running_state(FakeClient(), app, b"salt", [])
