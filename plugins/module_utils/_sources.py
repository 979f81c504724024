# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a backup captures: the app's named volumes, bind paths and databases (private to the collection).

Every source is resolved from the Compose project's configuration and the engine before
anything changes, and unknown names fail there. A file source names the containers that
write it (quiesced while it is read, see ``_quiesce``); a database source names the
running container of its service, where its engine dumps it (``_dumps``). An SQLite file
that lies in a captured volume is captured with that volume, once.
"""

from __future__ import annotations

import os
import re
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _dumps
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import project_containers
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError

FILE_MODES = ("stop", "pause", "none")
ITEM_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


class Source:
    """One thing to capture: a named volume, a bind path or a database."""

    def __init__(self, kind: str, name: str, consistency: str) -> None:
        self.kind = kind
        self.name = name
        self.consistency = consistency
        self.host_path: str | None = None
        self.volume: str | None = None
        self.containers: list[t.Any] = []
        self.database: dict[str, t.Any] = {}
        self.container: t.Any = None
        self.service: str | None = None
        self.databases: list[dict[str, str]] = []  # embedded databases this volume holds (captured with it)

    def describe(self) -> dict[str, t.Any]:
        out: dict[str, t.Any] = {"kind": self.kind, "name": self.name, "consistency": self.consistency}
        if self.kind == "database":
            out.update(service=self.service, engine=self.database.get("engine"), database=self.database.get("database"))
        else:
            out["quiesce"] = sorted(container_service(c) for c in self.containers) if self.consistency != "none" else []
            if self.databases:
                out["databases"] = [d["name"] for d in self.databases]
        return out


def container_service(container: t.Any) -> str:
    return container.labels.get("com.docker.compose.service", container.name)


def item_archive_name(kind: str, name: str) -> str:
    return f"{kind}-{ITEM_NAME_RE.sub('_', name)}.tar"


def compose_volumes(config: dict[str, t.Any]) -> dict[str, str]:
    """Compose volume key -> Docker volume name."""
    return {key: (spec or {}).get("name") or key for key, spec in (config.get("volumes") or {}).items()}


def resolve_sources(app: dict[str, t.Any], client: t.Any, config: dict[str, t.Any],
                    consistency: dict[str, str]) -> tuple[list[Source], list[dict[str, str]]]:
    """What a backup of ``app`` captures; unknown names fail here, before anything changes."""
    name = app["name"]
    services = config.get("services") or {}
    volumes = compose_volumes(config)
    containers = project_containers(client, app["project_name"])
    running = [c for c in containers if c.status == "running"]
    skipped: list[dict[str, str]] = []
    sources: list[Source] = []

    db_services = set()  # services that run a database server, whose data directory its dump captures
    for database in app.get("databases") or []:
        service = database["service"]
        if service not in services:
            raise OperatorError(f"app {name}: database service {service!r} is not a service of the compose project "
                                f"(services: {', '.join(sorted(services)) or 'none'}); fix app.databases")
        if database["engine"] != "sqlite":
            db_services.add(service)
        source = Source("database", f"{service}-{database['database']}", "dump")
        source.database = database
        source.service = service
        sources.append(source)

    wanted = app.get("volumes")
    if wanted is None:
        wanted = sorted(volumes)
    for key in wanted:
        if key not in volumes:
            raise OperatorError(f"app {name}: volume {key!r} is not a named volume of the compose project "
                                f"(volumes: {', '.join(sorted(volumes)) or 'none'}); fix app.volumes")
        users = [c for c in containers
                 if any(m.get("Type") == "volume" and m.get("Name") == volumes[key] for m in c.attrs.get("Mounts") or [])]
        mode = consistency.get(key)
        if mode is None and any(container_service(c) in db_services for c in users):
            skipped.append({"kind": "volume", "name": key,
                            "reason": "mounted by a database service and captured by its dump; set consistency for it "
                                      "to stop or pause to capture the files too"})
            continue
        source = Source("volume", key, mode or "pause")
        source.volume = volumes[key]
        try:
            source.host_path = client.volumes.get(volumes[key]).attrs["Mountpoint"]
        except Exception as exc:  # docker.errors.NotFound and API errors alike
            raise OperatorError(f"app {name}: volume {volumes[key]} does not exist ({exc}); "
                                "start the app once (docker compose up -d) or remove it from app.volumes") from exc
        source.containers = [c for c in users if c.status == "running"]
        sources.append(source)

    for rel in app.get("paths") or []:
        path = rel if os.path.isabs(rel) else os.path.join(app["project_dir"], rel)
        path = os.path.realpath(path)
        if not os.path.isdir(path):
            raise OperatorError(f"app {name}: path {rel!r} ({path}) is not a directory; fix app.paths")
        source = Source("path", rel, consistency.get(rel) or "pause")
        source.host_path = path
        source.containers = [c for c in running if any(
            m.get("Type") == "bind" and _overlaps(m.get("Source", ""), path) for m in c.attrs.get("Mounts") or [])]
        sources.append(source)

    sources = _embedded_in_volumes(app, sources, running, consistency, skipped)
    for source in sources:
        if source.kind == "database":
            source.container = _running_service_container(app, running, source.service)
        elif source.consistency not in FILE_MODES:
            raise OperatorError(f"app {name}: consistency {source.consistency!r} for {source.name} is not one of "
                                f"{', '.join(FILE_MODES)}")
    unknown = set(consistency) - {s.name for s in sources} - {s.service for s in sources if s.service} - set(volumes)
    unknown -= set(app.get("paths") or [])
    if unknown:
        raise OperatorError(f"app {name}: consistency names unknown sources: {', '.join(sorted(unknown))}")
    return sources, skipped


def _holds_more_than(root: str, database: str) -> bool:
    """Whether a volume holds files besides the SQLite database at ``database`` (relative) and its journals."""
    own = {os.path.normpath(database + suffix) for suffix in ("", "-wal", "-shm", "-journal")}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if os.path.normpath(os.path.relpath(os.path.join(directory, name), root)) not in own:
                return True
    return False


def _embedded_in_volumes(app: dict[str, t.Any], sources: list[Source], running: list[t.Any],
                         consistency: dict[str, str], skipped: list[dict[str, str]]) -> list[Source]:
    """An SQLite file that lies in a captured volume is captured with that volume, once.

    Its index files, uploads or models sit beside it and must come back from the same moment,
    so the file is read with the volume while the volume's writers are quiesced (a paused or
    stopped writer leaves the file and its WAL consistent on disk) and restored with it; a
    separate online backup would write it twice on restore. A volume that holds nothing but
    the database (and its journals) is left to the online backup, which needs no pause,
    unless ``consistency`` names it.
    """
    volumes = [s for s in sources if s.kind == "volume" and s.host_path]
    absorbed: list[Source] = []  # databases captured by their volume, and volumes left to their database's backup
    for source in sources:
        if source.kind != "database" or source.database.get("engine") != "sqlite":
            continue
        container = next((c for c in running if container_service(c) == source.service), None)
        path = _dumps.sqlite_path(source.database)
        host = _dumps.host_path_in_container(container.attrs, path) if container is not None else None
        holder = next((v for v in volumes if host and host.startswith(v.host_path.rstrip("/") + "/")), None)
        if holder is None or holder in absorbed:
            continue
        if not _holds_more_than(holder.host_path, os.path.relpath(host, holder.host_path)) and holder.name not in consistency:
            # nothing but the database in it: the online backup alone, with no pause, as for any SQLite file
            absorbed.append(holder)
            skipped.append({"kind": "volume", "name": holder.name,
                            "reason": f"holds only the SQLite database {path}, captured by its online backup; set "
                                      "consistency for it to capture the files too"})
            continue
        if holder.consistency == "none":
            raise OperatorError(f"app {app['name']}: the SQLite database {path} lies in volume {holder.name}, whose consistency "
                                "is none; a live copy of a database file is not consistent, so set consistency for "
                                f"{holder.name} to pause or stop")
        holder.databases.append({"name": source.name, "path": path, "service": source.service})
        absorbed.append(source)
    return [s for s in sources if s not in absorbed]


def _overlaps(mount_source: str, path: str) -> bool:
    mount_source = mount_source.rstrip("/")
    return mount_source == path or mount_source.startswith(path + "/") or path.startswith(mount_source + "/")


def _running_service_container(app: dict[str, t.Any], running: list[t.Any], service: str) -> t.Any:
    matches = sorted((c for c in running if container_service(c) == service), key=lambda c: c.name)
    if not matches:
        raise OperatorError(f"app {app['name']}: the database engine of service {service!r} is not reachable: "
                            "its container is not running; start it (docker compose up -d) and run the backup again")
    return matches[0]
