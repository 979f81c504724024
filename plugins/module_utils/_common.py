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


CHUNK = 1024 * 1024
ENV_UNSET = "__selfhost_rollback_unset__"


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
        # the collection's own files come last: the digest pins (pins: own_file), then a call's override
        pins = self.app.get("pins_file")
        for path in ([pins] if pins and os.path.isfile(pins) else []) + list(self.app.get("extra_files") or []):
            args += ["-f", path]
        # Compose reads <project dir>/.env by itself (and COMPOSE_ENV_FILES); only another file is named
        if os.path.isfile(self.app["env_file"]) and self.app["env_file"] != os.path.join(self.app["project_dir"], ".env"):
            args += ["--env-file", self.app["env_file"]]
        return args

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None, what: str = "", stdin: str | None = None) -> subprocess.CompletedProcess:
        cmd = self.base_args() + list(args)
        run_env = dict(os.environ)
        run_env.update(env or {})
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env, check=False,
                                  input=stdin)
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

    def env_values(self, keys: t.Iterable[str]) -> dict[str, str]:
        """The values Compose itself gives these variables (env file, environment, its own rules).

        A service that only Compose reads is added from standard input (``-f -``) with one
        ``${KEY}`` per variable; nothing is written and nothing runs.
        """
        keys = [k for k in keys if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k)]
        if not keys:
            return {}
        probe = {"services": {"selfhost-rollback-env-probe": {"image": "scratch", "environment": {
            k: "${%s-%s}" % (k, ENV_UNSET) for k in keys}}}}
        proc = self.run("-f", "-", "config", "--format", "json", stdin=json.dumps(probe), what="reading the env file")
        try:
            env = json.loads(proc.stdout)["services"]["selfhost-rollback-env-probe"]["environment"]
        except (ValueError, KeyError) as exc:
            raise OperatorError(f"app {self.app['name']}: 'docker compose config' did not give the env values: {exc}") from exc
        return {k: str(v).replace("$$", "$") for k, v in env.items() if v != ENV_UNSET}

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


LABEL_PROJECT = "com.docker.compose.project"
LABEL_WORKING_DIR = "com.docker.compose.project.working_dir"
LABEL_CONFIG_FILES = "com.docker.compose.project.config_files"


#: where ``project_name_from`` says the project name came from when nothing names it (Compose's defaults),
#: and when it was taken from the containers because only they know it (``docker compose -p NAME up``)
NAME_FROM_FILE = "the compose file's name:"
NAME_FROM_DIRECTORY = "the project directory's name"
NAME_FROM_CONTAINERS = "containers"
DEFAULT_NAME_SOURCES = (NAME_FROM_FILE, NAME_FROM_DIRECTORY)
_COUNTS = {2: "two", 3: "three", 4: "four"}


class LiveProject(t.NamedTuple):
    """What the containers say of the project the definition resolves to.

    ``verdict`` is ``agrees`` (also when nothing runs from the project directory), ``adopt``
    (``name`` is the project the containers carry; ``message`` is the warning to give) or
    ``refuse`` (``message`` is the sentence to stop with).
    """

    verdict: str
    name: str | None = None
    message: str | None = None


def judge_live_project(containers: list[dict[str, str]], app: dict[str, t.Any]) -> LiveProject:
    """Compare ``containers``, the labels of every Compose container on the host (newest first), with the app.

    A name the definition only defaults to (the directory's, or the compose file's ``name:``) gives
    way to the one the containers started from the project directory carry, when they are all of one
    project and the newest was started with the files the definition reads: that project was brought
    up with ``-p`` or with COMPOSE_PROJECT_NAME in the shell, which no file records. A name set in
    the definition or by COMPOSE_PROJECT_NAME never gives way.
    """
    name, source = app["project_name"], app.get("project_name_from", "project_name")
    here = {app["project_dir"], os.path.realpath(app["project_dir"])}
    if any(c.get(LABEL_PROJECT) == name for c in containers):
        return _judge_running(containers, app)
    started_here = [c for c in containers if c.get(LABEL_WORKING_DIR) in here]
    others = sorted({str(c.get(LABEL_PROJECT)) for c in started_here})
    if not others:
        return LiveProject("agrees")  # an app that does not run yet has nothing to disagree with
    where = f"app {app['name']}: the containers started from {app['project_dir']}"
    if len(others) > 1:
        named = ", ".join(repr(o) for o in others[:-1]) + f" and {others[-1]!r}"
        choices = ", ".join(f"project_name: {o}" for o in others[:-1]) + f" or project_name: {others[-1]}"
        return LiveProject("refuse", message=(
            f"{where} belong to {_COUNTS.get(len(others), str(len(others)))} Compose projects, {named}, not {name!r} "
            f"(from {source}); set {choices} in the app definition, whichever this app is, and take the "
            f"{'other' if len(others) == 2 else 'others'} down (docker compose -p NAME down); nothing was changed"))
    other = others[0]
    refusal = LiveProject("refuse", message=(
        f"{where} belong to Compose project {other!r}, not {name!r} (from {source}); set project_name: {other} "
        "in the app definition; nothing was changed"))
    if source not in DEFAULT_NAME_SOURCES:
        return refusal
    used = _files_inside(started_here[0], app)
    if not used:  # no record of the files it was started with: nothing says it is this app
        return refusal
    if used != _wanted_files(app):
        return LiveProject("refuse", message=_other_files(app, used))
    adopted = dict(app, project_name=other, project_name_from=NAME_FROM_CONTAINERS)
    verdict = _judge_running(containers, adopted)
    if verdict.verdict != "agrees":
        return verdict
    return LiveProject("adopt", other, (
        f"app {app['name']}: Compose project {other!r} is taken from the containers started from {app['project_dir']} "
        f"(brought up with 'docker compose -p {other}' or COMPOSE_PROJECT_NAME in the shell), not {name!r} (from {source}); "
        f"set project_name: {other} in the app definition so that it holds when no container runs"))


def _judge_running(containers: list[dict[str, str]], app: dict[str, t.Any]) -> LiveProject:
    """The project runs: from the project directory, and (its newest container) with the definition's files."""
    here = {app["project_dir"], os.path.realpath(app["project_dir"])}
    mine = [c for c in containers if c.get(LABEL_PROJECT) == app["project_name"]]
    dirs = sorted({str(c.get(LABEL_WORKING_DIR)) for c in mine if c.get(LABEL_WORKING_DIR)} - here)
    if dirs:
        return LiveProject("refuse", message=(
            f"app {app['name']}: Compose project {app['project_name']!r} runs from {dirs[0]}, not from "
            f"{app['project_dir']}; set project_dir: {dirs[0]} (or another project_name); nothing was changed"))
    used = _files_inside(mine[0], app) if mine else []  # the newest container says how the project was brought up last
    if used and used != _wanted_files(app):
        return LiveProject("refuse", message=_other_files(app, used))
    return LiveProject("agrees")


def _wanted_files(app: dict[str, t.Any]) -> list[str]:
    return [os.path.realpath(f) for f in app["compose_files"]]


def _files_inside(labels: dict[str, str], app: dict[str, t.Any]) -> list[str]:
    """The compose files a container was started with, inside the project directory.

    Files outside it are the collection's own (a switch's image override) and are not compared.
    """
    inside = os.path.realpath(app["project_dir"]) + os.sep
    used = [os.path.realpath(f) for f in (labels.get(LABEL_CONFIG_FILES) or "").split(",") if f]
    return [f for f in used if f.startswith(inside)]


def _other_files(app: dict[str, t.Any], used: list[str]) -> str:
    names = ", ".join(os.path.relpath(f, app["project_dir"]) for f in used)
    mine_names = ", ".join(os.path.relpath(f, app["project_dir"]) for f in _wanted_files(app))
    return (f"app {app['name']}: its containers were started with the compose files {names}, but the definition "
            f"reads {mine_names} (from {app.get('compose_files_from', 'compose_files')}); set compose_files: "
            f"[{names}] (or COMPOSE_FILE in the env file), or bring the app up once with the files you mean; "
            "nothing was changed")


def live_labels(client: t.Any) -> list[dict[str, str]]:
    """The labels of every Compose container on the host, newest first.

    One listing, without inspecting each: other projects' containers come and go meanwhile
    (a sparse listing carries the labels and the creation time).
    """
    listed = client.containers.list(all=True, sparse=True, filters={"label": LABEL_PROJECT})
    return [c.attrs.get("Labels") or {} for c in sorted(listed, key=lambda c: c.attrs.get("Created") or 0, reverse=True)]


def adopt_live_project(client: t.Any, app: dict[str, t.Any]) -> LiveProject:
    """Judge the live project; on ``adopt``, set ``project_name`` (and ``project_name_from: containers``) in ``app``
    itself, so that every later Compose call of the run (``docker compose -p``) drives that project.

    A refusal is returned, not raised.
    """
    verdict = judge_live_project(live_labels(client), app)
    if verdict.verdict == "adopt":
        app["project_name"], app["project_name_from"] = verdict.name, NAME_FROM_CONTAINERS
    return verdict


def check_live_project(client: t.Any, app: dict[str, t.Any]) -> LiveProject:
    """Stop when the app's containers say Compose ran another project than the definition resolves to.

    Containers carry what Compose used (project name, working directory, compose files); see
    :func:`judge_live_project`. A project name the containers settle is adopted into ``app``
    (:func:`adopt_live_project`).
    """
    verdict = adopt_live_project(client, app)
    if verdict.verdict == "refuse":
        raise OperatorError(str(verdict.message))
    return verdict


def one_shot_services(config: dict[str, t.Any], app: dict[str, t.Any]) -> set[str]:
    """Services that run to completion by design: declared in ``one_shot``, or awaited by another
    service with ``condition: service_completed_successfully`` (migrations, init jobs)."""
    names = set(app.get("one_shot") or [])
    for service in (config.get("services") or {}).values():
        depends = service.get("depends_on") or {}
        for dependency, how in (depends.items() if isinstance(depends, dict) else []):
            if isinstance(how, dict) and how.get("condition") == "service_completed_successfully":
                names.add(dependency)
    return names


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


def read_env_file(path: str) -> dict[str, str]:
    """Parse a Compose ``.env`` file by Compose's rules (see :func:`parse_env_text`)."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return parse_env_text(handle.read())


ENV_KEY = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*[=:]\s*")
ENV_REF = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
DQ_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "$": "\0"}


def parse_env_text(text: str, environ: t.Mapping[str, str] | None = None) -> dict[str, str]:
    """KEY=VALUE lines the way Compose reads an env file.

    ``export`` prefixes and ``KEY: value`` lines are accepted; a single-quoted value is literal;
    a double-quoted one may span lines and knows the escapes ``\\n \\r \\t \\\\ \\" \\$``;
    after a closing quote, and after whitespace plus ``#`` in an unquoted value, the rest of
    the line is a comment. ``${VAR}``, ``$VAR`` and ``${VAR:-default}`` in unquoted and
    double-quoted values expand from the keys above and then the environment. The
    integration suite checks these rules against Compose's own reading of the same file.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = ENV_KEY.match(line)
        if not match:
            continue
        key, rest = match.group(1), line[match.end():]
        if rest.startswith("'"):
            body, index = _quoted(rest[1:], "'", lines, index)
            values[key] = body
        elif rest.startswith('"'):
            body, index = _quoted(rest[1:], '"', lines, index)
            body = re.sub(r"\\(.)", lambda m: DQ_ESCAPES.get(m.group(1), "\\" + m.group(1)), body)
            values[key] = _expand(body, values, environ).replace("\0", "$")
        else:
            body = re.split(r"\s#", rest, maxsplit=1)[0].strip()
            values[key] = _expand(body, values, environ)
    return values


def _quoted(rest: str, quote: str, lines: list[str], index: int) -> tuple[str, int]:
    """The text up to the closing quote (a double quote may be escaped), continuing on the next lines."""
    pattern = re.compile(r"^((?:[^\\\"]|\\.)*)\"" if quote == '"' else r"^([^']*)'")
    text = rest
    while True:
        found = pattern.match(text)
        if found:
            return found.group(1), index
        if index >= len(lines):
            return text, index  # unterminated: Compose refuses the file, and so does 'docker compose config'
        text += "\n" + lines[index]
        index += 1


def _expand(value: str, known: dict[str, str], environ: t.Mapping[str, str]) -> str:
    def lookup(name: str) -> str | None:
        return known[name] if name in known else environ.get(name)

    def one(match: re.Match) -> str:
        name = match.group("braced") or match.group("bare")
        found, op, arg = lookup(name), match.group("op"), match.group("arg") or ""
        if op in (":-", ":?"):
            return found if found else (arg if op == ":-" else "")
        if op in ("-", "?"):
            return found if found is not None else (arg if op == "-" else "")
        if op == ":+":
            return arg if found else ""
        if op == "+":
            return arg if found is not None else ""
        return found or ""

    return ENV_REF.sub(one, value)


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
    if probe.get("command"):
        argv = list(probe["command"])
    else:
        engine = declared.get("engine", "postgres")
        database = probe.get("database") or declared.get("database")
        user = probe.get("user") or declared.get("user")
        if not database:
            raise OperatorError(f"app {app['name']}: schema_probe needs a database (set schema_probe.database or declare it "
                                "in databases), or a command")
        if engine == "sqlite":
            argv = ["sqlite3", declared.get("path") or database, probe["sql"]]
        else:
            argv = sql_argv(engine, database, user, probe["sql"])
    rc, out, err = exec_in_service(client, app, probe["service"], argv)
    if rc != 0:
        raise OperatorError(
            f"app {app['name']}: the schema probe failed in service {probe['service']} (rc {rc}): "
            f"{last_lines(err.decode(errors='replace'))}; check schema_probe (its sql and database, or its command)"
        )
    value = out.decode(errors="replace").strip().splitlines()
    return value[0].strip() if value else None
