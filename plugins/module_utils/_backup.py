# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup sets: capture, verification, restore and retention (private to the collection).

A set lives in ``<store>/<app>/backups/<set_id>/`` (0700): one archive per item (0600)
and ``manifest.json``, written last and atomically — its presence makes the set
complete. Verification runs are appended to ``verification.json`` in the same
directory so that the manifest never changes. With the restic backend the archives
are restic snapshots and the set directory holds the manifest and results only.

Callers hold the app's ledger lock; nothing here takes it, so a restore can run its
own verification without locking itself out.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _archive, _dumps, _guard
from ansible_collections.selfhost.rollback.plugins.module_utils._app import AppError
from ansible_collections.selfhost.rollback.plugins.module_utils._common import (
    Compose,
    DockerException,
    NotFound,
    OperatorError,
    docker_cli,
    iso,
    parse_iso,
    project_containers,
    schema_version,
    stamp,
    utcnow,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger, LedgerError, ensure_dir
from ansible_collections.selfhost.rollback.plugins.module_utils._restic import Restic, ResticError
from ansible_collections.selfhost.rollback.plugins.module_utils._storage import (
    SUFFIX,
    ArchiveSource,
    LocalSink,
    ResticSink,
    StorageError,
    pick_compression,
)

# What a backup, verification, restore or drill can fail with that is the operator's to act on:
# every one carries a sentence for the operator (the modules catch this tuple).
OPERATOR_FAILURES = (AppError, OperatorError, LedgerError, StorageError, ResticError, _archive.ArchiveError)

MANIFEST_FORMAT = 1
MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
SET_ID_RE = re.compile(r"^b-\d{8}T\d{6}Z-[0-9a-f]{4}$")
FILE_MODES = ("stop", "pause", "none")
ITEM_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------- sets on disk


def new_set_id(moment: datetime.datetime | None = None) -> str:
    return f"b-{stamp(moment)}-{secrets.token_hex(2)}"


def backups_dir(ledger: Ledger) -> str:
    return ledger.path("backups")


def set_dir(ledger: Ledger, set_id: str) -> str:
    if not SET_ID_RE.match(set_id or ""):
        raise OperatorError(f"app {ledger.app}: {set_id!r} is not a backup set id (b-YYYYMMDDTHHMMSSZ-xxxx)")
    return ledger.path("backups", set_id)


def list_sets(ledger: Ledger) -> list[dict[str, t.Any]]:
    """Complete sets, oldest first, each with its manifest and verification runs."""
    directory = backups_dir(ledger)
    if not os.path.isdir(directory):
        return []
    sets = []
    for name in sorted(os.listdir(directory)):
        if not SET_ID_RE.match(name):
            continue
        manifest = ledger.read(f"backups/{name}/{MANIFEST}")
        if manifest is None:
            continue
        runs = ledger.read(f"backups/{name}/{VERIFICATION}", default=[]) or []
        sets.append({"set_id": name, "manifest": manifest, "verification": runs})
    return sets


def partial_sets(ledger: Ledger) -> list[str]:
    directory = backups_dir(ledger)
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory)
                  if SET_ID_RE.match(name) and not os.path.exists(os.path.join(directory, name, MANIFEST)))


def last_verification(runs: list[dict[str, t.Any]]) -> dict[str, t.Any] | None:
    return runs[-1] if runs else None


def is_verified(entry: dict[str, t.Any]) -> bool:
    run = last_verification(entry.get("verification") or [])
    return bool(run and run.get("passed"))


def summarize(entry: dict[str, t.Any]) -> dict[str, t.Any]:
    manifest = entry["manifest"]
    run = last_verification(entry.get("verification") or [])
    return {
        "set_id": entry["set_id"],
        "created_at": manifest.get("created_at"),
        "release_id": manifest.get("release_id"),
        "schema_version": manifest.get("schema_version"),
        "backend": manifest.get("backend"),
        "bytes": sum(int(item.get("bytes") or 0) for item in manifest.get("items", [])),
        "items": [item["name"] for item in manifest.get("items", [])],
        "verified": bool(run and run.get("passed")),
        "last_verification": {k: run.get(k) for k in ("at", "kind", "passed")} if run else None,
    }


def item_view(item: dict[str, t.Any]) -> dict[str, t.Any]:
    """An item without its per-file map (for module results)."""
    view = {k: v for k, v in item.items() if k != "files"}
    if "files" in item:
        view["file_count"] = len(item["files"])
    return view


# --------------------------------------------------------------------------- sources


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


# --------------------------------------------------------------------------- quiescing


QUIESCED = "quiesced.json"


def _pause(container: t.Any, attempts: int = 4) -> None:
    """Pause a container; the cgroup freezer can fail to freeze a busy process on a first try."""
    for attempt in range(1, attempts + 1):
        try:
            container.pause()
            return
        except DockerException as exc:
            if attempt == attempts or "unable to freeze" not in str(exc):
                raise
            time.sleep(0.5 * attempt)


class Quiesce:
    """Pause or stop running containers and put every one of them back as it was, whatever happens.

    Each container is written to ``quiesced.json`` in the ledger before it is paused or stopped,
    and the record is removed once all are back. A run killed in between (kill -9, OOM) cannot
    put them back itself: the guard started before the first pause does (``_guard``), within
    seconds, and the next run would too (``resume_interrupted``).
    """

    def __init__(self, ledger: Ledger | None = None, purpose: str = "backup") -> None:
        self.ledger = ledger
        self.purpose = purpose
        self.since = iso(utcnow())
        self.guarded = False
        self.paused: list[t.Any] = []
        self.stopped: list[t.Any] = []
        self.actions: list[str] = []

    def _remember(self) -> None:
        if self.ledger is None:
            return
        containers = [{"id": c.id, "name": c.name, "mode": "pause"} for c in self.paused] + \
                     [{"id": c.id, "name": c.name, "mode": "stop"} for c in self.stopped]
        if containers:
            self.ledger.write(QUIESCED, {"owner": _guard.owner(), "purpose": self.purpose, "since": self.since,
                                         "containers": containers})
            if not self.guarded:
                _guard.start(self.ledger.path(QUIESCED), self.ledger.path("lock"), docker_cli(),
                             self.ledger.path(_guard.GUARD_RECORD))
                self.guarded = True
        elif self.ledger.exists(QUIESCED):
            os.unlink(self.ledger.path(QUIESCED))

    def apply(self, sources: list[Source], databases: bool) -> None:
        wanted: dict[str, tuple[t.Any, str]] = {}
        for source in sources:
            if source.kind == "database" or source.consistency == "none":
                continue
            for container in source.containers:
                is_db = any(s.kind == "database" and s.container is not None and s.container.id == container.id for s in sources)
                if is_db != databases:
                    continue
                previous = wanted.get(container.id, (container, "pause"))[1]
                mode = "stop" if "stop" in (previous, source.consistency) else "pause"
                wanted[container.id] = (container, mode)
        for container, mode in wanted.values():
            self.hold(container, mode)

    def hold(self, container: t.Any, mode: str) -> None:
        """Pause or stop one running container (recorded and guarded first); a held or stopped one is left alone."""
        if any(c.id == container.id for c in self.paused + self.stopped):
            return
        container.reload()
        if container.status != "running":
            return
        # recorded (and guarded) before acting, so a run killed right after still gets it back
        (self.stopped if mode == "stop" else self.paused).append(container)
        self._remember()
        if mode == "stop":
            container.stop()  # the container's own stop timeout (Compose sets it from stop_grace_period)
        else:
            _pause(container)
        self.actions.append(f"{mode} {container_service(container)}")

    def release(self, keep_stopped: bool = False) -> list[str]:
        """Put every container back; with ``keep_stopped``, stopped ones stay stopped (and recorded) for the caller."""
        problems = []
        for container in reversed(self.paused):
            try:
                container.reload()
                if container.status == "paused":
                    container.unpause()
                self.actions.append(f"unpause {container_service(container)}")
            except NotFound:  # removed since: nothing to put back
                pass
            except Exception as exc:  # keep going: every container must get its chance
                problems.append(f"could not unpause {container.name}: {exc}")
        self.paused = []
        if not keep_stopped:
            for container in reversed(self.stopped):
                try:
                    container.start()
                    self.actions.append(f"start {container_service(container)}")
                except NotFound:
                    pass
                except Exception as exc:
                    problems.append(f"could not start {container.name}: {exc}")
            self.stopped = []
        if not problems:
            self._remember()
        return problems


def resume_interrupted(ledger: Ledger, client: t.Any) -> list[str]:
    """Put back what an interrupted run left paused or stopped (see ``Quiesce``), and say what its guard did."""
    actions = []
    guarded = ledger.read(_guard.GUARD_RECORD, default=None)
    if isinstance(guarded, dict):
        done = ", ".join(f"{a.get('action')} {a.get('container')}" + ("" if a.get("ok") else f" (failed: {a.get('error')})")
                         for a in guarded.get("actions") or []) or "nothing left to put back"
        actions.append(f"the guard of an interrupted {guarded.get('purpose') or 'run'} (pid {guarded.get('run_pid')}) "
                       f"put its containers back at {guarded.get('at')}: {done}")
        os.unlink(ledger.path(_guard.GUARD_RECORD))
    record = ledger.read(QUIESCED, default=None) or {}
    entries = record.get("containers", []) if isinstance(record, dict) else record  # a list: written before the guard
    for entry in entries:
        try:
            container = client.containers.get(entry["id"])
        except Exception:  # removed since: nothing to put back
            continue
        if entry.get("mode") == "stop" and container.status in ("exited", "created"):
            container.start()
            actions.append(f"started {entry.get('name')} (stopped by an interrupted backup)")
        elif container.status == "paused":
            container.unpause()
            actions.append(f"unpaused {entry.get('name')} (paused by an interrupted backup)")
    if ledger.exists(QUIESCED):
        os.unlink(ledger.path(QUIESCED))
    return actions


# --------------------------------------------------------------------------- backup


def free_bytes(path: str) -> int:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def estimate_bytes(sources: list[Source]) -> int:
    total = 0
    for source in sources:
        if source.host_path:
            total += _archive.tree_size(source.host_path)
    return total


def database_size(source: Source, label: str) -> int:
    database = source.database
    if database.get("engine") != "postgres":
        return 0
    runner = _dumps.Exec(source.container.id, label)
    proc = runner.run(["psql", "-X", "-tA", "-U", database.get("user") or "postgres", "-d", database["database"],
                       "-c", "select pg_database_size(current_database())"], "measuring the database", check=False)
    if proc.returncode != 0:
        raise OperatorError(f"{label}: the database engine of service {source.service!r} is not reachable: "
                            f"{_dumps.last_lines(proc.stderr.decode(errors='replace'))}; check that it is running and "
                            "that app.databases names the right database and user")
    try:
        return int(proc.stdout.decode().strip() or 0)
    except ValueError:
        return 0


def current_release_id(ledger: Ledger) -> str | None:
    record = ledger.read("current_release.json")
    if isinstance(record, dict):
        return record.get("release_id")
    return None


class BackupOptions:
    def __init__(self, backend: str = "local", compression: str = "auto", compression_level: int | None = None,
                 consistency: dict[str, str] | None = None, space_check: bool = True,
                 restic: Restic | None = None, tags: list[str] | None = None) -> None:
        self.backend = backend
        self.compression = compression
        self.compression_level = compression_level
        self.consistency = dict(consistency or {})
        self.space_check = space_check
        self.restic = restic
        self.tags = list(tags or [])


def plan_backup(app: dict[str, t.Any], client: t.Any, options: BackupOptions) -> dict[str, t.Any]:
    """What a backup captures, and the schema version it is taken under (read now, while the app runs)."""
    config = Compose(app).config()
    sources, skipped = resolve_sources(app, client, config, options.consistency)
    warnings = []
    try:
        schema = schema_version(client, app)
    except OperatorError as exc:
        schema = None
        warnings.append(f"schema version not recorded: {exc}")
    return {"sources": sources, "skipped": skipped, "config": config, "schema": schema, "warnings": warnings}


def check_space(ledger: Ledger, sources: list[Source], label: str) -> dict[str, int]:
    needed = estimate_bytes(sources)
    for source in sources:
        if source.kind == "database":
            needed += database_size(source, label)
    free = free_bytes(ledger.path("backups"))
    if free < needed:
        raise OperatorError(f"{label}: not enough free space for a backup in {ledger.path('backups')}: "
                            f"{free} bytes free, about {needed} needed (uncompressed size); free space or use another store")
    return {"needed": needed, "free": free}


def run_backup(app: dict[str, t.Any], client: t.Any, ledger: Ledger, options: BackupOptions,
               plan: dict[str, t.Any] | None = None, resumed: list[str] | None = None,
               quiesce: Quiesce | None = None) -> dict[str, t.Any]:
    """Capture one set. The caller holds the app lock. Returns the manifest and what was done.

    A caller that passes ``plan`` made it after ``resume_interrupted`` (and passes its actions as
    ``resumed``); without a plan, containers an interrupted run left quiesced are put back first.
    A caller that passes ``quiesce`` (the cutover of a switch) has stopped writers in it already:
    they stay stopped, and recorded, after a successful capture; after a failed one they run again.
    """
    label = f"app {app['name']}"
    started = time.monotonic()
    created = utcnow()
    actions: list[str] = list(resumed or [])
    if plan is None:
        actions.extend(resume_interrupted(ledger, client))
        plan = plan_backup(app, client, options)
    sources: list[Source] = plan["sources"]
    for stale in partial_sets(ledger):
        shutil.rmtree(ledger.path("backups", stale), ignore_errors=True)
        actions.append(f"removed partial set {stale}")
    ledger.ensure("backups")
    space = check_space(ledger, sources, label) if options.space_check else {}
    compression = pick_compression(options.compression) if options.backend == "local" else "restic"
    set_id = new_set_id(created)
    directory = ensure_dir(set_dir(ledger, set_id))
    restic = options.restic
    if options.backend == "restic":
        if restic is None:
            raise OperatorError(f"{label}: the restic backend needs restic.repository and a password")
        restic.ensure_repository()
    keep_stopped = quiesce is not None
    quiesce = quiesce or Quiesce(ledger)
    items: list[dict[str, t.Any]] = []
    snapshots: list[str] = []
    warnings: list[str] = list(plan["warnings"])
    schema = plan["schema"]
    try:
        quiesce.apply(sources, databases=False)
        for source in sources:
            if source.kind == "database":
                items.append(_capture(source, directory, compression, options, set_id, app, label, snapshots))
        quiesce.apply(sources, databases=True)
        for source in sources:
            if source.kind != "database":
                items.append(_capture(source, directory, compression, options, set_id, app, label, snapshots))
    except BaseException:
        problems = quiesce.release()
        shutil.rmtree(directory, ignore_errors=True)
        if restic is not None and snapshots:
            with contextlib.suppress(Exception):
                restic.forget(snapshots)
        if problems:
            raise OperatorError(f"{label}: the backup failed and containers could not all be put back: {'; '.join(problems)}")
        raise
    problems = quiesce.release(keep_stopped=keep_stopped)
    actions.extend(quiesce.actions)
    if problems:
        shutil.rmtree(directory, ignore_errors=True)
        raise OperatorError(f"{label}: containers could not all be put back after the backup: {'; '.join(problems)}; "
                            "start them (docker compose up -d)")
    for item in items:
        warnings.extend(f"{item['name']}: {w['path']}: {w['reason']}" for w in item.get("skipped", []))
    finished = utcnow()
    manifest = {
        "format": MANIFEST_FORMAT,
        "set_id": set_id,
        "app": app["name"],
        "project_name": app["project_name"],
        "release_id": current_release_id(ledger),
        "schema_version": schema,
        "created_at": iso(created),
        "finished_at": iso(finished),
        "duration_s": round(time.monotonic() - started, 3),
        "backend": options.backend,
        "restic_repository": restic.repository if options.backend == "restic" and restic else None,
        "tags": options.tags,
        "items": items,
        "skipped": plan["skipped"],
        "warnings": warnings,
    }
    ledger.write(f"backups/{set_id}/{MANIFEST}", manifest)
    if restic is not None and options.backend == "restic":
        with contextlib.suppress(Exception):
            sink = ResticSink(restic, f"{set_id}-{MANIFEST}", ["selfhost-rollback", f"app={app['name']}", f"set={set_id}", "manifest"])
            sink.write(open(os.path.join(directory, MANIFEST), "rb").read())
            sink.close()
    actions.append(f"wrote set {set_id}")
    return {"manifest": manifest, "set_dir": directory, "actions": actions, "space": space, "warnings": warnings}


def _capture(source: Source, directory: str, compression: str, options: BackupOptions, set_id: str,
             app: dict[str, t.Any], label: str, snapshots: list[str]) -> dict[str, t.Any]:
    began = time.monotonic()
    archive = item_archive_name(source.kind, source.name if source.kind != "database" else source.name)
    if source.kind == "database":
        archive = f"database-{ITEM_NAME_RE.sub('_', source.name)}." + ("db" if source.database["engine"] == "sqlite" else "sql")
    if options.backend == "restic":
        sink: t.Any = ResticSink(options.restic, f"{set_id}-{archive}",
                                 ["selfhost-rollback", f"app={app['name']}", f"set={set_id}"])
    else:
        sink = LocalSink(os.path.join(directory, archive + SUFFIX[compression]), compression, options.compression_level)
    item: dict[str, t.Any] = {"kind": source.kind, "name": source.name, "consistency": source.consistency}
    try:
        if source.kind == "database":
            result = _dumps.dump_database(source.container.id, source.database, sink, label)
            item.update(service=source.service, engine=source.database["engine"], database=source.database["database"],
                        user=source.database.get("user"), path=source.database.get("path"),
                        image={"id": source.container.image.id, "ref": source.container.attrs["Config"].get("Image")},
                        tables=result["tables"], raw_bytes=result["raw_bytes"], format=result["format"])
        else:
            writer = _archive.TreeWriter(sink)
            writer.write_tree(source.host_path)
            item.update(files=writer.files, raw_bytes=writer.raw_bytes, format="tar-pax")
            if source.kind == "volume":
                item["volume"] = source.volume
                if source.databases:
                    item["databases"] = source.databases
            if writer.skipped:
                item["skipped"] = writer.skipped
        stored = sink.close()
    except BaseException:
        sink.abort()
        raise
    if stored.get("snapshot"):
        snapshots.append(stored["snapshot"])
    item.update(stored)
    item["duration_s"] = round(time.monotonic() - began, 3)
    return item


# --------------------------------------------------------------------------- verification


def load_set(ledger: Ledger, set_id: str | None) -> dict[str, t.Any]:
    """A complete set by id, or the newest complete set when ``set_id`` is None."""
    sets = list_sets(ledger)
    if set_id is None:
        if not sets:
            raise OperatorError(f"app {ledger.app}: there is no complete backup set in {ledger.path('backups')}; run selfhost.rollback.backup first")
        return sets[-1]
    set_dir(ledger, set_id)
    for entry in sets:
        if entry["set_id"] == set_id:
            return entry
    if os.path.isdir(ledger.path("backups", set_id)):
        raise OperatorError(f"app {ledger.app}: backup set {set_id} is partial (no manifest); it cannot be used")
    raise OperatorError(f"app {ledger.app}: there is no backup set {set_id} in {ledger.path('backups')}")


def _check(item: dict[str, t.Any], kind: str, began: float, failures: list[str]) -> dict[str, t.Any]:
    return {"item": item["name"], "kind": kind, "passed": not failures, "duration_s": round(time.monotonic() - began, 3),
            "failures": [f"{item['kind']} {item['name']}: {f}" for f in failures]}


def deep_check(directory: str, manifest: dict[str, t.Any], restic: Restic | None) -> list[dict[str, t.Any]]:
    """Every archive checksum and, for file data, every member and file checksum."""
    checks = []
    for item in manifest.get("items", []):
        began = time.monotonic()
        failures: list[str] = []
        try:
            source = ArchiveSource(directory, item, restic)
        except StorageError as exc:
            checks.append(_check(item, "checksum", began, [str(exc)]))
            continue
        try:
            if item["kind"] != "database":
                failures.extend(_archive.verify_stream(source.stream, item.get("files") or {}))
        finally:
            failures = source.finish() + failures
        checks.append(_check(item, "checksum", began, failures))
    return checks


def test_restore(directory: str, manifest: dict[str, t.Any], restic: Restic | None, client: t.Any,
                 scratch_root: str, label: str, timeout: float = 120) -> list[dict[str, t.Any]]:
    """Restore every item somewhere disposable and compare it with the manifest."""
    checks = []
    ensure_dir(scratch_root)
    for item in manifest.get("items", []):
        began = time.monotonic()
        failures: list[str] = []
        try:
            if item["kind"] == "database":
                failures = _test_restore_database(directory, item, restic, client, scratch_root, label, timeout)
            else:
                scratch = tempfile.mkdtemp(prefix="test-restore-", dir=scratch_root)
                try:
                    source = ArchiveSource(directory, item, restic)
                    try:
                        _archive.extract_stream(source.stream, scratch)
                    except _archive.ArchiveError as exc:
                        failures.append(str(exc))
                    finally:
                        failures = source.finish() + failures
                    if not failures:
                        failures = _archive.compare_trees(item.get("files") or {}, _archive.scan_tree(scratch))
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
        except (OperatorError, StorageError, OSError) as exc:
            failures.append(str(exc))
        checks.append(_check(item, "test_restore", began, failures))
    return checks


def _compare_counts(expected: dict[str, int], found: dict[str, int]) -> list[str]:
    problems = []
    for table in sorted(set(expected) | set(found)):
        if expected.get(table) != found.get(table):
            problems.append(f"table {table}: {found.get(table)} rows after restore, manifest says {expected.get(table)}")
    return problems


def _test_restore_database(directory: str, item: dict[str, t.Any], restic: Restic | None, client: t.Any,
                           scratch_root: str, label: str, timeout: float) -> list[str]:
    if item["engine"] == "sqlite":
        scratch = tempfile.mkdtemp(prefix="test-restore-", dir=scratch_root)
        try:
            source = ArchiveSource(directory, item, restic)
            path = os.path.join(scratch, "restored.db")
            with open(path, "wb") as handle:
                for block in iter(lambda: source.stream.read(_archive.CHUNK), b""):
                    handle.write(block)
            failures = source.finish()
            if failures:
                return failures
            tables, integrity = _dumps.sqlite_counts_on_host(path)
            problems = [] if integrity == "ok" else [f"integrity_check says {integrity}"]
            return problems + _compare_counts(item.get("tables") or {}, tables)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    image = (item.get("image") or {}).get("id") or (item.get("image") or {}).get("ref")
    if not image:
        return ["no database image recorded for a test restore"]
    user = item.get("user") or ("postgres" if item["engine"] == "postgres" else "root")
    throwaway_password = secrets.token_hex(16)
    if item["engine"] == "postgres":
        environment = {"POSTGRES_USER": user, "POSTGRES_DB": item["database"], "POSTGRES_PASSWORD": throwaway_password}
    else:
        environment = {"MYSQL_ALLOW_EMPTY_PASSWORD": "yes", "MARIADB_ALLOW_EMPTY_ROOT_PASSWORD": "yes",
                       "MYSQL_DATABASE": item["database"]}
    container = client.containers.run(image, detach=True, environment=environment, network_mode="none",
                                      labels={"selfhost.rollback.role": "test-restore"},
                                      name=f"selfhost-test-restore-{secrets.token_hex(4)}")
    try:
        _dumps.wait_ready(container.id, item, f"{label} (test restore of {item['name']})", timeout=timeout)
        source = ArchiveSource(directory, item, restic)
        try:
            _dumps.restore_database(container.id, item, source.stream, f"{label} (test restore)", recreate=False)
        except OperatorError as exc:
            return source.finish() + [str(exc)]
        failures = source.finish()
        if failures:
            return failures
        found = _dumps.count_rows(container.id, item, f"{label} (test restore)")
        return _compare_counts(item.get("tables") or {}, found)
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True, v=True)


def record_verification(ledger: Ledger, set_id: str, kind: str, checks: list[dict[str, t.Any]],
                        started_at: str, duration: float) -> dict[str, t.Any]:
    failures = [f for check in checks for f in check["failures"]]
    run = {"at": started_at, "kind": kind, "passed": not failures, "checks": checks,
           "duration_s": round(duration, 3), "failures": failures}
    runs = ledger.read(f"backups/{set_id}/{VERIFICATION}", default=[]) or []
    runs.append(run)
    ledger.write(f"backups/{set_id}/{VERIFICATION}", runs)
    return run


def verify_set(ledger: Ledger, entry: dict[str, t.Any], kinds: list[str], client: t.Any, restic: Restic | None,
               record: bool = True, timeout: float = 120) -> list[dict[str, t.Any]]:
    directory = ledger.path("backups", entry["set_id"])
    manifest = entry["manifest"]
    label = f"app {ledger.app}"
    runs = []
    for kind in kinds:
        began = time.monotonic()
        at = iso()
        if kind == "deep":
            checks = deep_check(directory, manifest, restic)
        else:
            checks = test_restore(directory, manifest, restic, client, ledger.path("scratch"), label, timeout)
        duration = time.monotonic() - began
        if record:
            run = record_verification(ledger, entry["set_id"], kind, checks, at, duration)
        else:
            failures = [f for check in checks for f in check["failures"]]
            run = {"at": at, "kind": kind, "passed": not failures, "checks": checks,
                   "duration_s": round(duration, 3), "failures": failures}
        runs.append(run)
    return runs


# --------------------------------------------------------------------------- retention


def parse_duration(text: str) -> datetime.timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not match:
        raise OperatorError(f"keep_within {text!r} is not a duration like 36h, 7d or 4w")
    value, unit = int(match.group(1)), match.group(2)
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    return datetime.timedelta(seconds=value * seconds)


def prune_plan(sets: list[dict[str, t.Any]], releases: set[str], keep_last: int | None,
               keep_within: datetime.timedelta | None, now: datetime.datetime,
               pinned: set[str] | None = None) -> dict[str, t.Any]:
    """Which sets to keep and why; everything else goes. ``sets`` is oldest first.

    Never removed: the newest verified set, and for every retained release the newest
    set taken under it (verified preferred), plus sets named by a release record.
    """
    reasons: dict[str, list[str]] = {entry["set_id"]: [] for entry in sets}
    newest_first = list(reversed(sets))
    if keep_last:
        for entry in newest_first[:keep_last]:
            reasons[entry["set_id"]].append(f"among the last {keep_last}")
    if keep_within is not None:
        for entry in sets:
            created = parse_iso(entry["manifest"]["created_at"])
            if now - created <= keep_within:
                reasons[entry["set_id"]].append("within keep_within")
    verified = [e for e in newest_first if is_verified(e)]
    if verified:
        reasons[verified[0]["set_id"]].append("newest verified set")
    for release in sorted(releases):
        under = [e for e in newest_first if e["manifest"].get("release_id") == release]
        if under:
            chosen = next((e for e in under if is_verified(e)), under[0])
            reasons[chosen["set_id"]].append(f"needed by retained release {release}")
    for set_id in sorted(pinned or ()):
        if set_id in reasons:
            reasons[set_id].append("named by a release record")
    keep = [{"set_id": s, "reasons": r} for s, r in reasons.items() if r]
    remove = [s for s, r in reasons.items() if not r]
    return {"keep": keep, "remove": remove}


def retained_releases(ledger: Ledger) -> tuple[set[str], set[str]]:
    """Release ids that still have a record, and set ids any release record names."""
    releases, pinned = set(), set()
    for name in ledger.list("releases"):
        record = ledger.read(f"releases/{name}") or {}
        releases.add(record.get("release_id") or name[:-len(".json")])
        for key in ("backup_set", "backup_sets"):
            value = record.get(key)
            for set_id in ([value] if isinstance(value, str) else value or []):
                pinned.add(set_id)
    current = current_release_id(ledger)
    if current:
        releases.add(current)
    return releases, pinned


# --------------------------------------------------------------------------- fingerprints (restore idempotence)


def tree_fingerprint(path: str) -> str:
    digest = hashlib.sha256()
    for directory, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(dirs + names):
            full = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                st = os.lstat(full)
                fields = (os.path.relpath(full, path), st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
                line = "%s\0%o\0%d\0%d\0%d\0%d\n" % fields
                digest.update(line.encode(errors="surrogateescape"))
    return "sha256:" + digest.hexdigest()


PG_ACTIVITY = ("SELECT format('%I.%I', schemaname, relname) || chr(9) || (n_tup_ins + n_tup_upd + n_tup_del + n_live_tup) "
               "FROM pg_stat_user_tables ORDER BY 1")


def database_fingerprint(container_id: str, database: dict[str, t.Any], label: str, host_path: str | None) -> str | None:
    """A value that changes whenever the database is written (None when it cannot be told)."""
    if database["engine"] == "postgres":
        runner = _dumps.Exec(container_id, label)
        proc = runner.run(["psql", "-X", "-tA", "-U", database.get("user") or "postgres", "-d", database["database"],
                           "-c", PG_ACTIVITY], "reading table statistics", check=False)
        if proc.returncode != 0:
            return None
        return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()
    if database["engine"] == "sqlite" and host_path and os.path.exists(host_path):
        parts = []
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                st = os.stat(host_path + suffix)
                parts.append(f"{suffix}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
        return "|".join(parts)
    return None


# --------------------------------------------------------------------------- module glue


def restic_option_spec() -> dict[str, t.Any]:
    """The ``restic`` option shared by the backup modules."""
    return {
        "type": "dict",
        "options": {
            "repository": {"type": "str", "required": True},
            "password": {"type": "str", "no_log": True},
            "password_file": {"type": "path", "no_log": False},
            "env": {"type": "dict", "default": {}, "no_log": True},
        },
    }


def restic_from_params(params: dict[str, t.Any] | None) -> Restic | None:
    if not params:
        return None
    return Restic(params["repository"], password=params.get("password"), password_file=params.get("password_file"),
                  extra_env={str(k): str(v) for k, v in (params.get("env") or {}).items()})
