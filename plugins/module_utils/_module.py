# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The skeleton of every module's ``main()`` (private to the collection).

community.docker's ``AnsibleModuleDockerClient`` is the model: the module states its
options and the sentence that heads its failures, and gets the validated app, the
ledger, the Docker client, the lock and the secrets from here. Every result leaves
through :meth:`AppModule.exit` or :meth:`AppModule.fail`, so every one is scrubbed and
carries ``outcome`` and ``reasons``. A module's ``main()`` then reads::

    def main() -> None:
        module = AppModule({"keep": {"type": "int", "default": 3}}, failure="pruning app {name} failed")
        module.run(prune)

and ``prune(module)`` is the verb and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import traceback
import typing as t

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.selfhost.rollback.plugins.module_utils import _project, _tree
from ansible_collections.selfhost.rollback.plugins.module_utils._app import AppError, app_argument_spec, validate_app
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import NAME_FROM_CONTAINERS, adopt_live_project
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import (
    DOCKER_IMPORT_ERROR,
    DockerException,
    HAS_DOCKER,
    docker_client,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._project import secret_values
from ansible_collections.selfhost.rollback.plugins.module_utils._secrets import scrub
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger, LedgerError
from ansible_collections.selfhost.rollback.plugins.module_utils._restic import ResticError
from ansible_collections.selfhost.rollback.plugins.module_utils._storage import StorageError

#: Failures whose message is already a sentence for the operator.
OPERATOR_ERRORS: tuple[type[BaseException], ...] = (AppError, OperatorError, LedgerError)

#: What a backup, verification, restore or drill can fail with that is the operator's to act on:
#: every one carries a sentence for the operator (the backup, backup_verify, restore, drill and
#: switch modules pass it as ``errors``).
OPERATOR_FAILURES = (AppError, OperatorError, LedgerError, StorageError, ResticError, _tree.ArchiveError)

DOCKER_FAILURE = "the Docker Engine refused a request ({exc}); check that dockerd is running"
OS_FAILURE = "{exc}; check free space and permissions under {store}"
NO_SPACE = "no space left to write {path}; free space on that file system and run again"
UNEXPECTED = "unexpected {kind} ({exc}); this is a bug in selfhost.rollback: report it with the traceback (-vvv)"


def no_log_values(spec: dict[str, t.Any], params: dict[str, t.Any] | None) -> list[str]:
    """Values of every ``no_log`` option in ``params``, suboptions included."""
    found: list[str] = []
    for key, option in spec.items():
        value = (params or {}).get(key)
        if value is None:
            continue
        if option.get("no_log"):
            if isinstance(value, dict):
                found += [str(v) for v in value.values() if v is not None]
            elif isinstance(value, (list, tuple)):
                found += [str(v) for v in value if v is not None]
            else:
                found.append(str(value))
        suboptions = option.get("options")
        if suboptions:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    found += no_log_values(suboptions, item)
    return found


def outcome_of(result: dict[str, t.Any]) -> str:
    """The default outcome word: what a module without its own verdict did."""
    return "changed" if result.get("changed") else "unchanged"


class AppModule:
    """One run of a module: options, app, ledger, Docker client, lock, secrets, results.

    ``argument_spec`` holds the module's own options; with ``app=True`` (the default)
    they extend :func:`app_argument_spec` (``app`` and ``store``). ``docker=True``
    requires the Docker SDK before anything else; ``docker=False`` modules may still
    use :attr:`client_or_none`. ``failure`` heads every failure sentence and may use
    ``{name}`` (the app) and ``{store}``; without it a failure reads ``app NAME: ...``.
    ``docker_failure`` and ``os_failure`` finish the sentence for those errors
    (``{exc}``, ``{store}``, ``{name}``). ``errors`` adds library exceptions whose
    message is already an operator sentence (the backup set modules pass
    :data:`OPERATOR_FAILURES`). Other keyword arguments go to
    ``AnsibleModule`` (``required_if``, ``mutually_exclusive``...).

    The first time both :attr:`app` and the client exist, a project name the definition only
    defaults to gives way to the one the running containers carry (``project_name_from:
    containers``, with a warning), in the app dict itself, before any Compose call reads it.
    """

    def __init__(
        self,
        argument_spec: dict[str, t.Any] | None = None,
        *,
        app: bool = True,
        docker: bool = True,
        failure: str | None = None,
        docker_failure: str = DOCKER_FAILURE,
        os_failure: str = OS_FAILURE,
        errors: t.Iterable[type[BaseException]] = (),
        supports_check_mode: bool = True,
        module_class: t.Callable[..., t.Any] = AnsibleModule,
        **module_kwargs: t.Any,
    ) -> None:
        self.spec = app_argument_spec(**(argument_spec or {})) if app else dict(argument_spec or {})
        self.module = module_class(argument_spec=self.spec, supports_check_mode=supports_check_mode, **module_kwargs)
        self.params: dict[str, t.Any] = self.module.params
        self.check_mode: bool = bool(self.module.check_mode)
        self.diff_mode: bool = bool(getattr(self.module, "_diff", False))
        self.has_app = app
        self.name: str | None = (self.params.get("app") or {}).get("name") if app else None
        self.failure = failure
        self.docker_failure = docker_failure
        self.os_failure = os_failure
        self.errors = OPERATOR_ERRORS + tuple(errors)
        #: the partial result a failure reports (what was planned or done so far)
        self.result: dict[str, t.Any] = {}
        self._app: dict[str, t.Any] | None = None
        self._ledger: Ledger | None = None
        self._client: t.Any = None
        self._live_judged = False
        self._extra_secrets: list[str] = []
        self._env_secrets: list[str] | None = None
        self._cleanups: list[t.Callable[[], t.Any]] = []
        if docker and not HAS_DOCKER:
            self.module.fail_json(msg=missing_required_lib("docker (the Docker SDK for Python)"), exception=DOCKER_IMPORT_ERROR,
                                  outcome="failed", reasons=[])

    # ------------------------------------------------------------------ what a body uses

    @property
    def app(self) -> dict[str, t.Any]:
        """The app definition, validated and with its defaults resolved (AppError otherwise)."""
        if self._app is None:
            if not self.has_app:
                raise AppError("this module takes no app definition")
            self._app = validate_app(self.params["app"], self.params.get("store"))
            self._adopt_live_project()
        return self._app

    def revalidate(self) -> dict[str, t.Any]:
        """The app definition resolved again (a switch has rewritten its compose files), keeping a project
        name taken from the running containers: nothing on disk records it, so resolving again would
        fall back to the default and drive another project."""
        app = validate_app(self.params["app"], self.params.get("store"))
        taken = self._app or {}
        if taken.get("project_name_from") == NAME_FROM_CONTAINERS:
            app["project_name"], app["project_name_from"] = taken["project_name"], NAME_FROM_CONTAINERS
        return app

    @property
    def ledger(self) -> Ledger:
        """The app's ledger under ``store``."""
        if self._ledger is None:
            self._ledger = Ledger(self.params["store"], self.app["name"])
        return self._ledger

    @property
    def client(self) -> t.Any:
        """A Docker SDK client that answered a ping (OperatorError when the engine does not)."""
        if self._client is None:
            if not HAS_DOCKER:
                raise OperatorError(missing_required_lib("docker (the Docker SDK for Python)"))
            self._client = docker_client()
            self._adopt_live_project()
        return self._client

    def client_or_none(self, warning: str = "{exc}", timeout: int = 30) -> t.Any:
        """The Docker client when there is an engine, else None after warning ``warning`` (``{exc}``: why not)."""
        if self._client is None and HAS_DOCKER:
            try:
                self._client = docker_client(timeout=timeout)
            except OperatorError as exc:
                self.warn(warning.format(exc=exc))
            try:
                self._adopt_live_project()
            except DockerException as exc:  # a module that does without the engine does without this too
                self.warn(f"app {self.name}: the containers could not be listed ({exc}); the project name is not checked against them")
        return self._client

    @property
    def secrets(self) -> list[str]:
        """Values no result may contain: the app's secret-looking env values, no_log options, registered extras."""
        if self._env_secrets is None and self._app is not None:
            try:
                self._env_secrets = []
                for rel in sorted(_project.env_files(self._app)):  # the app's env file and the services' env_file:
                    self._env_secrets += secret_values(dict(self._app, env_file=os.path.join(self._app["project_dir"], rel)))
            except (OSError, UnicodeDecodeError, OperatorError):  # an unreadable env file has no values to leak
                self._env_secrets = self._env_secrets or []
        values = list(self._env_secrets or []) + no_log_values(self.spec, self.params) + self._extra_secrets
        # longest first, so that a secret containing another is replaced whole
        return sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)

    def add_secrets(self, *values: str | None) -> None:
        """Values this run must also keep out of every result and message (passwords given in a dict option...)."""
        self._extra_secrets += [v for v in values if v]

    def scrub(self, data: t.Any) -> t.Any:
        return scrub(data, self.secrets)

    @contextlib.contextmanager
    def lock(self, purpose: str, timeout: float | None = None) -> t.Iterator[None]:
        """Hold the app's lock; ``timeout`` defaults to the ``lock_timeout`` option (0 without one)."""
        if timeout is None:
            timeout = float(self.params.get("lock_timeout") or 0)
        with self.ledger.lock(timeout, purpose):
            yield

    def cleanup(self, action: t.Callable[[], t.Any]) -> None:
        """Run ``action`` when the run ends, whether it exits, fails or raises."""
        self._cleanups.append(action)

    def warn(self, message: str) -> None:
        self.module.warn(self.scrub(message))

    # ------------------------------------------------------------------ leaving

    def exit(self, **result: t.Any) -> t.NoReturn:
        """Exit with ``result`` (merged over :attr:`result`), scrubbed, with ``outcome`` and ``reasons``."""
        merged = dict(self.result)
        merged.update(result)
        merged.setdefault("changed", False)
        if merged.get("outcome") is None:
            merged["outcome"] = outcome_of(merged)
        merged["reasons"] = list(merged.get("reasons") or [])
        self.module.exit_json(**self.scrub(merged))
        raise SystemExit(0)  # unreachable: exit_json exits

    def fail(self, msg: str, **result: t.Any) -> t.NoReturn:
        """Fail with ``msg``; ``result`` is merged over :attr:`result`; everything is scrubbed.

        ``outcome`` is ``failed`` unless the module gives its own verdict; ``reasons``
        default to the message itself.
        """
        merged = dict(self.result)
        merged.update(result)
        merged.setdefault("changed", False)
        if merged.get("outcome") is None:
            merged["outcome"] = "failed"
        merged["reasons"] = list(merged.get("reasons") or [msg])
        merged.pop("msg", None)
        self.module.fail_json(msg=self.scrub(msg), **self.scrub(merged))
        raise SystemExit(1)  # unreachable: fail_json exits

    # ------------------------------------------------------------------ the run

    def head(self) -> str:
        """The start of every failure sentence: ``backup of app NAME failed`` or ``app NAME``."""
        fields = self._fields()
        if self.failure:
            return self.failure.format(**fields)
        return f"app {self.name}" if self.name else "selfhost.rollback"

    def sentence(self, exc: BaseException) -> tuple[str, bool]:
        """The operator sentence for ``exc``, and whether a traceback should go with it."""
        fields = dict(self._fields(), exc=exc)
        message = " ".join(str(exc).split())  # one line, whatever the library said
        if isinstance(exc, self.errors):
            if self.failure:
                return f"{self.head()}: {message}", False
            if self.name and f"app {self.name}" not in message and f"app name {self.name!r}" not in message:
                return f"app {self.name}: {message}", False
            return message, False
        if isinstance(exc, DockerException):
            return f"{self.head()}: {self.docker_failure.format(**dict(fields, exc=message))}", False
        if isinstance(exc, OSError):
            if exc.errno == errno.ENOSPC:
                return f"{self.head()}: {NO_SPACE.format(path=exc.filename or self.params.get('store') or 'the target')}", False
            return f"{self.head()}: {self.os_failure.format(**dict(fields, exc=message))}", True
        return f"{self.head()}: {UNEXPECTED.format(kind=type(exc).__name__, exc=message)}", True

    def run(self, body: t.Callable[[AppModule], dict[str, t.Any] | None]) -> t.NoReturn:
        """Run ``body(self)`` and exit with what it returns (or :attr:`result`).

        Every exception becomes one scrubbed operator sentence with ``outcome: failed``;
        a body may also leave early through :meth:`exit` or :meth:`fail`.
        """
        try:
            try:
                returned = body(self)
            # every failure, expected or not, leaves as one scrubbed sentence
            except Exception as exc:  # pylint: disable=broad-except
                message, with_trace = self.sentence(exc)
                self.fail(message, **({"exception": traceback.format_exc()} if with_trace else {}))
            self.exit(**(returned if returned is not None else {}))
        finally:
            self._run_cleanups()

    # ------------------------------------------------------------------ internals

    def _adopt_live_project(self) -> None:
        """Once the app and the engine are both at hand, and before any Compose call can use the name,
        take the project name the running containers carry when the definition only defaults to one
        (``_compose.judge_live_project``). The app dict is changed in place, so every later call of the
        run drives that project; a refusal is left to the module's own ``check_live_project``.
        """
        if self._live_judged or self._app is None or self._client is None:
            return
        self._live_judged = True
        verdict = adopt_live_project(self._client, self._app)
        if verdict.verdict == "adopt" and verdict.message:
            self.warn(verdict.message)

    def _fields(self) -> dict[str, t.Any]:
        return {"name": self.name, "store": self.params.get("store")}

    def _run_cleanups(self) -> None:
        while self._cleanups:
            action = self._cleanups.pop()
            with contextlib.suppress(Exception):
                action()
