# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The app's databases: SQL client commands and the schema probe (private to the collection).
"""

from __future__ import annotations

import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._docker import exec_in_service
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError, last_lines


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
