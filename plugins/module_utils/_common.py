# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers shared by the collection's modules (private to the collection).

Docker Engine access goes through the Docker SDK for Python; Compose through its
CLI (``docker compose``), always with an explicit project directory, project name,
files and env file, and never with a secret on the command line.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import traceback
import typing as t

try:
    import docker
    from docker.errors import DockerException

    HAS_DOCKER = True
    DOCKER_IMPORT_ERROR = None
except ImportError:  # the module skeleton (_module.AppModule) reports it with missing_required_lib
    HAS_DOCKER = False
    DOCKER_IMPORT_ERROR = traceback.format_exc()

    class DockerException(Exception):  # type: ignore[no-redef]
        """Stand-in so that except clauses work without the SDK."""


CHUNK = 1024 * 1024


class OperatorError(Exception):
    """A failure with a message an operator can act on."""

    def __init__(self, message: str, **details: t.Any) -> None:
        super().__init__(message)
        self.details = details


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def iso(moment: datetime.datetime | None = None) -> str:
    return (moment or utcnow()).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def stamp(moment: datetime.datetime | None = None) -> str:
    """A sortable id fragment: 20261122T020705Z."""
    return (moment or utcnow()).strftime("%Y%m%dT%H%M%SZ")


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def canonical_json(data: t.Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def salted_hash(value: str, salt: bytes) -> str:
    """Fingerprint of a secret-bearing value: comparable between releases, not reversible."""
    return "hmac-sha256:" + hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:32]


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


class Compose:
    """``docker compose`` for one app, with the app's project, files and env file."""

    def __init__(self, app: dict[str, t.Any]) -> None:
        self.app = app
        self.cli = docker_cli()

    def base_args(self) -> list[str]:
        args = [self.cli, "compose", "--project-directory", self.app["project_dir"], "-p", self.app["project_name"]]
        for path in self.app["compose_files"]:
            args += ["-f", path]
        if os.path.isfile(self.app["env_file"]):
            args += ["--env-file", self.app["env_file"]]
        return args

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None, what: str = "") -> subprocess.CompletedProcess:
        cmd = self.base_args() + list(args)
        run_env = dict(os.environ)
        run_env.update(env or {})
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise OperatorError(f"app {self.app['name']}: 'docker compose {' '.join(args)}' did not finish within {timeout:.0f} s") from exc
        if check and proc.returncode != 0:
            raise OperatorError(
                f"app {self.app['name']}: {what or 'docker compose ' + ' '.join(args)} failed: {last_lines(proc.stderr)}",
                rc=proc.returncode,
            )
        return proc

    def config(self) -> dict[str, t.Any]:
        """The project as Compose resolves it (interpolated, merged, validated)."""
        proc = self.run("config", "--format", "json", what="reading the compose files")
        try:
            return json.loads(proc.stdout)
        except ValueError as exc:
            raise OperatorError(f"app {self.app['name']}: 'docker compose config' returned no JSON: {exc}") from exc

    def version(self) -> str:
        proc = subprocess.run([self.cli, "compose", "version", "--short"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise OperatorError("the Compose v2 CLI plugin is missing ('docker compose version' failed); install docker-compose-plugin")
        return proc.stdout.strip()


def last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "no output"


def project_containers(client: t.Any, project: str, all_states: bool = True) -> list[t.Any]:
    """Containers of a Compose project, by the label Compose sets."""
    return client.containers.list(all=all_states, filters={"label": f"com.docker.compose.project={project}"})


def read_env_file(path: str) -> dict[str, str]:
    """Parse a Compose ``.env`` file (KEY=VALUE, optional quotes, comments)."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return parse_env_text(handle.read())


def parse_env_text(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _sep, value = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


SECRET_MARKERS = ("PASS", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "PRIVATE")
CREDENTIALS_IN_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^@\s]+@", re.IGNORECASE)


def is_secret(key: str, value: str) -> bool:
    """Whether an env entry holds a secret: by its name, or a URL that carries credentials."""
    return any(m in key.upper() for m in SECRET_MARKERS) or bool(CREDENTIALS_IN_URL.search(value or ""))


def secret_values(app: dict[str, t.Any], extra: t.Iterable[str] = ()) -> list[str]:
    """Values a result or record must never contain: everything in the env file that looks secret."""
    found = [v for k, v in read_env_file(app["env_file"]).items() if v and is_secret(k, v)]
    return [v for v in list(found) + list(extra) if v and len(v) >= 4]


def scrub(data: t.Any, secrets: list[str]) -> t.Any:
    """Replace every occurrence of a secret value in strings inside ``data``."""
    if not secrets:
        return data
    if isinstance(data, str):
        for secret in secrets:
            data = data.replace(secret, "********")
        return data
    if isinstance(data, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [scrub(v, secrets) for v in data]
    return data


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


def database_for(app: dict[str, t.Any], service: str) -> dict[str, t.Any]:
    for database in app.get("databases") or []:
        if database["service"] == service:
            return database
    return {}


def sql_argv(engine: str, database: str, user: str | None, sql: str) -> list[str]:
    """A client command that prints one bare value per row (local socket, no password)."""
    if engine == "postgres":
        return ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-U", user or "postgres", "-d", database, "-tAc", sql]
    if engine in ("mysql", "mariadb"):
        return ["mysql", "-N", "-B", "-u", user or "root", database, "-e", sql]
    raise OperatorError(f"no SQL client known for engine {engine!r}")


def schema_version(client: t.Any, app: dict[str, t.Any]) -> str | None:
    """The app's schema version from its ``schema_probe``, or None when none is declared."""
    probe = app.get("schema_probe")
    if not probe:
        return None
    declared = database_for(app, probe["service"])
    engine = declared.get("engine", "postgres")
    database = probe.get("database") or declared.get("database")
    user = probe.get("user") or declared.get("user")
    if not database:
        raise OperatorError(f"app {app['name']}: schema_probe needs a database (set schema_probe.database or declare it in databases)")
    if engine == "sqlite":
        argv = ["sqlite3", declared.get("path") or database, probe["sql"]]
    else:
        argv = sql_argv(engine, database, user, probe["sql"])
    rc, out, err = exec_in_service(client, app, probe["service"], argv)
    if rc != 0:
        raise OperatorError(
            f"app {app['name']}: the schema probe failed in service {probe['service']} (rc {rc}): "
            f"{last_lines(err.decode(errors='replace'))}; check schema_probe.sql and the database name"
        )
    value = out.decode(errors="replace").strip().splitlines()
    return value[0].strip() if value else None
