# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The app definition every module takes (private to the collection).

One argument-spec factory, extended per module, so that the inventory contract
(``rollback_apps`` items) is validated identically everywhere. Documented by the
``selfhost.rollback.app`` doc fragment; keep the two in step.
"""

from __future__ import annotations

import os
import re
import typing as t

DEFAULT_STORE = "/var/lib/selfhost-rollback"
APP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


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
                "sql": {"type": "str", "required": True},
                "database": {"type": "str"},
                "user": {"type": "str"},
                "additive": {"type": "list", "elements": "str", "default": []},
            },
        },
        "version_locks": {"type": "list", "elements": "list", "default": []},
        "artifacts": {
            "type": "list",
            "elements": "dict",
            "default": [],
            "options": {
                "name": {"type": "str", "required": True},
                "path": {"type": "str"},
                "command": {"type": "list", "elements": "str"},
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


def validate_app(app: dict[str, t.Any]) -> dict[str, t.Any]:
    """Check what the argument spec cannot; return the app with defaults resolved."""
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
    resolved["project_name"] = app.get("project_name") or name
    files = app.get("compose_files") or [_default_compose_file(project_dir, name)]
    resolved["compose_files"] = [f if os.path.isabs(f) else os.path.join(project_dir, f) for f in files]
    for path in resolved["compose_files"]:
        if not os.path.isfile(path):
            raise AppError(f"app {name}: compose file {path} does not exist; check compose_files")
    env_file = app.get("env_file") or ".env"
    resolved["env_file"] = env_file if os.path.isabs(env_file) else os.path.join(project_dir, env_file)
    for key in ("health", "schema_probe"):
        resolved[key] = app.get(key) or None
    return resolved


def _default_compose_file(project_dir: str, name: str) -> str:
    for candidate in ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"):
        if os.path.isfile(os.path.join(project_dir, candidate)):
            return candidate
    raise AppError(
        f"app {name}: no compose.yaml, compose.yml, docker-compose.yaml or docker-compose.yml "
        f"in {project_dir}; set compose_files"
    )
