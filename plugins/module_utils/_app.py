# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The app definition every module takes (private to the collection).

One argument-spec factory, extended per module, so that the inventory contract
(``rollback_apps`` items) is validated identically everywhere. Documented by the
``selfhost.rollback.app`` doc fragment; keep the two in step.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._compose import NAME_FROM_DIRECTORY, NAME_FROM_FILE
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import docker_cli
from ansible_collections.selfhost.rollback.plugins.module_utils._project import read_env_file

DEFAULT_STORE = "/var/lib/selfhost-rollback"
APP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# what 'docker compose' reads in a directory when it is given no -f (Compose 2.x, in this order)
DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
OVERRIDE_FILES = ("compose.override.yml", "compose.override.yaml", "docker-compose.override.yml", "docker-compose.override.yaml")
PINS_FILE = "pins.yaml"
TOP_LEVEL_NAME = re.compile(r"^name\s*:", re.MULTILINE)


# a request that must get a known answer (see the app option ``smoke``, also the drill's own ``smoke``)
SMOKE_OPTIONS: dict[str, t.Any] = {
    "path": {"type": "str", "required": True},
    "method": {"type": "str", "default": "GET"},
    "body": {"type": "str"},
    "content_type": {"type": "str"},
    "status": {"type": "int", "default": 200},
    "contains": {"type": "str"},
    "matches": {"type": "str"},
    "json": {"type": "dict"},
    "timeout": {"type": "float", "default": 5},
}

# a number the app's health is judged by beyond HTTP status (see the app option ``signals``)
SIGNAL_OPTIONS: dict[str, t.Any] = {
    "name": {"type": "str", "required": True},
    "path": {"type": "str"},
    "method": {"type": "str", "default": "GET"},
    "body": {"type": "str"},
    "content_type": {"type": "str"},
    "service": {"type": "str"},
    "command": {"type": "list", "elements": "str"},
    "json": {"type": "str"},
    "samples": {"type": "int", "default": 1},
    "min": {"type": "float"},
    "max": {"type": "float"},
    "min_ratio": {"type": "float"},
    "max_ratio": {"type": "float"},
    "timeout": {"type": "float", "default": 10},
}


def app_option_spec() -> dict[str, t.Any]:
    """Suboptions of the ``app`` option."""
    return {
        "name": {"type": "str", "required": True},
        "project_dir": {"type": "path", "required": True},
        "project_name": {"type": "str"},
        "compose_files": {"type": "list", "elements": "str"},
        "env_file": {"type": "str", "default": ".env"},
        "health": {
            "type": "dict",
            "options": {
                "url": {"type": "str"},
                "urls": {"type": "list", "elements": "str", "default": []},
                "timeout": {"type": "float", "default": 3.0},
            },
        },
        "smoke": {"type": "list", "elements": "dict", "default": [], "options": SMOKE_OPTIONS},
        "signals": {"type": "list", "elements": "dict", "default": [], "options": SIGNAL_OPTIONS},
        "databases": {
            "type": "list",
            "elements": "dict",
            "default": [],
            "options": {
                "service": {"type": "str", "required": True},
                "engine": {"type": "str", "required": True, "choices": ["postgres", "mysql", "mariadb", "sqlite"]},
                "database": {"type": "str", "required": True},
                "user": {"type": "str"},
                "path": {"type": "str"},
            },
        },
        "volumes": {"type": "list", "elements": "str"},
        "paths": {"type": "list", "elements": "str", "default": []},
        "schema_probe": {
            "type": "dict",
            "options": {
                "service": {"type": "str", "required": True},
                "sql": {"type": "str"},
                "command": {"type": "list", "elements": "str"},
                "database": {"type": "str"},
                "user": {"type": "str"},
                "additive": {"type": "list", "elements": "str", "default": []},
            },
        },
        "version_locks": {"type": "list", "elements": "list", "default": []},
        "one_shot": {"type": "list", "elements": "str", "default": []},
        "consistency": {"type": "dict", "default": {}},
        "pins": {"type": "str", "default": "compose_files", "choices": ["compose_files", "own_file"]},
        "artifacts": {
            "type": "list",
            "elements": "dict",
            "default": [],
            "options": {
                "name": {"type": "str", "required": True},
                "path": {"type": "str"},
                "command": {"type": "list", "elements": "str"},
                "keep": {"type": "bool", "default": True},
                "restart": {"type": "list", "elements": "str", "default": []},
            },
        },
    }


def app_argument_spec(**extra: dict[str, t.Any]) -> dict[str, t.Any]:
    """Argument spec with ``app`` and ``store``, plus the module's own options."""
    spec: dict[str, t.Any] = {
        "app": {"type": "dict", "required": True, "options": app_option_spec()},
        "store": {"type": "path", "default": DEFAULT_STORE},
    }
    spec.update(extra)
    return spec


class AppError(Exception):
    """An app definition that cannot be used; the message is for the operator."""


def validate_app(app: dict[str, t.Any], store: str | None = None) -> dict[str, t.Any]:
    """Check what the argument spec cannot; return the app with defaults resolved.

    ``pins_file`` is the collection's own images file (``<store>/<app>/pins.yaml``), which every
    Compose call adds after the project's own files: with ``pins: own_file`` (a ``store`` given)
    it holds every digest pin; with ``pins: compose_files`` it is used while it exists, that is
    while a partial rollback holds a service back in it (``_partial``). None otherwise. A
    ``COMPOSE_FILE`` that names it (as the partial rollback's plan suggests) does not make it one of
    the project's ``compose_files``.
    """
    name = app["name"]
    if not APP_NAME_RE.match(name):
        raise AppError(
            f"app name {name!r} is not usable: use lower-case letters, digits, '-' and '_' "
            "(it names the ledger directory and the Compose project)"
        )
    project_dir = app["project_dir"]
    if not os.path.isdir(project_dir):
        raise AppError(
            f"app {name}: project_dir {project_dir} does not exist or is not a directory; "
            "set project_dir to the directory that holds the compose file"
        )
    resolved = dict(app)
    env_file = app.get("env_file") or ".env"
    resolved["env_file"] = env_file if os.path.isabs(env_file) else os.path.join(project_dir, env_file)
    compose_env = compose_variables(resolved["env_file"])
    files, resolved["compose_files_from"] = compose_file_list(app, compose_env)
    own = (app.get("pins") or "compose_files") == "own_file"
    pins = os.path.join(store, name, PINS_FILE) if store else None
    resolved["pins"] = "own_file" if own else "compose_files"
    resolved["compose_files"] = [f if os.path.isabs(f) else os.path.join(project_dir, f) for f in files]
    resolved["compose_files"] = [f for f in resolved["compose_files"] if not pins or os.path.realpath(f) != os.path.realpath(pins)]
    for path in resolved["compose_files"]:
        if not os.path.isfile(path):
            raise AppError(f"app {name}: compose file {path} does not exist (named by {resolved['compose_files_from']}); "
                           "check compose_files or COMPOSE_FILE")
    resolved["project_name"], resolved["project_name_from"] = project_name_of(app, compose_env, resolved["compose_files"])
    for key in ("health", "schema_probe"):
        resolved[key] = app.get(key) or None
    probe = resolved["schema_probe"]
    if probe and bool(probe.get("sql")) == bool(probe.get("command")):
        raise AppError(f"app {name}: schema_probe needs exactly one of sql (a query, for postgres, mysql, mariadb or sqlite) "
                       "or command (run in the service; its first line of output is the schema version)")
    resolved["consistency"] = {str(k): str(v) for k, v in (app.get("consistency") or {}).items()}
    for key, mode in resolved["consistency"].items():
        if mode not in ("stop", "pause", "none"):
            raise AppError(f"app {name}: consistency {mode!r} for {key} is not one of stop, pause, none")
    resolved["one_shot"] = list(app.get("one_shot") or [])
    resolved["smoke"] = list(app.get("smoke") or [])
    for spec in resolved["smoke"]:
        if spec.get("matches"):
            try:
                re.compile(spec["matches"])
            except re.error as exc:
                raise AppError(f"app {name}: smoke request {spec.get('path')}: matches {spec['matches']!r} is not a regular "
                               f"expression ({exc}); fix app.smoke") from exc
    resolved["signals"] = validate_signals(name, app.get("signals") or [])
    resolved["pins_file"] = pins if pins and (own or os.path.isfile(pins)) else None
    resolved["extra_files"] = []  # the collection's own overrides for one call (a switch's image override)
    return resolved


def validate_signals(name: str, signals: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """Each signal reads one number from one place and has at least one limit; names are unique."""
    seen = set()
    for spec in signals:
        label = f"app {name}: signal {spec.get('name')!r}"
        if spec.get("name") in seen:
            raise AppError(f"{label} is declared twice; give each of app.signals its own name")
        seen.add(spec.get("name"))
        if bool(spec.get("path")) == bool(spec.get("command")):
            raise AppError(f"{label} needs exactly one of path (a request to the app, its answer read as JSON) or command "
                           "(run in service, its output read as a number); fix app.signals")
        if spec.get("command") and not spec.get("service"):
            raise AppError(f"{label} runs a command but names no service to run it in; set app.signals[].service")
        if all(spec.get(k) is None for k in ("min", "max", "min_ratio", "max_ratio")):
            raise AppError(f"{label} has no limit: set min, max, min_ratio or max_ratio (the ratios compare with the "
                           "baseline)")
        if int(spec.get("samples") or 1) < 1:
            raise AppError(f"{label}: samples must be at least 1")
    return [dict(spec) for spec in signals]


def compose_variables(env_file: str, env_values: dict[str, str] | None = None) -> dict[str, str]:
    """Compose's own settings (COMPOSE_FILE, COMPOSE_PROJECT_NAME...): the environment first, then the env file
    (or ``env_values``, the env file as it is about to be written)."""
    values = {k: v for k, v in (read_env_file(env_file) if env_values is None else env_values).items() if k.startswith("COMPOSE_")}
    values.update({k: v for k, v in os.environ.items() if k.startswith("COMPOSE_")})
    return values


def compose_file_list(app: dict[str, t.Any], compose_env: dict[str, str]) -> tuple[list[str], str]:
    """The files Compose reads in the project directory, and where that list comes from.

    The inventory's ``compose_files`` first; else ``COMPOSE_FILE``; else the first default file
    name found plus the first default override file name found, as ``docker compose`` does when
    it is given no ``-f``.
    """
    if app.get("compose_files"):
        return list(app["compose_files"]), "compose_files"
    if compose_env.get("COMPOSE_FILE"):
        separator = compose_env.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
        return [f for f in compose_env["COMPOSE_FILE"].split(separator) if f], "COMPOSE_FILE"
    project_dir = app["project_dir"]
    found = [f for f in DEFAULT_FILES if os.path.isfile(os.path.join(project_dir, f))][:1]
    if not found:
        raise AppError(
            f"app {app['name']}: no compose.yaml, compose.yml, docker-compose.yml or docker-compose.yaml "
            f"in {project_dir}; set compose_files"
        )
    found += [f for f in OVERRIDE_FILES if os.path.isfile(os.path.join(project_dir, f))][:1]
    return found, "the default file names"


def project_name_of(app: dict[str, t.Any], compose_env: dict[str, str], files: list[str]) -> tuple[str, str]:
    """The Compose project name and where it comes from, by Compose's order of precedence.

    A name from the last two (the compose file's ``name:``, the directory's name) gives way to the
    one the running containers carry (``_compose.judge_live_project``): only they know a ``-p``.
    """
    if app.get("project_name"):
        return app["project_name"], "project_name"
    if compose_env.get("COMPOSE_PROJECT_NAME"):
        return compose_env["COMPOSE_PROJECT_NAME"], "COMPOSE_PROJECT_NAME"
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as handle:
            if TOP_LEVEL_NAME.search(handle.read()):
                return _name_from_compose(app, files), NAME_FROM_FILE
    return normalize_project_name(os.path.basename(os.path.normpath(app["project_dir"]))), NAME_FROM_DIRECTORY


def normalize_project_name(value: str) -> str:
    """Compose's normalisation: lower case, only [a-z0-9_-], no leading '_' or '-'."""
    return "".join(re.findall(r"[a-z0-9_-]", value.lower())).lstrip("_-")


def _name_from_compose(app: dict[str, t.Any], files: list[str]) -> str:
    """A top-level ``name:`` may be interpolated and overridden by a later file: Compose says what it is."""
    argv = [docker_cli(), "compose", "--project-directory", app["project_dir"]]
    for path in files:
        argv += ["-f", path]
    proc = subprocess.run(argv + ["config", "--format", "json"], capture_output=True, text=True, check=False, timeout=60)
    try:
        return str(json.loads(proc.stdout)["name"])
    except (ValueError, KeyError) as exc:
        raise AppError(f"app {app['name']}: 'docker compose config' could not read the project's name "
                       f"({(proc.stderr or '').strip()[-300:] or exc}); set project_name") from exc
