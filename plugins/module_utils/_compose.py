# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compose through its CLI, and which project runs (private to the collection).

``docker compose`` always runs with an explicit project directory, project name, files and env
file, and never with a secret on the command line. Which project the running containers belong
to is judged here too (a project started with ``-p`` is known only to its containers).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._docker import docker_cli
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError, last_lines


ENV_UNSET = "__selfhost_rollback_unset__"


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
