# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Taking a backup set: plan, space check, capture of every item, manifest (private to the collection).

The plan (``_sources``) is read while the app runs. Databases are dumped while their
containers run and the other writers of file data are held (``_quiesce``); then the
database containers that write file data are held too and the file data is read. The
manifest is written last (``_sets``); a failed capture removes its partial set and puts
every container back. The caller holds the app's ledger lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _archive, _dumps, _release, _tree
from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso, utcnow
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import Compose
from ansible_collections.selfhost.rollback.plugins.module_utils._database import schema_version
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger, ensure_dir
from ansible_collections.selfhost.rollback.plugins.module_utils._quiesce import Quiesce, resume_interrupted
from ansible_collections.selfhost.rollback.plugins.module_utils._restic import Restic
from ansible_collections.selfhost.rollback.plugins.module_utils._sets import (
    MANIFEST,
    MANIFEST_FORMAT,
    new_set_id,
    partial_sets,
    set_dir,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._sources import ITEM_NAME_RE, Source, item_archive_name, resolve_sources
from ansible_collections.selfhost.rollback.plugins.module_utils._storage import SUFFIX, LocalSink, ResticSink, pick_compression


def free_bytes(path: str) -> int:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def estimate_bytes(sources: list[Source]) -> int:
    total = 0
    for source in sources:
        if source.host_path:
            total += _tree.tree_size(source.host_path)
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
    warnings: list[str] = list(plan["warnings"])
    schema = plan["schema"]
    items = _capture_quiesced(sources, quiesce, directory, compression, options, set_id, app)
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
        "release_id": _release.current_release_id(ledger),
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
        _manifest_offsite(restic, set_id, app, directory)
    actions.append(f"wrote set {set_id}")
    return {"manifest": manifest, "set_dir": directory, "actions": actions, "space": space, "warnings": warnings}


def _capture_quiesced(sources: list[Source], quiesce: Quiesce, directory: str, compression: str, options: BackupOptions,
                      set_id: str, app: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """Dump the databases with only their writers stopped, then the files with every writer stopped.

    On any failure the containers run again, the partial set is removed and its snapshots forgotten.
    """
    label = f"app {app['name']}"
    items: list[dict[str, t.Any]] = []
    snapshots: list[str] = []
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
        if options.restic is not None and snapshots:
            with contextlib.suppress(Exception):
                options.restic.forget(snapshots)
        if problems:
            raise OperatorError(f"{label}: the backup failed and containers could not all be put back: {'; '.join(problems)}")
        raise
    return items


def _manifest_offsite(restic: Restic, set_id: str, app: dict[str, t.Any], directory: str) -> None:
    """A copy of the manifest in the repository too, so the set can be found from the repository alone."""
    with contextlib.suppress(Exception):
        sink = ResticSink(restic, f"{set_id}-{MANIFEST}", ["selfhost-rollback", f"app={app['name']}", f"set={set_id}", "manifest"])
        with open(os.path.join(directory, MANIFEST), "rb") as handle:
            sink.write(handle.read())
        sink.close()


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
