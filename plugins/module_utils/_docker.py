# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Docker Engine through the Docker SDK for Python (private to the collection).

The SDK is imported here only; without it the module skeleton (``_module.AppModule``) reports
it with ``missing_required_lib``. Containers are found by the labels Compose sets.
"""

from __future__ import annotations

import shutil
import traceback
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError

try:
    import docker
    from docker.errors import DockerException, NotFound  # pylint: disable=unused-import  # NotFound: for the modules

    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None
except ImportError:  # the module skeleton (_module.AppModule) reports it with missing_required_lib
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR = traceback.format_exc()

    class DockerException(Exception):  # type: ignore[no-redef]
        """Stand-in so that except clauses work without the SDK."""

    class NotFound(DockerException):  # type: ignore[no-redef]
        """Stand-in so that except clauses work without the SDK."""


def docker_client(timeout: int = 120) -> t.Any:
    """A Docker SDK client from the environment (DOCKER_HOST or the local socket)."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except DockerException as exc:
        raise OperatorError(
            f"cannot reach the Docker Engine ({exc}); start it (systemctl start docker) "
            "or set DOCKER_HOST, then run again"
        ) from exc


def docker_cli() -> str:
    path = shutil.which("docker")
    if not path:
        raise OperatorError("the docker CLI is not installed on this host; install docker-ce-cli (or docker.io) and the Compose v2 plugin")
    return path


def project_containers(client: t.Any, project: str, all_states: bool = True) -> list[t.Any]:
    """Containers of a Compose project, by the label Compose sets."""
    return client.containers.list(all=all_states, filters={"label": f"com.docker.compose.project={project}"})


def container_state(container: t.Any, one_shot: bool = False) -> dict[str, t.Any]:
    """What a gate judges of a container: state, health, and for a one-shot service its exit code."""
    state = container.attrs.get("State") or {}
    out = {"state": state.get("Status"), "health": (state.get("Health") or {}).get("Status")}
    if one_shot:
        out.update(one_shot=True, exit_code=state.get("ExitCode"))
    return out


def state_ok(state: dict[str, t.Any]) -> bool:
    """A service is fine when it runs (and is not unhealthy), or, being one-shot, when it ended with exit code 0."""
    if state.get("one_shot") and state.get("state") == "exited":
        return state.get("exit_code") == 0
    return state.get("state") == "running" and state.get("health") in (None, "healthy")


def state_failed(state: dict[str, t.Any]) -> bool:
    """A service that will not come good by waiting: dead, unhealthy, or exited (a one-shot: with an error)."""
    if state.get("one_shot") and state.get("state") == "exited":
        return state.get("exit_code") != 0
    return state.get("state") in ("exited", "dead") or state.get("health") == "unhealthy"


def service_container(client: t.Any, app: dict[str, t.Any], service: str, running: bool = True) -> t.Any:
    """The (first) container of ``service`` in the app's Compose project."""
    filters = {"label": [f"com.docker.compose.project={app['project_name']}", f"com.docker.compose.service={service}"]}
    containers = client.containers.list(all=not running, filters=filters)
    if not containers:
        state = "running " if running else ""
        raise OperatorError(
            f"app {app['name']}: no {state}container for service {service!r} in Compose project {app['project_name']}; "
            "check the service name, or start the app (docker compose up -d)"
        )
    return sorted(containers, key=lambda c: c.name)[0]


def exec_in_service(client: t.Any, app: dict[str, t.Any], service: str, argv: list[str],
                    user: str | None = None) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in the service's container (no shell); return rc, stdout, stderr."""
    container = service_container(client, app, service)
    kwargs: dict[str, t.Any] = {"demux": True}
    if user:
        kwargs["user"] = user
    result = container.exec_run(argv, **kwargs)
    stdout, stderr = result.output if isinstance(result.output, tuple) else (result.output, b"")
    return int(result.exit_code), stdout or b"", stderr or b""
