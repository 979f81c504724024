"""The module skeleton: every result leaves scrubbed, with outcome and reasons; every
library error becomes one operator sentence. AnsibleModule is replaced at its boundary
(params in, exit_json/fail_json out)."""

from __future__ import annotations

import errno
import typing as t

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _module
from ansible_collections.selfhost.rollback.plugins.module_utils._app import AppError
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import DockerException
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import LedgerError, LockTimeout
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule, no_log_values

SECRET = "s3cret-from-env"
RESTIC_PASSWORD = "restic-pass-123"


class Left(SystemExit):
    """What exit_json/fail_json raise here: SystemExit, as theirs do, with the result instead of printing it."""

    def __init__(self, failed: bool, result: dict[str, t.Any]) -> None:
        super().__init__(result)
        self.failed = failed
        self.result = result


class FakeAnsibleModule:
    """The part of AnsibleModule the skeleton uses; params are taken as given (no spec validation)."""

    params: dict[str, t.Any] = {}

    def __init__(self, argument_spec: dict[str, t.Any], supports_check_mode: bool = False, **kwargs: t.Any) -> None:
        self.argument_spec = argument_spec
        self.kwargs = kwargs
        self.params = dict(type(self).params)
        self.check_mode = False
        self._diff = False
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def exit_json(self, **result: t.Any) -> None:
        raise Left(False, result)

    def fail_json(self, msg: str, **result: t.Any) -> None:
        raise Left(True, dict(result, msg=msg))


@pytest.fixture
def project(tmp_path):
    directory = tmp_path / "notes"
    directory.mkdir()
    (directory / "compose.yaml").write_text("services: {}\n")
    (directory / ".env").write_text(f"DB_PASSWORD={SECRET}\nNOTES_VERSION=1.0\n")
    return directory


def make(tmp_path, project, params: dict[str, t.Any] | None = None, spec: dict[str, t.Any] | None = None,
         **kwargs: t.Any) -> AppModule:
    values = {"app": {"name": "notes", "project_dir": str(project), "compose_files": None, "env_file": ".env"},
              "store": str(tmp_path / "store"), "lock_timeout": 0.0}
    values.update(params or {})
    options = {"lock_timeout": {"type": "float", "default": 0}}
    options.update(spec or {})

    class Module(FakeAnsibleModule):
        pass

    Module.params = values
    kwargs.setdefault("docker", False)
    return AppModule(options, module_class=Module, **kwargs)


def leave(module: AppModule, body: t.Callable[[AppModule], t.Any]) -> Left:
    with pytest.raises(Left) as left:
        module.run(body)
    return left.value


def deep_failure(module: AppModule) -> None:
    module.result.update(changed=False, actions=[f"read {SECRET} from the env file"])

    def inner() -> None:
        raise OperatorError(f"app notes: the database refused password {SECRET}")

    module.app  # noqa: B018 - the env file's secrets become known here
    inner()


def test_secrets_are_scrubbed_from_a_failure_raised_deep_in_the_body(tmp_path, project):
    left = leave(make(tmp_path, project), deep_failure)
    assert left.failed
    assert SECRET not in repr(left.result)
    assert left.result["msg"] == "app notes: the database refused password ********"
    assert left.result["actions"] == ["read ******** from the env file"]
    assert left.result["outcome"] == "failed" and left.result["reasons"] == [left.result["msg"]]


def test_no_log_option_values_are_scrubbed_even_when_the_app_is_unusable(tmp_path, project):
    spec = {"restic": {"type": "dict", "options": {"repository": {"type": "str"},
                                                   "password": {"type": "str", "no_log": True}}}}
    params = {"restic": {"repository": "/srv/restic", "password": RESTIC_PASSWORD},
              "app": {"name": "notes", "project_dir": "/nonexistent", "compose_files": None, "env_file": ".env"}}
    module = make(tmp_path, project, params, spec)

    def body(module: AppModule) -> None:
        module.warn(f"trying {RESTIC_PASSWORD}")
        raise OperatorError(f"restic said: wrong password {RESTIC_PASSWORD}")

    left = leave(module, body)
    assert RESTIC_PASSWORD not in repr(left.result) and RESTIC_PASSWORD not in repr(module.module.warnings)
    assert left.result["msg"] == "app notes: restic said: wrong password ********"


def test_registered_secrets_and_a_secret_containing_another_are_replaced_whole(tmp_path, project):
    module = make(tmp_path, project)
    module.add_secrets("abcd", "abcdefgh", None, "")
    assert module.scrub("x abcdefgh y abcd") == "x ******** y ********"


@pytest.mark.parametrize(
    ("spec", "params", "expected"),
    [
        ({"password": {"type": "str", "no_log": True}}, {"password": "pw-1"}, ["pw-1"]),
        ({"env": {"type": "dict", "no_log": True}}, {"env": {"A": "v-1", "B": None}}, ["v-1"]),
        ({"keys": {"type": "list", "no_log": True}}, {"keys": ["k-1", "k-2"]}, ["k-1", "k-2"]),
        ({"r": {"type": "dict", "options": {"password": {"type": "str", "no_log": True}}}}, {"r": {"password": "pw-2"}}, ["pw-2"]),
        ({"r": {"type": "list", "elements": "dict", "options": {"token": {"type": "str", "no_log": True}}}},
         {"r": [{"token": "t-1"}, {"token": None}]}, ["t-1"]),
        ({"name": {"type": "str"}}, {"name": "not secret"}, []),
    ],
)
def test_no_log_values_walk_suboptions(spec, params, expected):
    assert no_log_values(spec, params) == expected


@pytest.mark.parametrize(
    ("error", "sentence", "traced"),
    [
        (AppError("app notes: project_dir /x does not exist; set project_dir"), "app notes: project_dir /x does not exist; set project_dir", False),
        (OperatorError("the docker CLI is not installed on this host"), "app notes: the docker CLI is not installed on this host", False),
        (LedgerError("ledger file /s/notes/a.json is not valid JSON"), "app notes: ledger file /s/notes/a.json is not valid JSON", False),
        (LockTimeout("app notes is busy: another run holds /s/notes/lock"), "app notes is busy: another run holds /s/notes/lock", False),
        (DockerException("500 Server Error"), "app notes: the Docker Engine refused a request (500 Server Error); check that dockerd is running", False),
        (OSError(errno.ENOSPC, "No space left on device", "/s/notes/x.tmp"),
         "app notes: no space left to write /s/notes/x.tmp; free space on that file system and run again", False),
        (PermissionError(errno.EACCES, "Permission denied", "/s/notes"),
         "app notes: [Errno 13] Permission denied: '/s/notes'; check free space and permissions under STORE", True),
        (ValueError("bad\nvalue"), "app notes: unexpected ValueError (bad value); this is a bug in selfhost.rollback", True),
    ],
)
def test_each_library_error_becomes_one_operator_sentence(tmp_path, project, error, sentence, traced):
    def body(_module: AppModule) -> None:
        raise error

    left = leave(make(tmp_path, project), body)
    assert left.failed
    assert left.result["msg"].startswith(sentence.replace("STORE", str(tmp_path / "store")))
    assert "\n" not in left.result["msg"]
    assert ("exception" in left.result) is traced
    assert left.result["outcome"] == "failed" and left.result["reasons"] == [left.result["msg"]]
    assert left.result["changed"] is False


def test_a_module_heads_its_failures_and_finishes_its_docker_and_os_sentences(tmp_path, project):
    module = make(tmp_path, project, failure="backup of app {name} failed", errors=(KeyError,),
                  docker_failure="the Docker Engine refused a request ({exc}); check the containers",
                  os_failure="{exc}; check free space and permissions of {store}")
    assert module.sentence(OperatorError("volume 'x' is not a named volume"))[0] == \
        "backup of app notes failed: volume 'x' is not a named volume"
    assert module.sentence(KeyError("db"))[0] == "backup of app notes failed: 'db'"
    assert module.sentence(DockerException("gone"))[0] == \
        "backup of app notes failed: the Docker Engine refused a request (gone); check the containers"
    assert module.sentence(OSError(errno.EROFS, "Read-only file system"))[0] == \
        f"backup of app notes failed: [Errno 30] Read-only file system; check free space and permissions of {tmp_path / 'store'}"


def test_an_app_less_module_names_its_store(tmp_path, project):
    class Module(FakeAnsibleModule):
        params = {"store": "/srv/ledger"}

    module = AppModule({"store": {"type": "path"}}, app=False, docker=False, module_class=Module,
                       failure="reading the ledger in {store} failed")
    assert module.sentence(LedgerError("it broke"))[0] == "reading the ledger in /srv/ledger failed: it broke"
    with pytest.raises(AppError):
        module.app  # noqa: B018


@pytest.mark.parametrize(
    ("returned", "outcome", "reasons"),
    [
        ({"changed": True}, "changed", []),
        ({"changed": False}, "unchanged", []),
        ({}, "unchanged", []),
        ({"changed": False, "outcome": "ready", "reasons": ["images: pull needed"]}, "ready", ["images: pull needed"]),
        (None, "unchanged", []),
    ],
)
def test_every_result_carries_outcome_and_reasons(tmp_path, project, returned, outcome, reasons):
    left = leave(make(tmp_path, project), lambda _module: returned)
    assert not left.failed
    assert left.result["outcome"] == outcome and left.result["reasons"] == reasons
    assert "changed" in left.result


def test_a_verdict_failure_keeps_its_outcome_and_reasons(tmp_path, project):
    def body(module: AppModule) -> None:
        module.fail("drill of app notes failed: rows differ", outcome="failed", reasons=["rows differ", "slow"], passed=False)

    left = leave(make(tmp_path, project), body)
    assert left.failed and left.result["reasons"] == ["rows differ", "slow"] and left.result["passed"] is False


def test_cleanups_run_on_success_early_exit_and_failure(tmp_path, project):
    closed: list[str] = []

    def succeed(module: AppModule) -> dict[str, t.Any]:
        module.cleanup(lambda: closed.append("success"))
        return {"changed": False}

    def leave_early(module: AppModule) -> None:
        module.cleanup(lambda: closed.append("early"))
        module.exit(changed=True)

    def fail(module: AppModule) -> None:
        module.cleanup(lambda: closed.append("failure"))
        module.cleanup(lambda: 1 / 0)  # a cleanup that breaks does not hide the failure
        raise OperatorError("app notes: broken")

    left = [leave(make(tmp_path, project), body) for body in (succeed, leave_early, fail)]
    assert closed == ["success", "early", "failure"]
    assert [x.failed for x in left] == [False, False, True] and left[1].result["outcome"] == "changed"


def test_the_lock_uses_lock_timeout_and_names_its_purpose(tmp_path, project):
    holder = make(tmp_path, project)
    other = make(tmp_path, project)

    def body(module: AppModule) -> None:
        with holder.lock("backup"):
            with module.lock("restore"):
                pass

    left = leave(other, body)
    assert left.result["msg"].startswith("app notes is busy: another run (pid ")
    assert "backup since" in left.result["msg"]


def test_docker_modules_require_the_sdk_first(tmp_path, project, monkeypatch):
    monkeypatch.setattr(_module, "HAS_DOCKER", False)
    with pytest.raises(Left) as left:
        make(tmp_path, project, docker=True)
    assert left.value.failed and "docker (the Docker SDK for Python)" in left.value.result["msg"]
    assert left.value.result["outcome"] == "failed"


def test_modules_without_docker_do_without_the_sdk(tmp_path, project, monkeypatch):
    monkeypatch.setattr(_module, "HAS_DOCKER", False)
    module = make(tmp_path, project, docker=False)
    assert module.client_or_none("judged without the engine: {exc}") is None
    with pytest.raises(OperatorError, match="Docker SDK"):
        module.client  # noqa: B018


def test_check_and_diff_mode_are_passed_through(tmp_path, project):
    module = make(tmp_path, project)
    assert module.check_mode is False and module.diff_mode is False
    assert module.ledger.root == str(tmp_path / "store" / "notes")
    assert module.app["env_file"] == str(project / ".env")
    assert SECRET in module.secrets
