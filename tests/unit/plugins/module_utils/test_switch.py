"""The switch, forward and back: its plans, the pins and images files, start_first and the verdicts.

The engine is faked at its boundary (a client whose containers and images are listed from a table,
a Compose that records its calls); the project directory and the ledger are real files in tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import typing as t
from pathlib import Path

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _switch
from ansible_collections.selfhost.rollback.plugins.module_utils._app import PINS_FILE, validate_app
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import DockerException
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils._operation import OperationError
from ansible_collections.selfhost.rollback.plugins.module_utils._project import images_file
from ansible_collections.selfhost.rollback.plugins.module_utils._release import write_release

REG = "127.0.0.1:5000/selfhost"
PIN = "@sha256:" + "ab" * 32
SERVICE = "com.docker.compose.service"
PROJECT = "com.docker.compose.project"


# ---------------------------------------------------------------------- the engine, faked at its boundary


class FakeContainer:
    """A container as the SDK lists it; ``health`` is what each reload() reports next (the last one stays)."""

    def __init__(self, cid: str, service: str | None, status: str = "running", image_id: str = "sha256:a", image: str | None = None,
                 exit_code: int = 0, project: str = "shop", name: str | None = None, health: list[tuple[str, str | None]] | None = None,
                 log: list[str] | None = None) -> None:
        self.id = (cid * 64)[:64]
        self.name = name or f"{project}-{service}-{cid}"
        self.status = status
        self.labels = {PROJECT: project, **({SERVICE: service} if service else {})}
        self.attrs: dict[str, t.Any] = {"Image": image_id, "State": {"ExitCode": exit_code, "Status": status}, "Labels": self.labels,
                                        "Config": {"Image": image} if image else {}}
        self.health = list(health or [])
        self.log = log if log is not None else []

    def reload(self) -> None:
        if self.health:
            status, health = self.health.pop(0) if len(self.health) > 1 else self.health[0]
            self.attrs["State"] = {"Status": status, **({"Health": {"Status": health}} if health else {})}

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")

    def remove(self, force: bool = False) -> None:
        self.log.append(f"remove {self.name}" + (" (force)" if force else ""))


class FakeContainers:
    def __init__(self, containers: list[FakeContainer]) -> None:
        self.items = containers

    def list(self, all: bool = False, filters: dict[str, t.Any] | None = None, sparse: bool = False) -> list[FakeContainer]:  # noqa: A002
        wanted = (filters or {}).get("label") or []
        wanted = [wanted] if isinstance(wanted, str) else wanted

        def matches(container: FakeContainer) -> bool:
            for spec in wanted:
                key, _sep, value = spec.partition("=")
                if key not in container.labels or (value and container.labels[key] != value):
                    return False
            return all or container.status == "running"
        return [c for c in self.items if matches(c)]


class FakeImages:
    """Images by reference or ID: ``known`` maps each to the image ID it names on this engine."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known

    def get(self, ref: str) -> t.Any:
        if ref not in self.known:
            raise DockerException(f"no such image: {ref}")
        return type("Image", (), {"id": self.known[ref]})()


class FakeClient:
    def __init__(self, containers: list[FakeContainer] | None = None, images: dict[str, str] | None = None) -> None:
        self.containers = FakeContainers(list(containers or []))
        self.images = FakeImages(dict(images or {}))


DEFAULTS = {"release": None, "env": None, "compose_src": None, "unpin": True, "start_first": [], "pull": True, "cutover": False,
            "services": [], "scope": "all", "wait": 5.0, "lock_timeout": 0, "operation": None}


class FakeModule:
    """What the switch uses of an AppModule: the app, the ledger, the client, options, warnings, the lock."""

    def __init__(self, app: dict[str, t.Any], client: FakeClient, ledger: Ledger | None = None, check_mode: bool = True,
                 diff_mode: bool = True, **params: t.Any) -> None:
        self.app, self.client, self.ledger = app, client, ledger
        self.params = dict(DEFAULTS, **params)
        self.check_mode, self.diff_mode = check_mode, diff_mode
        self.name = app["name"]
        self.result: dict[str, t.Any] = {}
        self.warnings: list[str] = []
        self.locks: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @contextlib.contextmanager
    def lock(self, purpose: str) -> t.Iterator[None]:
        self.locks.append(purpose)
        yield

    def revalidate(self) -> dict[str, t.Any]:
        return dict(self.app)


@pytest.fixture(autouse=True)
def no_compose_settings(monkeypatch):
    for key in [k for k in os.environ if k.startswith("COMPOSE_")]:
        monkeypatch.delenv(key)


def compose_text(version: str = "1.0", pin: str = "") -> str:
    return f"services:\n  app:\n    image: {REG}/notes:{version}{pin}\n  db:\n    image: {REG}/postgres:15\n"


def make_project(tmp_path: Path, compose: str | None = None, env: str | None = "NOTES_VERSION=1.0\nDB_PASSWORD=hunter22\n",
                 pins: str = "compose_files", extra: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
    directory = tmp_path / "shop"
    directory.mkdir(exist_ok=True)
    (directory / "compose.yaml").write_text(compose if compose is not None else compose_text())
    if env is not None:
        (directory / ".env").write_text(env)
    return validate_app(dict({"name": "shop", "project_dir": str(directory), "pins": pins}, **(extra or {})), str(tmp_path / "store"))


@pytest.fixture
def app(tmp_path) -> dict[str, t.Any]:
    return make_project(tmp_path)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(str(tmp_path / "store"), "shop")


# ---------------------------------------------------------------------- the live project


@pytest.mark.parametrize(("containers", "running", "created"), [
    pytest.param([FakeContainer("a", "app", image_id="sha256:1", image="notes:1")],
                 {"app": {"container_id": "aaaaaaaaaaaa", "image_id": "sha256:1", "state": "running", "exit_code": 0}},
                 {"app": "notes:1"}, id="one running container"),
    pytest.param([FakeContainer("a", "app", status="exited", image_id="sha256:0", image="notes:0", name="a-old"),
                  FakeContainer("b", "app", image_id="sha256:1", image="notes:1", name="b-new")],
                 {"app": {"container_id": "bbbbbbbbbbbb", "image_id": "sha256:1", "state": "running", "exit_code": 0}},
                 {"app": "notes:1"}, id="a running container before an exited one"),
    pytest.param([FakeContainer("a", "migrate", status="exited", exit_code=3, image="m:1")],
                 {"migrate": {"container_id": "aaaaaaaaaaaa", "image_id": "sha256:a", "state": "exited", "exit_code": 3}},
                 {}, id="an exited container names no created image"),
    pytest.param([FakeContainer("a", None), FakeContainer("b", "app")],
                 {"app": {"container_id": "bbbbbbbbbbbb", "image_id": "sha256:a", "state": "running", "exit_code": 0}},
                 {}, id="a container without a service label, and one without Config.Image"),
    pytest.param([FakeContainer("a", "app", project="other")], {}, {}, id="another project's container"),
])
def test_project_images(app, containers, running, created):
    client = FakeClient(containers)
    assert _switch.project_images(client, app) == (running, created)
    assert _switch.running_images(client, app) == running


@pytest.mark.parametrize(("services", "defined", "expected"), [
    pytest.param(["app", "db"], {"app": {}, "db": {}}, [], id="every service defined"),
    pytest.param(["worker-old", "app", "cron"], {"app": {}}, ["cron", "worker-old"], id="the undefined ones, sorted"),
    pytest.param(["app"], {}, ["app"], id="files that define nothing"),
])
def test_outside(app, services, defined, expected):
    client = FakeClient([FakeContainer(str(i), s) for i, s in enumerate(services)])
    assert _switch.outside(client, app, {"services": defined}) == expected


@pytest.mark.parametrize(("databases", "containers", "expected"), [
    pytest.param([], [("b", "web", "running"), ("a", "db", "running")], ["shop-db-a", "shop-web-b"], id="no database: all, by name"),
    pytest.param([{"service": "db"}], [("a", "db", "running"), ("b", "web", "running")], ["shop-web-b"], id="a database host stays"),
    pytest.param([], [("a", "web", "exited"), ("b", "api", "running")], ["shop-api-b"], id="only running containers"),
])
def test_writers(app, databases, containers, expected):
    client = FakeClient([FakeContainer(cid, service, status=status) for cid, service, status in containers])
    assert [c.name for c in _switch.writers(client, dict(app, databases=databases))] == expected


@pytest.mark.parametrize(("live", "one_shot", "expected"), [
    pytest.param({"state": "running"}, False, True, id="running"),
    pytest.param({"state": "exited", "exit_code": 0}, False, False, id="exited, not one-shot"),
    pytest.param({"state": "exited", "exit_code": 0}, True, True, id="one-shot ran to the end"),
    pytest.param({"state": "exited", "exit_code": 1}, True, False, id="one-shot failed"),
    pytest.param({}, True, False, id="no container"),
    pytest.param({"state": "created"}, True, False, id="created, never ran"),
])
def test_settled(live, one_shot, expected):
    assert _switch.settled(live, one_shot) is expected


@pytest.mark.parametrize(("expected", "running", "verdict", "wrong"), [
    pytest.param({"app": "sha256:1"}, {"app": {"image_id": "sha256:1", "state": "running"}},
                 {"app": {"image_id": "sha256:1", "state": "running", "expected": "sha256:1", "ok": True}}, [], id="on the image"),
    pytest.param({"app": "sha256:1"}, {"app": {"image_id": "sha256:2"}},
                 {"app": {"image_id": "sha256:2", "expected": "sha256:1", "ok": False}}, ["app runs sha256:2"], id="another image"),
    pytest.param({"app": "sha256:1"}, {}, {"app": {"expected": "sha256:1", "ok": False}}, ["app runs None"], id="no container"),
    pytest.param({}, {"app": {"image_id": "sha256:2"}}, {}, [], id="nothing expected"),
])
def test_verdicts_and_not_on_release(expected, running, verdict, wrong):
    services = _switch.verdicts(expected, running)
    assert services == verdict
    assert _switch.not_on_release(services) == wrong


# ---------------------------------------------------------------------- images of the switch back


RUNNING_ON_1 = {"app": {"image_id": "sha256:1", "state": "running"}}


@pytest.mark.parametrize(("images", "running", "created", "in_files", "rows", "expected"), [
    pytest.param({"notes:old-tag": "sha256:1"}, RUNNING_ON_1, {"app": "notes:old-tag"}, {"app": "notes:1.0"}, [],
                 {"app": "notes:old-tag"}, id="already on the image: keeps the string it was created with"),
    pytest.param({"notes:old-tag": "sha256:9", "notes:1.0": "sha256:1"}, RUNNING_ON_1, {"app": "notes:old-tag"},
                 {"app": "notes:1.0"}, [], {"app": "notes:1.0"}, id="the created string names another image now: the files' line"),
    pytest.param({"notes:1.0": "sha256:1"}, {"app": {"image_id": "sha256:1", "state": "exited"}}, {"app": "notes:1.0-x"},
                 {"app": "notes:1.0"}, [], {"app": "notes:1.0"}, id="not running: the files' line"),
    pytest.param({"notes@sha256:dd": "sha256:1"}, {}, {}, {"app": "notes:2.0"},
                 [{"service": "app", "ref": "notes@sha256:dd", "image_id": "sha256:1"}], {"app": "notes@sha256:dd"},
                 id="the files' line names another image: the release's reference"),
    pytest.param({}, {}, {}, {}, [{"service": "app", "ref": "notes@sha256:dd", "image_id": "sha256:1"}], {"app": "sha256:1"},
                 id="the reference is not here: the image ID"),
    pytest.param({}, {}, {}, {}, [], {"app": "sha256:1"}, id="no row: the image ID"),
])
def test_override_images(images, running, created, in_files, rows, expected):
    assert _switch.override_images(FakeClient(images=images), {"app": "sha256:1"}, running, created, in_files, rows) == expected


ROWS = [{"service": "app", "ref": "notes:1.0", "source": "local"}, {"service": "db", "ref": "postgres:15", "source": "missing"},
        {"service": "worker", "ref": "notes:1.0", "source": "archive"}]


@pytest.mark.parametrize(("rows", "partial", "expected", "refusal"), [
    pytest.param(ROWS[:1], None, ["app"], None, id="everything here"),
    pytest.param(ROWS, {"back": {"images": ["app", "worker"]}}, ["app", "worker"], None, id="a partial one needs only what comes back"),
    pytest.param(ROWS, None, None, "app shop: images of release r-1 are not available anywhere: db (postgres:15); nothing was changed",
                 id="missing"),
    pytest.param([{"service": "x", "ref": None, "source": "unknown"}] + ROWS[:1], {"back": {"images": ["x"]}}, None,
                 "not available anywhere: x (None)", id="unknown in the part"),
])
def test_needed_images(app, rows, partial, expected, refusal):
    if refusal:
        with pytest.raises(OperatorError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
            _switch.needed_images(app, "r-1", rows, partial)
    else:
        assert [r["service"] for r in _switch.needed_images(app, "r-1", rows, partial)] == expected


@pytest.mark.parametrize(("record", "partial", "expected"), [
    pytest.param({"services": {"app": {"image_id": "sha256:1"}, "db": {"image_id": "sha256:2"}}}, None,
                 {"app": "sha256:1", "db": "sha256:2"}, id="the release's"),
    pytest.param({"services": {"app": {"image_id": "sha256:1"}}}, {"images": {"app": "sha256:9"}}, {"app": "sha256:9"},
                 id="the partial plan's"),
    pytest.param({}, None, {}, id="a release without services"),
])
def test_expected_images(record, partial, expected):
    assert _switch.expected_images(record, partial) == expected


@pytest.mark.parametrize(("running", "one_shot", "expected"), [
    pytest.param({"app": {"image_id": "sha256:1", "state": "running"}, "migrate": {"image_id": "sha256:2", "state": "exited",
                  "exit_code": 0}}, {"migrate"}, [], id="everything on its image, the one-shot ran"),
    pytest.param({"app": {"image_id": "sha256:0", "state": "running"}, "migrate": {"image_id": "sha256:2", "state": "exited",
                  "exit_code": 0}}, {"migrate"}, ["app"], id="another image"),
    pytest.param({"app": {"image_id": "sha256:1", "state": "exited"}, "migrate": {"image_id": "sha256:2", "state": "exited",
                  "exit_code": 0}}, set(), ["app", "migrate"], id="stopped, not one-shot"),
    pytest.param({}, set(), ["app", "migrate"], id="no containers"),
])
def test_mismatched_services(running, one_shot, expected):
    assert _switch.mismatched_services({"migrate": "sha256:2", "app": "sha256:1"}, running, one_shot) == expected


# ---------------------------------------------------------------------- start_first


@pytest.mark.parametrize(("spec", "refusal"), [
    pytest.param({"image": "api"}, None, id="no port, no container_name"),
    pytest.param({"image": "api", "expose": ["8080"]}, None, id="an exposed port is no host port"),
    pytest.param(None, "start_first names api, which is not a service of the project (services: web); nothing was changed",
                 id="not a service"),
    pytest.param({"ports": [{"published": "8080", "target": 80}]}, "service api publishes host port 8080, so its new container",
                 id="a published port"),
    pytest.param({"ports": [{"target": 80}]}, "publishes host port 80,", id="a target-only port"),
    pytest.param({"ports": ["127.0.0.1:8080:80"]}, "publishes host port 127.0.0.1:8080:80,", id="the short syntax"),
    pytest.param({"container_name": "api-1"}, "service api sets container_name api-1, so a second container", id="container_name"),
])
def test_check_start_first(app, spec, refusal):
    config = {"services": dict({"web": {}}, **({"api": spec} if spec is not None else {}))}
    if refusal is None:
        _switch.check_start_first(app, config, ["api"])
    else:
        with pytest.raises(OperatorError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
            _switch.check_start_first(app, config, ["api"])


@pytest.mark.parametrize(("start_first", "mismatched", "running", "beside", "recreate"), [
    pytest.param([], ["api", "db"], {"api": {"state": "running"}}, [], ["api", "db"], id="none listed"),
    pytest.param(["api"], ["api", "db"], {"api": {"state": "running"}}, ["api"], ["db"], id="a listed running service"),
    pytest.param(["api"], ["db"], {"api": {"state": "running"}}, [], ["db"], id="listed but unchanged"),
    pytest.param(["api"], ["api"], {"api": {"state": "exited"}}, [], ["api"], id="listed but not running: recreated"),
    pytest.param(["web", "api"], ["api", "web"], {"api": {"state": "running"}, "web": {"state": "running"}}, ["web", "api"], [],
                 id="in the order listed"),
])
def test_split_beside(start_first, mismatched, running, beside, recreate):
    assert _switch.split_beside(start_first, mismatched, running) == (beside, recreate)


@pytest.mark.parametrize(("health", "failure"), [
    pytest.param([[("running", "healthy")]], None, id="healthy at once"),
    pytest.param([[("running", None)]], None, id="running without a health check"),
    pytest.param([[("running", "starting"), ("running", "starting"), ("running", "healthy")]], None, id="starting, then healthy"),
    pytest.param([[("running", "healthy")], [("running", "unhealthy")]], "(running/healthy, running/unhealthy)", id="one unhealthy"),
    pytest.param([[("exited", None)]], "(exited)", id="exited"),
    pytest.param([], "(no container)", id="no new container"),
])
def test_wait_healthy(app, health, failure):
    log: list[str] = []
    new = [FakeContainer(str(i), "api", health=h, log=log, name=f"new-{i}") for i, h in enumerate(health)]
    if failure is None:
        _switch.wait_healthy(app, "api", new, 5)
        assert log == []
    else:
        with pytest.raises(OperatorError) as raised:
            _switch.wait_healthy(app, "api", new, 5)
        assert str(raised.value) == (f"app shop: the new api container did not become healthy {failure} within 5 s; it was removed "
                                     "and the old one keeps running; see its logs with 'docker compose logs api' after running it by hand")
        assert log == [f"remove new-{i} (force)" for i in range(len(new))]


def test_wait_healthy_gives_up_after_the_wait(app):
    log: list[str] = []
    new = [FakeContainer("a", "api", health=[("running", "starting")], log=log, name="new")]
    with pytest.raises(OperatorError, match=r"did not become healthy \(running/starting\) within -1 s"):
        _switch.wait_healthy(app, "api", new, -1)
    assert log == ["remove new (force)"]


def test_start_beside_starts_the_new_container_then_stops_and_removes_the_old_one(app, monkeypatch):
    log: list[str] = []
    old = FakeContainer("o", "api", log=log, name="old")
    client = FakeClient([old, FakeContainer("w", "web", log=log, name="web")])
    calls = []

    class FakeCompose:
        def __init__(self, target):
            self.target = target

        def run(self, *args, **kwargs):
            calls.append((self.target["extra_files"], args, kwargs["timeout"]))
            client.containers.items.append(FakeContainer("n", "api", log=log, name="new", health=[("running", "healthy")]))

    monkeypatch.setattr(_switch, "Compose", FakeCompose)
    _switch.start_beside(client, app, "/store/shop/switch-override.yml", "api", 30)
    assert calls == [(["/store/shop/switch-override.yml"],
                      ("up", "-d", "--no-recreate", "--pull", "never", "--scale", "api=2", "api"), 30)]
    assert log == ["stop old", "remove old"]


# ---------------------------------------------------------------------- project files


@pytest.mark.parametrize(("before", "after", "expected"), [
    pytest.param(b"A=1\n", b"A=1\n", [], id="unchanged"),
    pytest.param(b"A=1\n", b"A=1\nB=2\n", ["+B=2"], id="added"),
    pytest.param(b"A=1\nB=2\n", b"A=1\n", ["-B=2"], id="removed"),
    pytest.param(b"A=1\n", b"A=3\n", ["~A: 1 -> 3"], id="changed"),
    pytest.param(b"DB_PASSWORD=old\n", b"DB_PASSWORD=new\n", ["~DB_PASSWORD: ******** -> ********"], id="a secret-looking key"),
    pytest.param(b"", b"URL=http://u:pw@host/\n", ["+URL=********"], id="credentials in a URL"),
    pytest.param(b"Z=1\nA=1\n", b"Z=2\nA=2\nM=0\n", ["~A: 1 -> 2", "+M=0", "~Z: 1 -> 2"], id="sorted by key"),
])
def test_env_diff(before, after, expected):
    assert _switch.env_diff(before, after) == expected


@pytest.mark.parametrize(("wanted", "changed"), [
    pytest.param({}, [], id="nothing wanted"),
    pytest.param({"compose.yaml": compose_text().encode()}, [], id="the same bytes"),
    pytest.param({"compose.yaml": compose_text("1.1").encode(), ".env": b"NOTES_VERSION=1.0\nDB_PASSWORD=hunter22\n"},
                 ["compose.yaml"], id="one file differs"),
    pytest.param({"z.yaml": b"x", ".env": b"A=1\n"}, [".env", "z.yaml"], id="a new file, sorted"),
])
def test_plan_files(app, wanted, changed):
    found, current = _switch.plan_files(app, wanted)
    assert found == changed
    assert current == {"compose.yaml": compose_text().encode(), ".env": b"NOTES_VERSION=1.0\nDB_PASSWORD=hunter22\n"}


FILES = {"compose.yaml": compose_text("1.0", PIN).encode(), ".env": b"NOTES_VERSION=1.0\n"}


@pytest.mark.parametrize(("source", "env", "unpin", "expected"), [
    pytest.param(None, {"NOTES_VERSION": "1.0"}, True, FILES, id="already there: the pins stay"),
    pytest.param(None, {"NOTES_VERSION": 1.1}, True, {"compose.yaml": compose_text("1.0").encode(), ".env": b"NOTES_VERSION=1.1\n"},
                 id="a key changes: the pins go"),
    pytest.param(None, {"NOTES_VERSION": "1.1"}, False, dict(FILES, **{".env": b"NOTES_VERSION=1.1\n"}), id="unpin false keeps them"),
    pytest.param(None, {"TZ": "UTC"}, False, dict(FILES, **{".env": b"NOTES_VERSION=1.0\nTZ=UTC\n"}), id="a new key is added"),
    pytest.param(compose_text("2.0").encode(), None, True, dict(FILES, **{"compose.yaml": compose_text("2.0").encode()}),
                 id="compose_src replaces the first file"),
    pytest.param(None, None, True, FILES, id="nothing asked"),
])
def test_forward_wanted(app, source, env, unpin, expected):
    assert _switch.forward_wanted(app, dict(FILES), source, env, unpin) == expected


def test_forward_files_reads_compose_src(app, tmp_path):
    source = tmp_path / "new.yaml"
    source.write_text(compose_text("2.0"))
    module = FakeModule(app, FakeClient(), compose_src=str(source), unpin=False)
    assert _switch.forward_files(module, app)["compose.yaml"] == compose_text("2.0").encode()
    module.params["compose_src"] = str(tmp_path / "gone.yaml")
    with pytest.raises(OperatorError, match=f"app shop: compose_src {tmp_path}/gone.yaml does not exist on this host"):
        _switch.forward_files(module, app)


@pytest.mark.parametrize(("changed", "current", "wanted", "expected"), [
    pytest.param([".env"], {".env": b"A=1\nTOKEN=x\n"}, {".env": b"A=2\nTOKEN=y\n"},
                 [{"before_header": ".env (keys)", "after_header": ".env (keys)", "before": "", "after": "~A: 1 -> 2\n~TOKEN: ******** -> ********\n"}],
                 id="an env file as keys"),
    pytest.param(["compose.yaml"], {"compose.yaml": b"old\n"}, {"compose.yaml": b"new\n"},
                 [{"before_header": "compose.yaml", "after_header": "compose.yaml", "before": "old\n", "after": "new\n"}], id="a compose file whole"),
    pytest.param(["extra.yaml"], {}, {"extra.yaml": b"new\n"},
                 [{"before_header": "extra.yaml", "after_header": "extra.yaml", "before": "", "after": "new\n"}], id="a new file"),
    pytest.param([], {}, {}, [], id="nothing changes"),
])
def test_diff_of(app, changed, current, wanted, expected):
    assert _switch.diff_of(app, changed, current, wanted) == expected


def test_put_back_restores_files_and_pins(app, tmp_path):
    directory = Path(app["project_dir"])
    (directory / "compose.yaml").write_text("new\n")
    (directory / "added.yaml").write_text("added\n")
    pins = tmp_path / "store" / "shop" / "pins.yaml"
    _switch.put_back(dict(app, pins_file=str(pins)), ["added.yaml", "compose.yaml", "never-written.yaml"], {"compose.yaml": b"old\n"}, b"pins\n")
    assert (directory / "compose.yaml").read_text() == "old\n"
    assert not (directory / "added.yaml").exists()
    assert pins.read_bytes() == b"pins\n"


@pytest.mark.parametrize(("name", "content", "expected"), [
    pytest.param("file", b"data", b"data", id="a file"),
    pytest.param("missing", None, None, id="no file"),
    pytest.param(None, None, None, id="no path"),
])
def test_read_or_none(tmp_path, name, content, expected):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    assert _switch.read_or_none(str(tmp_path / name) if name else None) == expected


# ---------------------------------------------------------------------- the pins and images files


@pytest.mark.parametrize(("pins", "services", "before", "after"), [
    pytest.param("own_file", {"app": {"pinned_ref": "notes@sha256:1"}, "db": {}}, None,
                 images_file("written by selfhost.rollback.switch for app shop: the digests of release r-1", {"app": "notes@sha256:1"}),
                 id="own_file: the release's digests"),
    pytest.param("own_file", {"app": {}}, b"old pins\n", None, id="own_file, a release without pins: the file goes"),
    pytest.param("compose_files", {"app": {"pinned_ref": "notes@sha256:1"}}, b"held\n", b"held\n", id="compose_files: left alone"),
])
def test_restore_pins(tmp_path, pins, services, before, after):
    app = make_project(tmp_path, pins=pins)
    path = Path(app["pins_file"] or tmp_path / "store" / "shop" / "pins.yaml")
    if before is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(before)
    _switch.restore_pins(app, {"release_id": "r-1", "services": services})
    assert (path.read_bytes() if path.exists() else None) == after


@pytest.mark.parametrize(("env", "after"), [
    pytest.param("A=1\n", None, id="the file goes"),
    pytest.param("COMPOSE_FILE={compose}:{pins}\n",
                 b"# written by selfhost.rollback.switch for app shop: it holds no service now\nservices: {}\n",
                 id="COMPOSE_FILE names it: it stays, holding nothing"),
])
def test_drop_pins(tmp_path, env, after):
    pins = tmp_path / "store" / "shop" / "pins.yaml"
    pins.parent.mkdir(parents=True)
    pins.write_bytes(b"held\n")
    app = make_project(tmp_path, env=env.format(compose=tmp_path / "shop" / "compose.yaml", pins=pins))
    _switch.drop_pins(app)
    assert (pins.read_bytes() if pins.exists() else None) == after


@pytest.mark.parametrize(("held", "values", "expected"), [
    pytest.param({"worker": "notes@sha256:1"}, {},
                 images_file("written by selfhost.rollback.switch for app shop: the services a partial rollback holds back",
                             {"worker": "notes@sha256:1"}), id="it holds a service"),
    pytest.param({}, {"COMPOSE_FILE": "compose.yaml:/store/shop/pins.yaml"},
                 b"# written by selfhost.rollback.switch for app shop: it holds no service now\nservices: {}\n", id="named by COMPOSE_FILE"),
    pytest.param({}, {"COMPOSE_FILE": "compose.yaml;/store/shop/pins.yaml", "COMPOSE_PATH_SEPARATOR": ";"},
                 b"# written by selfhost.rollback.switch for app shop: it holds no service now\nservices: {}\n", id="with its separator"),
    pytest.param({}, {"COMPOSE_FILE": "compose.yaml:/store/other/pins.yaml"}, None, id="COMPOSE_FILE names another file"),
    pytest.param({}, {}, None, id="nothing held, not named"),
])
def test_held_file(held, values, expected):
    assert _switch.held_file({"name": "shop"}, "/store/shop/pins.yaml", held, values) == expected


@pytest.mark.parametrize(("data", "exists"), [pytest.param(b"x", True, id="written"), pytest.param(None, False, id="removed")])
def test_put_file(tmp_path, data, exists):
    path = tmp_path / "dir" / "pins.yaml"
    path.parent.mkdir()
    path.write_bytes(b"old")
    _switch.put_file(str(path), data)
    assert path.exists() is exists and (not exists or path.read_bytes() == data)
    _switch.put_file(str(path), None)  # nothing to remove: nothing happens
    assert not path.exists()


FOUND = {"path": "/store/shop/pins.yaml", "held": {"worker": "notes@sha256:now"}}


@pytest.mark.parametrize(("record", "partial", "expected"), [
    pytest.param({}, None, {}, id="a full switch to a plain release"),
    pytest.param({"mixed": {"images_file": {"worker": "notes@sha256:then"}}}, None, {"worker": "notes@sha256:then"},
                 id="a full switch to a mixed release"),
    pytest.param({}, {"images_file": {"services": {"app": "notes@sha256:1"}}}, {"app": "notes@sha256:1"}, id="the partial plan's"),
    pytest.param({}, {"images_file": None}, {"worker": "notes@sha256:now"}, id="a partial plan that leaves it"),
])
def test_held_after(record, partial, expected):
    assert _switch.held_after(record, partial, FOUND) == expected


@pytest.mark.parametrize(("pins", "before", "record", "partial", "env_text", "after"), [
    pytest.param("own_file", b"pins", {}, None, None, "same", id="own_file is not the switch's to hold"),
    pytest.param("compose_files", None, {}, None, None, "same", id="no file, none held"),
    pytest.param("compose_files", images_file("x", {"worker": "w@sha256:1"}), {}, None, None, None, id="a full switch takes it away"),
    pytest.param("compose_files", None, {}, {"images_file": {"services": {"worker": "w@sha256:1"}}}, None,
                 images_file("written by selfhost.rollback.switch for app shop: the services a partial rollback holds back",
                             {"worker": "w@sha256:1"}), id="a partial switch writes it"),
    pytest.param("compose_files", images_file("written by selfhost.rollback.switch for app shop: the services a partial rollback holds back",
                                              {"worker": "w@sha256:1"}), {}, {"images_file": None}, None, "same", id="unchanged"),
    pytest.param("compose_files", b"held\n", {}, None, b"COMPOSE_FILE=compose.yaml:{pins}\n",
                 b"# written by selfhost.rollback.switch for app shop: it holds no service now\nservices: {}\n",
                 id="the env file as it is left names it"),
])
def test_images_file_change(tmp_path, pins, before, record, partial, env_text, after):
    app = make_project(tmp_path, pins=pins)
    path = tmp_path / "store" / "shop" / "pins.yaml"
    if before is not None:
        path.parent.mkdir(parents=True)
        path.write_bytes(before)
    env = env_text.replace(b"{pins}", str(path).encode()) if env_text else None
    change = _switch.images_file_change(app, str(path), record, partial, env)
    assert change == (None if after == "same" else (str(path), before, after))


@pytest.mark.parametrize(("held", "expected"), [
    pytest.param(None, [], id="no change"),
    pytest.param(("/p.yaml", b"x", None), ["remove /p.yaml (it holds no service now)"], id="removed"),
    pytest.param(("/p.yaml", None, images_file("c", {"worker": "w@1", "app": "a@1"})), ["write /p.yaml (holds app on a@1, worker on w@1)"],
                 id="written"),
    pytest.param(("/p.yaml", b"x", b"services: {}\n"), ["write /p.yaml (holds nothing)"], id="written, holding nothing"),
])
def test_held_actions(held, expected):
    assert _switch.held_actions(held) == expected


@pytest.mark.parametrize(("pinned", "back", "expected"), [
    pytest.param({"app": "a@now", "db": "d@now"}, ["app"],
                 {"release_id": "r-1 (app only)", "services": {"app": {"pinned_ref": "a@then"}, "db": {"pinned_ref": "d@now"}}},
                 id="what comes back takes the release's pin"),
    pytest.param(None, ["app", "worker"],
                 {"release_id": "r-1 (app, worker only)", "services": {"app": {"pinned_ref": "a@then"}, "worker": {"pinned_ref": None}}},
                 id="no pins file"),
    pytest.param({"db": "d@now"}, [], {"release_id": "r-1 (no image only)", "services": {"db": {"pinned_ref": "d@now"}}}, id="no image"),
])
def test_mixed_pins(tmp_path, pinned, back, expected):
    app = make_project(tmp_path, pins="own_file")
    if pinned is not None:
        Path(app["pins_file"]).parent.mkdir(parents=True)
        Path(app["pins_file"]).write_bytes(images_file("pins", pinned))
    record = {"release_id": "r-1", "services": {"app": {"pinned_ref": "a@then"}, "worker": None}}
    assert _switch.mixed_pins(app, record, back) == expected


# ---------------------------------------------------------------------- partial rollbacks


PART = {"services": ["worker"], "back": {"images": ["worker"]}}
BEFORE = {"app": "c-app", "db": "c-db", "worker": "c-worker"}


@pytest.mark.parametrize(("services", "scope", "running", "expected"), [
    pytest.param(["worker"], "all", {"app": {"container_id": "c-app"}, "db": {"container_id": "c-db"}},
                 {"app": {"container_id": "c-app", "same": True}, "db": {"container_id": "c-db", "same": True}}, id="by services"),
    pytest.param(["worker"], "all", {"app": {"container_id": "c-new"}},
                 {"app": {"container_id": "c-new", "same": False}, "db": {"container_id": None, "same": False}}, id="recreated ones"),
    pytest.param([], "images", {"app": {"container_id": "c-app"}, "db": {"container_id": "c-db"}},
                 {"app": {"container_id": "c-app", "same": True}, "db": {"container_id": "c-db", "same": True}}, id="scope images"),
    pytest.param([], "config", {"app": {"container_id": "c-new"}}, {}, id="scope config leaves none alone"),
])
def test_left_alone(services, scope, running, expected):
    assert _switch.left_alone(services, scope, PART, BEFORE, running) == expected


def test_untouched_warns_of_a_service_compose_recreated(app):
    module = FakeModule(app, FakeClient(), services=["worker"])
    out = _switch.untouched(module, PART, BEFORE, {"app": {"container_id": "c-new"}, "db": {"container_id": "c-db"}})
    assert out == {"app": {"container_id": "c-new", "same": False}, "db": {"container_id": "c-db", "same": True}}
    assert module.warnings == ["app shop: Compose recreated app, which the partial rollback leaves as it was (its configuration or a "
                               "dependency changed with the part)"]


def artifacts_found(put_back=(), blocking=()) -> dict[str, t.Any]:
    return {"put_back": [{"name": n, "path": f"/models/{n}", "digest": "sha256:1"} for n in put_back], "by_hand": [], "same": [],
            "blocking": list(blocking)}


@pytest.mark.parametrize(("artifacts", "found", "restart", "actions"), [
    pytest.param([{"name": "m", "restart": ["app", "worker"]}, {"name": "n", "restart": ["app"]}], artifacts_found(["m", "n"]),
                 ["app", "worker"], ["put back artifact m (/models/m) as sha256:1 from the copy kept",
                                     "put back artifact n (/models/n) as sha256:1 from the copy kept", "docker compose restart app worker"],
                 id="restart what reads them, once"),
    pytest.param([{"name": "m"}], artifacts_found(["m"]), [], ["put back artifact m (/models/m) as sha256:1 from the copy kept"],
                 id="nothing reads it"),
    pytest.param([{"name": "m", "restart": ["app"]}], artifacts_found(), [], [], id="nothing to put back"),
])
def test_plan_artifacts(app, artifacts, found, restart, actions):
    partial, to_restart, planned = _switch.plan_artifacts(dict(app, artifacts=artifacts), {"release_id": "r-1"}, found)
    assert (to_restart, planned) == (restart, actions)
    assert partial["scope"] == "artifacts" and partial["artifacts"] is found


def test_plan_artifacts_refuses_in_one_sentence(app):
    with pytest.raises(OperatorError, match="^app shop: the artifacts of release r-1 cannot be put back, nothing was changed: a; b$"):
        _switch.plan_artifacts(app, {"release_id": "r-1"}, artifacts_found(blocking=["a", "b"]))


# ---------------------------------------------------------------------- the cutover


@pytest.mark.parametrize(("items", "stopped", "expected"), [
    pytest.param([{"name": "db-notes", "kind": "database", "bytes": 10, "tables": {"public.notes": 12}},
                  {"name": "uploads", "kind": "volume", "bytes": "5"}], ["web", "api", "web"],
                 {"stopped": ["api", "web"], "bytes": 15, "tables": {"db-notes": {"public.notes": 12}}}, id="a database and a volume"),
    pytest.param([{"name": "v", "kind": "volume", "bytes": None}], [], {"stopped": [], "bytes": 0, "tables": {}}, id="no writer"),
])
def test_cutover_record(items, stopped, expected):
    containers = [FakeContainer(str(i), s) for i, s in enumerate(stopped)]
    record = _switch.cutover_record({"set_id": "b-1", "items": items}, containers, 0.12345, 1.98765)
    assert record == dict(expected, set_id="b-1", stop_s=0.123, seconds=1.988)
    assert list(record) == ["set_id", "stopped", "stop_s", "seconds", "bytes", "tables"]


def test_cutover_options(app):
    options = _switch.cutover_options(dict(app, consistency={"db": "stop"}))
    assert options.tags == ["cutover"] and options.consistency == {"db": "stop"}


# ---------------------------------------------------------------------- forward


@pytest.mark.parametrize(("changed", "pins_file", "writer_names", "stopped", "running", "expected"), [
    pytest.param([], None, None, [], True, [], id="nothing to do"),
    pytest.param([".env"], None, None, [], True, ["write .env", "docker compose up -d"], id="a file"),
    pytest.param([".env"], "/store/shop/pins.yaml", None, [], True,
                 ["write .env", "remove the digest pins in /store/shop/pins.yaml", "docker compose up -d"], id="and the pins"),
    pytest.param([], "/store/shop/pins.yaml", None, ["app"], True, ["docker compose up -d"], id="no file changes: the pins stay"),
    pytest.param([".env"], None, ["api", "web"], [], True,
                 ["write .env", "stop api, web and capture the data as the cutover set", "docker compose up -d"], id="a cutover"),
    pytest.param([], None, [], ["app"], True, ["stop no writer and capture the data as the cutover set", "docker compose up -d"],
                 id="a cutover with no writer"),
    pytest.param([], None, None, [], False, ["docker compose up -d"], id="nothing runs"),
])
def test_forward_actions(changed, pins_file, writer_names, stopped, running, expected):
    assert _switch.forward_actions(changed, pins_file, writer_names, stopped, running) == expected


UP = ["docker compose up -d"]


@pytest.mark.parametrize(("params", "containers", "actions", "files"), [
    pytest.param({"env": {"NOTES_VERSION": "1.0"}}, [FakeContainer("a", "app"), FakeContainer("d", "db")], [], [],
                 id="already at the version"),
    pytest.param({"env": {"NOTES_VERSION": "1.1"}}, [FakeContainer("a", "app")], ["write .env"] + UP, [".env"], id="a new version"),
    pytest.param({"env": {"NOTES_VERSION": "1.0"}}, [], UP, [], id="nothing runs yet"),
    pytest.param({"env": {"NOTES_VERSION": "1.1"}, "cutover": True},
                 [FakeContainer("a", "app"), FakeContainer("d", "db"), FakeContainer("w", "web", status="exited")],
                 ["write .env", "stop app and capture the data as the cutover set"] + UP, [".env"], id="a cutover stops the writers"),
])
def test_switch_forward_in_check_mode(tmp_path, params, containers, actions, files):
    app = make_project(tmp_path, extra={"databases": [{"service": "db"}]})
    module = FakeModule(app, FakeClient(containers), **params)
    result = _switch.switch_forward(module)
    assert (result["changed"], result["actions"], result["files_changed"]) == (bool(actions), actions, files)
    assert list(result) == ["changed", "actions", "files_changed", "diff", "services"]
    assert sorted(result["services"]) == sorted({c.labels[SERVICE] for c in containers})
    assert module.locks == [] and (tmp_path / "shop" / ".env").read_text() == "NOTES_VERSION=1.0\nDB_PASSWORD=hunter22\n"


def test_switch_forward_refuses_start_first(app):
    with pytest.raises(OperatorError, match="^app shop: start_first applies to a switch back"):
        _switch.switch_forward(FakeModule(app, FakeClient(), env={"A": "1"}, start_first=["app"]))


# ---------------------------------------------------------------------- back


@pytest.mark.parametrize(("changed", "held", "rows", "beside", "recreate", "expected"), [
    pytest.param([], None, [{"source": "local", "service": "app"}], [], [], [], id="nothing to do"),
    pytest.param(["compose.yaml"], None, [], [], [], ["write compose.yaml", "docker compose up -d --pull never on the release's images"],
                 id="a file, nothing recreated"),
    pytest.param([], None, [{"source": "registry", "service": "app"}, {"source": "archive", "service": "db"},
                            {"source": "local", "service": "web"}], ["app"], ["db"],
                 ["registry image for app", "archive image for db",
                  "start app beside its old container, wait until it is healthy, remove the old one",
                  "docker compose up -d --pull never on the release's images (recreates db)"], id="images and services"),
    pytest.param([], ("/p.yaml", b"x", None), [], [], [],
                 ["remove /p.yaml (it holds no service now)", "docker compose up -d --pull never on the release's images"],
                 id="the images file alone"),
    pytest.param([], None, [], ["api"], [], ["start api beside its old container, wait until it is healthy, remove the old one"],
                 id="only started beside: no up"),
])
def test_back_actions(changed, held, rows, beside, recreate, expected):
    assert _switch.back_actions(changed, held, rows, beside, recreate) == expected


@pytest.mark.parametrize(("held", "before", "after"), [
    pytest.param(("/p.yaml", None, b"new"), "", "new", id="written"),
    pytest.param(("/p.yaml", b"old", None), "old", "", id="removed"),
])
def test_held_diff(held, before, after):
    assert _switch.held_diff(held) == {"before_header": "/p.yaml", "after_header": "/p.yaml", "before": before, "after": after}


def release(compose: str = compose_text(), app_image: str = "sha256:a10", **app_extra: t.Any) -> dict[str, t.Any]:
    return {"release_id": "r-1", "recorded_at": "2026-12-01T00:00:00Z",
            "compose": {"files": [{"path": "compose.yaml", "content": compose}], "config": {"services": {"app": {}, "db": {}}}},
            "services": {"app": dict({"image_id": app_image, "image_ref": f"{REG}/notes:1.0"}, **app_extra),
                         "db": {"image_id": "sha256:db", "image_ref": f"{REG}/postgres:15"}}}


def test_target_files(app, ledger):
    module = FakeModule(app, FakeClient(), ledger, release="r-9")
    with pytest.raises(OperatorError, match="r-9"):
        _switch.target_files(module)
    write_release(ledger, release())
    module.params["release"] = "r-1"
    record, wanted = _switch.target_files(module)
    assert record["release_id"] == "r-1" and wanted == {"compose.yaml": compose_text().encode()}
    assert module.warnings == ["app shop: release r-1 has no saved project files; its compose files come from the release record and "
                               "the env file stays as it is (check the config drift rollback_check reports)"]


ON_RELEASE = [FakeContainer("a", "app", image_id="sha256:a10"), FakeContainer("d", "db", image_id="sha256:db")]
LOCAL = {"sha256:a10": "sha256:a10", "sha256:db": "sha256:db"}
WRITE_UP = ["write compose.yaml", "docker compose up -d --pull never on the release's images"]
RECREATE_APP = ["docker compose up -d --pull never on the release's images (recreates app)"]


@pytest.mark.parametrize(("live", "record", "containers", "images", "actions", "recreated", "ok"), [
    pytest.param(compose_text(), release(), ON_RELEASE, LOCAL, [], [], True, id="already on the release"),
    pytest.param(compose_text("1.1"), release(), ON_RELEASE, LOCAL, WRITE_UP, [], True, id="only the files"),
    pytest.param(compose_text(), release(), [FakeContainer("a", "app", image_id="sha256:a11"), ON_RELEASE[1]], LOCAL,
                 RECREATE_APP, ["app"], False, id="another image runs"),
    pytest.param(compose_text(), release(repo_digest="sha256:dd"), [FakeContainer("a", "app", image_id="sha256:a11"), ON_RELEASE[1]],
                 {"sha256:db": "sha256:db"}, ["registry image for app"] + RECREATE_APP, ["app"], False, id="pulled from the registry"),
    pytest.param(compose_text(), release(), ON_RELEASE[1:], LOCAL, RECREATE_APP, ["app"], False, id="a service without a container"),
])
def test_switch_back_in_check_mode(tmp_path, ledger, live, record, containers, images, actions, recreated, ok):
    app = make_project(tmp_path, compose=live)
    write_release(ledger, record)
    module = FakeModule(app, FakeClient(containers, images), ledger, release="r-1")
    result = _switch.switch_back(module)
    assert (result["changed"], result["actions"], result["recreated"]) == (bool(actions), actions, recreated)
    assert list(result) == ["changed", "actions", "files_changed", "images", "recreated", "started_first", "diff", "services"]
    assert result["services"]["app"]["ok"] is ok and result["services"]["db"]["ok"] is True
    assert module.locks == [] and (tmp_path / "shop" / "compose.yaml").read_text() == live


def test_switch_back_refuses_images_available_nowhere(app, ledger):
    write_release(ledger, release())
    with pytest.raises(OperatorError, match=r"^app shop: images of release r-1 are not available anywhere: app \(.*notes:1.0\), db"):
        _switch.switch_back(FakeModule(app, FakeClient(ON_RELEASE), ledger, release="r-1"))


def test_switch_back_of_scope_artifacts_needs_recorded_artifacts(app, ledger):
    write_release(ledger, release())
    with pytest.raises(OperatorError, match="cannot be put back, nothing was changed: release r-1 records no artifacts"):
        _switch.switch_back(FakeModule(app, FakeClient(ON_RELEASE), ledger, release="r-1", scope="artifacts"))


def back_plan(expected: dict[str, str], before_ids: dict[str, str | None], beside: t.Sequence[str] = (),
              partial: dict[str, t.Any] | None = None) -> _switch.BackPlan:
    result = {"changed": True, "actions": ["x"], "recreated": ["planned"]}
    return _switch.BackPlan({"release_id": "r-1"}, partial, {}, {}, [], [], expected, {}, {}, before_ids, list(beside), [], None,
                            ["x"], result)


@pytest.mark.parametrize(("containers", "beside", "recreated", "wrong"), [
    pytest.param([FakeContainer("a", "app", image_id="sha256:1"), FakeContainer("o", "old", image_id="sha256:o")], [], [], None,
                 id="nothing recreated"),
    pytest.param([FakeContainer("n", "app", image_id="sha256:1"), FakeContainer("o", "old", image_id="sha256:o")], [], ["app"], None,
                 id="a new container"),
    pytest.param([FakeContainer("n", "app", image_id="sha256:1"), FakeContainer("o", "old", image_id="sha256:o")], ["app"], [], None,
                 id="started beside is not recreated"),
    pytest.param([FakeContainer("a", "app", image_id="sha256:2")], [], [], "after the switch to r-1 not every service runs the "
                 "release's image: app runs sha256:2", id="the wrong image"),
])
def test_verify_back(app, containers, beside, recreated, wrong):
    module = FakeModule(app, FakeClient(containers), check_mode=False, release="r-1")
    plan = back_plan({"app": "sha256:1"}, {"app": "aaaaaaaaaaaa", "old": "oooooooooooo"}, beside)
    if wrong:
        with pytest.raises(OperatorError, match=wrong):
            _switch.verify_back(module, plan, app, {"services": {"app": {}}})
        assert module.result["recreated"] == recreated and module.result["services"]["app"]["ok"] is False
        return
    result = _switch.verify_back(module, plan, app, {"services": {"app": {}}})
    assert result["outside_release"] == ["old"] and result["recreated"] == recreated
    assert result["services"] == {"app": {"container_id": containers[0].id[:12], "image_id": "sha256:1", "state": "running",
                                          "exit_code": 0, "expected": "sha256:1", "ok": True}}


def test_verify_back_of_a_partial_rollback(app):
    module = FakeModule(app, FakeClient([FakeContainer("a", "app", image_id="sha256:1"), FakeContainer("w", "worker")]),
                        check_mode=False, release="r-1", services=["app"])
    partial = {"scope": "all", "services": ["app"], "back": {"images": ["app"]}, "kept": {}, "images_file": None}
    result = _switch.verify_back(module, back_plan({"app": "sha256:1"}, {"app": "x", "worker": "wwwwwwwwwwww"}, partial=partial),
                                 app, {"services": {"app": {}, "worker": {}}})
    assert result["recreated"] == ["app"]
    assert partial["untouched"] == {"worker": {"container_id": "wwwwwwwwwwww", "same": True}}
    assert partial["mixed"] == {"target": "r-1", "scope": "all", "services": ["app"], "back": {"images": ["app"]}, "kept": {}}


# ---------------------------------------------------------------------- the run


def test_open_operation_goes_with_release(app, ledger):
    with pytest.raises(OperationError, match="operation goes with release"):
        _switch.open_operation(FakeModule(app, FakeClient(), ledger, operation={"kind": "rollback", "owner": {}, "fields": {}}))


@pytest.mark.parametrize(("check_mode", "written"), [pytest.param(True, False, id="check mode"), pytest.param(False, True, id="a run")])
def test_open_operation(app, ledger, check_mode, written):
    owner = {"controller": "cn", "pid": 100, "started": 5, "boot_id": "b"}
    module = FakeModule(app, FakeClient(), ledger, check_mode=check_mode, release="r-1",
                        operation={"kind": "rollback", "owner": owner, "fields": {"return_to": "r-0"}})
    _switch.open_operation(module)
    assert module.locks == ["opening the operation"]
    assert module.result["operation"]["kind"] == "rollback" and module.result["operation"]["return_to"] == "r-0"
    assert ledger.exists("journal.json") is written


@pytest.mark.parametrize(("diff_mode", "keys"), [
    pytest.param(True, ["changed", "actions", "files_changed", "images", "recreated", "started_first", "diff", "services", "seconds"],
                 id="with --diff"),
    pytest.param(False, ["changed", "actions", "files_changed", "images", "recreated", "started_first", "services", "seconds"],
                 id="without"),
])
def test_switch_in_check_mode(tmp_path, ledger, diff_mode, keys):
    app = make_project(tmp_path, compose=compose_text("1.1"))
    write_release(ledger, release())
    owner = {"controller": "cn", "pid": 100, "started": 5, "boot_id": "b"}
    module = FakeModule(app, FakeClient(ON_RELEASE, LOCAL), ledger, diff_mode=diff_mode, release="r-1",
                        operation={"kind": "rollback", "owner": owner, "fields": {"return_to": "r-1"}})
    result = _switch.switch(module)
    assert list(result) == keys and result["actions"] == WRITE_UP and result["seconds"] >= 0
    assert module.result["operation"]["phase"] and not ledger.exists("journal.json")


# ---------------------------------------------------------------------- applying, with Compose and the CLI faked at their boundary


@pytest.fixture
def compose(monkeypatch):
    """Compose faked: ``configs`` are what config() returns, in turn (the last one stays); ``log`` the calls in order."""

    class FakeCompose:
        log: list[str] = []
        configs: list[dict[str, t.Any]] = [{"services": {}}]
        after_up: t.Callable[[], None] | None = None

        def __init__(self, app: dict[str, t.Any]) -> None:
            self.app = app

        def config(self) -> dict[str, t.Any]:
            FakeCompose.log.append("config")
            return FakeCompose.configs.pop(0) if len(FakeCompose.configs) > 1 else FakeCompose.configs[0]

        def run(self, *args: str, **kwargs: t.Any) -> None:
            extra = [os.path.basename(p) for p in self.app.get("extra_files") or []]
            FakeCompose.log.append(" ".join(args) + (f" +{','.join(extra)}" if extra else "") + f" ({kwargs.get('what')})")
            if args[0] == "up" and FakeCompose.after_up is not None:
                FakeCompose.after_up()  # pylint: disable=not-callable

    monkeypatch.setattr(_switch, "Compose", FakeCompose)
    monkeypatch.setattr(_switch, "docker_cli", lambda: "/usr/bin/docker")
    monkeypatch.setattr(_switch, "load", lambda client, cli, ledger, record, rows: FakeCompose.log.append(f"load {len(rows)} rows"))
    monkeypatch.setattr(_switch, "start_beside", lambda client, app, override, name, wait: FakeCompose.log.append(f"beside {name}"))
    return FakeCompose


HELD = images_file("written by selfhost.rollback.switch for app shop: the services a partial rollback holds back", {"db": "pg@sha256:1"})
LIVE_CONFIG = {"services": {"app": {"image": f"{REG}/notes:1.1"}, "db": {"image": f"{REG}/postgres:15"}}}
RELEASE_CONFIG = {"services": {"app": {"image": f"{REG}/notes:1.0"}, "db": {"image": f"{REG}/postgres:15"}}}
BACK_IMAGES = dict(LOCAL, **{f"{REG}/notes:1.0": "sha256:a10", f"{REG}/postgres:15": "sha256:db"})


def planned_back(tmp_path: Path, ledger: Ledger, compose_cls: t.Any, configs: list[dict[str, t.Any]], held: bytes | None = None,
                 **params: t.Any):
    if held is not None:  # the images file holds a service back (a partial rollback before)
        Path(ledger.path(PINS_FILE)).parent.mkdir(parents=True, exist_ok=True)
        Path(ledger.path(PINS_FILE)).write_bytes(held)
    app = make_project(tmp_path, compose=compose_text("1.1"))
    write_release(ledger, release())
    client = FakeClient([FakeContainer("a", "app", image_id="sha256:a11"), FakeContainer("d", "db", image_id="sha256:db")], BACK_IMAGES)
    module = FakeModule(app, client, ledger, check_mode=False, release="r-1", **params)
    compose_cls.configs = configs
    record, wanted = _switch.target_files(module)
    return module, _switch.plan_back(module, record, wanted, None)


def test_apply_back_loads_writes_then_brings_the_release_up(tmp_path, ledger, compose):
    module, plan = planned_back(tmp_path, ledger, compose, [RELEASE_CONFIG], start_first=["app"])
    assert plan.beside == ["app"] and plan.recreate == []
    app, config = _switch.apply_back(module, plan)
    assert config == RELEASE_CONFIG and module.locks == ["switching to release r-1"]
    assert compose.log == ["config", "load 2 rows", "config", "beside app",
                           "up -d --pull never +switch-override.yml (bringing the project up)"]
    assert (tmp_path / "shop" / "compose.yaml").read_text() == compose_text()
    override = Path(ledger.path("switch-override.yml")).read_bytes()
    assert override == images_file("written by selfhost.rollback.switch: run the release's exact images",
                                   {"app": f"{REG}/notes:1.0", "db": f"{REG}/postgres:15"})
    assert module.result == {"actions": plan.actions, "files_changed": ["compose.yaml"], "images": plan.rows}


def test_apply_back_puts_the_files_back_when_the_release_publishes_a_port_of_a_start_first_service(tmp_path, ledger, compose):
    published = {"services": {"app": {"image": f"{REG}/notes:1.0", "ports": ["8080:80"]}, "db": {}}}
    module, plan = planned_back(tmp_path, ledger, compose, [LIVE_CONFIG, published], held=HELD, start_first=["app"])
    assert plan.held == (ledger.path(PINS_FILE), HELD, None) and plan.actions[1] == f"remove {ledger.path(PINS_FILE)} (it holds no service now)"
    assert plan.result["diff"][-1] == {"before_header": ledger.path(PINS_FILE), "after_header": ledger.path(PINS_FILE),
                                       "before": HELD.decode(), "after": ""}
    with pytest.raises(OperatorError, match="service app publishes host port 8080:80"):
        _switch.apply_back(module, plan)
    assert compose.log == ["config", "load 2 rows", "config"]
    assert (tmp_path / "shop" / "compose.yaml").read_text() == compose_text("1.1")
    assert Path(ledger.path(PINS_FILE)).read_bytes() == HELD


def test_switch_back_verifies_after_the_switch(tmp_path, ledger, compose):
    module, plan = planned_back(tmp_path, ledger, compose, [RELEASE_CONFIG])
    items = module.client.containers.items
    compose.after_up = lambda: items.__setitem__(0, FakeContainer("n", "app", image_id="sha256:a10"))  # what Compose recreates
    result = _switch.switch_back(module)
    assert result["recreated"] == ["app"] and result["outside_release"] == [] and all(s["ok"] for s in result["services"].values())
    assert list(result) == ["changed", "actions", "files_changed", "images", "recreated", "started_first", "diff", "outside_release", "services"]


def test_write_back_files(tmp_path, ledger):
    app = make_project(tmp_path, pins="own_file")
    held = str(tmp_path / "store" / "shop" / "held.yaml")
    record = release()
    record["services"]["app"]["pinned_ref"] = "notes@sha256:then"
    plan = _switch.BackPlan(record, None, {"compose.yaml": b"back\n"}, {}, ["compose.yaml"], [], {}, {}, {}, {}, [], [],
                            (held, None, b"held\n"), [], {})
    _switch.write_back_files(app, plan)
    assert (tmp_path / "shop" / "compose.yaml").read_bytes() == b"back\n"
    assert Path(held).read_bytes() == b"held\n"
    assert Path(app["pins_file"]).read_bytes() == images_file(
        "written by selfhost.rollback.switch for app shop: the digests of release r-1", {"app": "notes@sha256:then"})


def forward_module(tmp_path: Path, **params: t.Any) -> tuple[FakeModule, Path]:
    pins = tmp_path / "store" / "shop" / "pins.yaml"
    pins.parent.mkdir(parents=True)
    pins.write_bytes(images_file("held", {"app": "notes@sha256:held"}))
    app = make_project(tmp_path)
    client = FakeClient([FakeContainer("a", "app"), FakeContainer("d", "db")])
    return FakeModule(app, client, Ledger(str(tmp_path / "store"), "shop"), check_mode=False, **params), pins


def test_switch_forward_writes_the_files_drops_the_held_images_and_brings_the_project_up(tmp_path, compose):
    module, pins = forward_module(tmp_path, env={"NOTES_VERSION": "1.1"})
    compose.configs = [LIVE_CONFIG]
    result = _switch.switch_forward(module)
    assert result["actions"] == ["write .env", f"remove the digest pins in {pins}", "docker compose up -d"]
    assert (tmp_path / "shop" / ".env").read_text() == "NOTES_VERSION=1.1\nDB_PASSWORD=hunter22\n" and not pins.exists()
    assert compose.log == ["up -d --pull missing (bringing the project up)", "config"]
    assert module.locks == ["switching to a new version"] and result["outside_release"] == []


def test_a_failed_cutover_puts_the_old_files_back(tmp_path, compose, monkeypatch):
    module, pins = forward_module(tmp_path, env={"NOTES_VERSION": "1.1"}, cutover=True)
    before = pins.read_bytes()
    monkeypatch.setattr(_switch._quiesce, "resume_interrupted", lambda ledger, client: [])
    monkeypatch.setattr(_switch._capture, "plan_backup", lambda app, client, options: {"sources": []})

    def fail(*args: t.Any) -> t.NoReturn:
        raise OperatorError("the capture failed")
    monkeypatch.setattr(_switch, "capture_cutover", fail)
    with pytest.raises(OperatorError, match="the capture failed"):
        _switch.switch_forward(module)
    assert compose.log == ["pull --policy missing --quiet --ignore-buildable (pulling the new images)"]
    assert (tmp_path / "shop" / ".env").read_text() == "NOTES_VERSION=1.0\nDB_PASSWORD=hunter22\n" and pins.read_bytes() == before
    assert module.result["actions"][-2] == "stop app, db and capture the data as the cutover set"


class FakeQuiesce:
    log: list[str] = []

    def __init__(self, ledger: Ledger, purpose: str) -> None:
        FakeQuiesce.log.append(f"quiesce for {purpose}")

    def hold(self, container: FakeContainer, mode: str) -> None:
        FakeQuiesce.log.append(f"{mode} {container.name}")

    def release(self) -> None:
        FakeQuiesce.log.append("release")


@pytest.mark.parametrize("fails", [pytest.param(False, id="captured"), pytest.param(True, id="the capture fails")])
def test_capture_cutover(app, ledger, monkeypatch, fails):
    FakeQuiesce.log = []
    monkeypatch.setattr(_switch._quiesce, "Quiesce", FakeQuiesce)
    monkeypatch.setattr(_switch._capture, "check_space", lambda ledger, sources, head: FakeQuiesce.log.append(f"space for {head}"))

    def run_backup(app, client, ledger, options, plan, resumed, quiesce):
        FakeQuiesce.log.append(f"backup {options.tags} space_check={options.space_check}")
        if fails:
            raise OperatorError("disk gone")
        return {"manifest": {"set_id": "b-1", "items": []}}
    monkeypatch.setattr(_switch._capture, "run_backup", run_backup)
    module = FakeModule(app, FakeClient([FakeContainer("w", "web"), FakeContainer("d", "db")]), ledger, check_mode=False)
    steps = ["space for app shop", "quiesce for cutover", "stop shop-db-d", "stop shop-web-w", "backup ['cutover'] space_check=False"]
    if fails:
        with pytest.raises(OperatorError, match="disk gone"):
            _switch.capture_cutover(module, app, {"sources": []}, [])
        assert FakeQuiesce.log == steps + ["release"]
    else:
        quiesce, record = _switch.capture_cutover(module, app, {"sources": []}, [])
        assert isinstance(quiesce, FakeQuiesce) and record["set_id"] == "b-1" and record["stopped"] == ["db", "web"]
        assert FakeQuiesce.log == steps


@pytest.mark.parametrize("check_mode", [pytest.param(True, id="check mode"), pytest.param(False, id="a run")])
def test_put_back_artifacts(app, ledger, compose, monkeypatch, check_mode):
    found = artifacts_found(["m"])
    found["by_hand"] = [{"name": "models", "command": ["ollama", "list"], "add": ["llama3"], "remove": []}]
    monkeypatch.setattr(_switch._artifacts, "plan_now", lambda app, ledger, record: found)
    monkeypatch.setattr(_switch._artifacts, "put_back", lambda app, ledger, items: [dict(i, done=True) for i in items])
    module = FakeModule(dict(app, artifacts=[{"name": "m", "restart": ["app"]}]), FakeClient([FakeContainer("a", "app")]), ledger,
                        check_mode=check_mode, scope="artifacts")
    result = _switch.put_back_artifacts(module, {"release_id": "r-1", "services": {"app": {}}})
    assert result["actions"] == ["put back artifact m (/models/m) as sha256:1 from the copy kept", "docker compose restart app"]
    assert module.warnings == [result["partial"]["by_hand"][0]] and "ollama list" in module.warnings[0]
    assert list(result["services"]) == ["app"]
    if check_mode:
        assert compose.log == [] and "done" not in found and "mixed" not in result["partial"]
    else:
        assert compose.log == ["restart app (restarting what reads the artifacts)"]
        assert found["done"] == [dict(found["put_back"][0], done=True)] and result["partial"]["mixed"]["target"] == "r-1"


@pytest.mark.parametrize(("services", "refusal"), [
    pytest.param(["app"], None, id="the part comes back"),
    pytest.param(["nope"], "app shop: the partial rollback to r-1 cannot be done, nothing was changed: rollback_services names nope",
                 id="refused in one sentence"),
])
def test_plan_partial(tmp_path, ledger, compose, monkeypatch, services, refusal):
    app = make_project(tmp_path, compose=compose_text("1.1"))
    compose.configs = [LIVE_CONFIG]
    monkeypatch.setattr(_switch._partial, "project_structure", lambda app, salt, secrets: LIVE_CONFIG)
    client = FakeClient([FakeContainer("a", "app", image_id="sha256:a11"), FakeContainer("d", "db", image_id="sha256:db")])
    module = FakeModule(app, client, ledger, release="r-1", services=services)
    record = dict(release(), compose={"files": [], "config": RELEASE_CONFIG})
    if refusal:
        with pytest.raises(OperatorError, match=f"^{refusal}"):
            _switch.plan_partial(module, record, {"compose.yaml": compose_text().encode()})
        return
    plan = _switch.plan_partial(module, record, {"compose.yaml": compose_text().encode()})
    assert plan["services"] == ["app"] and plan["images"]["app"] == "sha256:a10" and plan["blocking"] == []


def test_a_cutover_is_named_in_the_result_and_its_writers_released_after_the_up(tmp_path, compose, monkeypatch):
    module, _pins = forward_module(tmp_path, env={"NOTES_VERSION": "1.1"}, cutover=True, pull=False)
    compose.configs = [LIVE_CONFIG]
    FakeQuiesce.log = []
    monkeypatch.setattr(_switch._quiesce, "resume_interrupted", lambda ledger, client: ["resumed"])
    monkeypatch.setattr(_switch._capture, "plan_backup", lambda app, client, options: {"sources": []})
    monkeypatch.setattr(_switch, "capture_cutover", lambda module, app, plan, resumed: (FakeQuiesce(module.ledger, resumed[0]), {"set_id": "b-1"}))
    compose.after_up = lambda: FakeQuiesce.log.append("up")
    result = _switch.switch_forward(module)
    assert result["cutover"] == module.result["cutover"] == {"set_id": "b-1"}
    assert compose.log[0] == "up -d --pull never (bringing the project up)" and FakeQuiesce.log == ["quiesce for resumed", "up", "release"]
    assert list(result) == ["changed", "actions", "files_changed", "diff", "cutover", "outside_release", "services"]


def test_a_partial_switch_back_in_check_mode(tmp_path, ledger, compose, monkeypatch):
    app = make_project(tmp_path, compose=compose_text("1.1"))
    write_release(ledger, dict(release(), compose={"files": [{"path": "compose.yaml", "content": compose_text()}], "config": RELEASE_CONFIG}))
    compose.configs = [LIVE_CONFIG]
    monkeypatch.setattr(_switch._partial, "project_structure", lambda app, salt, secrets: LIVE_CONFIG)
    client = FakeClient([FakeContainer("a", "app", image_id="sha256:a11"), FakeContainer("d", "db", image_id="sha256:db")], BACK_IMAGES)
    result = _switch.switch_back(FakeModule(app, client, ledger, release="r-1", services=["app"]))
    assert result["partial"]["services"] == ["app"] and "files" not in result["partial"]
    assert [r["service"] for r in result["images"]] == ["app"] and result["recreated"] == ["app"]
    assert list(result["services"]) == ["app", "db"] and result["services"]["db"]["ok"] is True
