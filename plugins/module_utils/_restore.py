# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a backup set into the live app or into another Compose project (private).

Order: verify the set (nothing is touched when it fails) → stop the target's
containers (noting which ran) → create what is missing (``compose up --no-start``)
→ file data: extract next to the live directory, then swap it in (the old data is
removed only after the new data is complete) → databases: start their services,
drop and recreate, load the dump → start what ran before → wait for health.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _archive, _dumps, _extract, _sources, _tree
from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso, parse_iso
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import Compose
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import project_containers
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._gate import human_age
from ansible_collections.selfhost.rollback.plugins.module_utils._health import probe_once
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils._restic import Restic
from ansible_collections.selfhost.rollback.plugins.module_utils._storage import ArchiveSource


def target_app(app: dict[str, t.Any], project_name: str | None, project_dir: str | None) -> dict[str, t.Any]:
    """The app definition pointed at another project name and/or directory."""
    target = dict(app)
    if project_name:
        target["project_name"] = project_name
        target["pins_file"] = None  # a copy is not pinned by the live app's pins
    if project_dir:
        if not os.path.isdir(project_dir):
            raise OperatorError(f"app {app['name']}: target project_dir {project_dir} is not a directory")
        target["project_dir"] = project_dir

        def moved(path: str) -> str:
            rel = os.path.relpath(path, app["project_dir"])
            candidate = os.path.join(project_dir, rel)
            return candidate if not rel.startswith("..") and os.path.exists(candidate) else path

        target["compose_files"] = [moved(p) for p in app["compose_files"]]
        target["env_file"] = moved(app["env_file"])
    return target


def is_live(app: dict[str, t.Any], target: dict[str, t.Any]) -> bool:
    return app["project_name"] == target["project_name"]


def plan_restore(app: dict[str, t.Any], target: dict[str, t.Any], client: t.Any, entry: dict[str, t.Any]) -> dict[str, t.Any]:
    """Where each item goes; unknown volumes or services in the target fail here."""
    compose = Compose(target)
    config = compose.config()
    volumes = _sources.compose_volumes(config)
    services = config.get("services") or {}
    steps = []
    skipped = []
    live = is_live(app, target)
    for item in entry["manifest"].get("items", []):
        step: dict[str, t.Any] = {"item": item, "kind": item["kind"], "name": item["name"]}
        if item["kind"] == "volume":
            if item["name"] not in volumes:
                raise OperatorError(f"app {app['name']}: the target project has no volume {item['name']!r}; "
                                    "restore into a project made from the same compose files")
            step["volume"] = volumes[item["name"]]
        elif item["kind"] == "path":
            if not live and target["project_dir"] == app["project_dir"]:
                skipped.append({"name": item["name"], "reason": "a restore into another project needs target project_dir "
                                                                "for bind paths; the live directory is left alone"})
                continue
            rel = item["name"]
            step["path"] = rel if os.path.isabs(rel) else os.path.join(target["project_dir"], rel)
        else:
            if item["service"] not in services:
                raise OperatorError(f"app {app['name']}: the target project has no service {item['service']!r} for "
                                    f"database item {item['name']}")
            step["service"] = item["service"]
        steps.append(step)
    containers = project_containers(client, target["project_name"])
    running = sorted({_sources.container_service(c) for c in containers if c.status == "running"})
    return {"steps": steps, "skipped": skipped, "running": running, "had_containers": bool(containers),
            "services": sorted(services), "live": live, "config": config}


def step_root(client: t.Any, step: dict[str, t.Any]) -> str | None:
    """The directory on the host that a volume or path step of a restore plan fills (None when it is not there)."""
    root = step.get("path")
    if step["kind"] == "volume":
        try:
            root = client.volumes.get(step["volume"]).attrs["Mountpoint"]
        except Exception:  # a volume that is gone
            return None
    return root if root and os.path.isdir(root) else None


def what_is_lost(target: dict[str, t.Any], client: t.Any, plan: dict[str, t.Any], entry: dict[str, t.Any],
                 now: float | None = None) -> dict[str, t.Any]:
    """What restoring ``entry`` over the target's data today discards, read before anything changes.

    The set's age; per database, the rows per table in the set and now; per volume or path, the
    entries added, changed or removed since the set was taken. ``changed`` is whether anything
    differs at all (rows updated in place keep their counts and cannot be told).
    """
    manifest = entry["manifest"]
    seconds = int((time.time() if now is None else now) - parse_iso(manifest["created_at"]).timestamp())
    # files modified after the capture ended are newer than the set (its writers were held still)
    taken = parse_iso(manifest.get("finished_at") or manifest["created_at"]).timestamp()
    lost: dict[str, t.Any] = {"set_id": entry["set_id"], "since": manifest.get("created_at"), "seconds": seconds,
                              "tables": {}, "files": {}, "unknown": []}
    parts = []
    for step in plan["steps"]:
        item = step["item"]
        if step["kind"] in ("volume", "path"):
            root = step_root(client, step)
            if root is None:  # gone: a restore loses nothing more there
                continue
            changes = _tree.changes_since(item.get("files") or {}, root, taken)
            if changes["added"] or changes["changed"] or changes["removed"]:
                lost["files"][f"{step['kind']} {step['name']}"] = changes
                counts = ", ".join(f"{changes[k]} {k}" for k in ("added", "changed", "removed") if changes[k])
                parts.append(f"{step['kind']} {step['name']}: {counts} since ({', '.join(changes['examples'][:3])})")
            continue
        container = _service_container(client, target, step["service"], running=True)
        counts = None
        if container is not None and item.get("engine") in ("postgres", "mysql", "mariadb", "sqlite"):
            database = {k: item.get(k) for k in ("engine", "database", "user", "path")}
            try:
                counts = _dumps.count_rows(container.id, database, f"app {target['name']}")
            except OperatorError:
                counts = None
        if counts is None:
            lost["unknown"].append(f"database {step['name']}")
            parts.append(f"database {step['name']}: its rows now could not be counted")
            continue
        for table in sorted(set(item.get("tables") or {}) | set(counts)):
            then, today = (item.get("tables") or {}).get(table), counts.get(table)
            if then == today:
                continue
            lost["tables"][table] = {"in_set": then, "now": today}
            if today is None:
                parts.append(f"{table} ({then} rows in the set) no longer exists under that name")
            elif then is None:
                parts.append(f"{table} ({today} rows now) did not exist then and is dropped")
            else:
                parts.append(f"{table} has {today} rows now, {then} in the set")
    lost["changed"] = bool(lost["tables"] or lost["files"] or lost["unknown"])
    age = human_age(seconds)
    lost["summary"] = (f"everything written in the last {age} ({'; '.join(parts)})" if lost["changed"] else
                       f"nothing that can be told: the data has the set's row counts and files ({age} old)")
    return lost


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


def current_fingerprint(target: dict[str, t.Any], client: t.Any, plan: dict[str, t.Any]) -> dict[str, t.Any] | None:
    """What the target looks like now, to tell whether a restore already happened and nothing changed since."""
    parts: dict[str, t.Any] = {"running": plan["running"]}
    for step in plan["steps"]:
        if step["kind"] in ("volume", "path"):
            root = step_root(client, step)
            if root is None:  # missing: certainly not restored
                return None
            parts[f"{step['kind']}:{step['name']}"] = _tree.tree_fingerprint(root)
        else:
            container = _service_container(client, target, step["service"], running=True)
            if container is None:
                return None
            item = step["item"]
            host = _dumps.host_path_in_container(container.attrs, _dumps.sqlite_path(item)) if item["engine"] == "sqlite" else None
            value = database_fingerprint(container.id, item, f"app {target['name']}", host)
            if value is None:
                return None
            parts[f"database:{step['name']}"] = value
    return parts


def _service_container(client: t.Any, target: dict[str, t.Any], service: str, running: bool) -> t.Any:
    for container in sorted(project_containers(client, target["project_name"]), key=lambda c: c.name):
        if _sources.container_service(container) == service and (not running or container.status == "running"):
            return container
    return None


def precheck(item: dict[str, t.Any], set_directory: str, restic: Restic | None) -> None:
    source = ArchiveSource(set_directory, item, restic)
    try:
        _archive.check_stream(source.stream)
    except _archive.ArchiveError as exc:
        source.abort()
        raise OperatorError(f"item {item['name']}: {exc}; restore refused, nothing was changed") from exc
    except BaseException:
        source.abort()
        raise
    problems = source.finish()
    if problems:
        raise OperatorError(f"item {item['name']}: {problems[0]}; restore refused, nothing was changed")


def restore_tree(dest: str, item: dict[str, t.Any], set_directory: str, restic: Restic | None) -> dict[str, t.Any]:
    """Put an item's files at ``dest``: extract beside it, check, then swap (or empty and extract on a mount point)."""
    began = time.monotonic()
    parent = os.path.dirname(dest.rstrip("/"))
    swap = os.path.isdir(parent) and not (os.path.isdir(dest) and os.path.ismount(dest))
    workdir = tempfile.mkdtemp(prefix="." + os.path.basename(dest.rstrip("/")) + ".restore-", dir=parent) if swap else dest
    source = ArchiveSource(set_directory, item, restic)
    try:
        if not swap:
            _tree.empty_directory(dest)
        extracted = _extract.extract_stream(source.stream, workdir)
    except BaseException:
        source.abort()
        if swap:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    problems = source.finish()
    if problems:
        if swap:
            shutil.rmtree(workdir, ignore_errors=True)
        raise OperatorError(f"item {item['name']}: the archive changed while it was restored ({problems[0]}); "
                            "the live data was left as it was" if swap else f"item {item['name']}: {problems[0]}")
    if swap:
        old = None
        if os.path.lexists(dest):
            old = tempfile.mkdtemp(prefix="." + os.path.basename(dest.rstrip("/")) + ".old-", dir=parent)
            os.rmdir(old)
            os.rename(dest, old)
        os.rename(workdir, dest)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    return {"members": extracted.count, "duration_s": round(time.monotonic() - began, 3),
            "not_restored": extracted.not_restored, "not_restored_total": extracted.not_restored_total,
            "not_restored_sentence": _extract.not_restored_sentence(extracted)}


def wait_health(url: str, timeout: float, per_request: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe_once(url, per_request)["ok"]:
            return True
        time.sleep(0.5)
    return False


def _restore_files(client: t.Any, plan: dict[str, t.Any], set_directory: str, restic: Restic | None, actions: list[str],
                   timings: dict[str, float]) -> list[dict[str, str]]:
    """Put back each volume and bind path of the plan; returns what could not be restored as it was."""
    not_restored: list[dict[str, str]] = []
    for step in plan["steps"]:
        item = step["item"]
        if step["kind"] == "volume":
            mountpoint = client.volumes.get(step["volume"]).attrs["Mountpoint"]
            result = restore_tree(mountpoint, item, set_directory, restic)
            actions.append(f"restored volume {step['volume']} ({result['members']} entries)")
            timings[f"volume:{item['name']}"] = result["duration_s"]
        elif step["kind"] == "path":
            result = restore_tree(step["path"], item, set_directory, restic)
            actions.append(f"restored path {step['path']} ({result['members']} entries)")
            timings[f"path:{item['name']}"] = result["duration_s"]
        else:
            continue
        if result["not_restored_total"]:
            actions.append(f"{step['kind']} {item['name']}: {result['not_restored_sentence']}")
            not_restored += [dict(entry, item=f"{step['kind']} {item['name']}") for entry in result["not_restored"]]
    return not_restored


def _restore_databases(client: t.Any, target: dict[str, t.Any], compose: Compose, plan: dict[str, t.Any], set_directory: str,
                       restic: Restic | None, actions: list[str], timings: dict[str, float], label: str) -> list[str]:
    """Load each database item of the plan; returns the services started only for it."""
    started_for_dumps: list[str] = []
    for step in plan["steps"]:
        if step["kind"] != "database":
            continue
        item = step["item"]
        step_began = time.monotonic()
        source = ArchiveSource(set_directory, item, restic)
        try:
            if item["engine"] == "sqlite":
                container = _service_container(client, target, step["service"], running=False)
                host = _dumps.host_path_in_container(container.attrs, _dumps.sqlite_path(item)) if container else None
                if not host:
                    raise OperatorError(f"{label}: the SQLite file {_dumps.sqlite_path(item)} of service {step['service']} "
                                        "is not on a volume or bind mount; it cannot be restored from the host")
                _dumps.restore_sqlite_file(host, source.stream)
            else:
                compose.run("start", step["service"], what=f"starting database service {step['service']}")
                started_for_dumps.append(step["service"])
                container = _service_container(client, target, step["service"], running=True)
                if container is None:
                    raise OperatorError(f"{label}: database service {step['service']} did not start; see docker compose logs")
                _dumps.wait_ready(container.id, item, label)
                _dumps.restore_database(container.id, item, source.stream, label)
        except BaseException:
            source.abort()
            raise
        problems = source.finish()
        if problems:
            raise OperatorError(f"{label}: database item {item['name']}: {problems[0]}")
        actions.append(f"restored database {item['database']} in service {step['service']}")
        timings[f"database:{item['name']}"] = round(time.monotonic() - step_began, 3)
    return started_for_dumps


def run_restore(app: dict[str, t.Any], target: dict[str, t.Any], client: t.Any, ledger: Ledger, entry: dict[str, t.Any],
                plan: dict[str, t.Any], restic: Restic | None, start: str, health_timeout: float) -> dict[str, t.Any]:
    """Do the restore the plan describes. The caller holds the app lock and has verified the set."""
    label = f"app {app['name']}"
    began = time.monotonic()
    set_directory = ledger.path("backups", entry["set_id"])
    compose = Compose(target)
    actions: list[str] = []
    timings: dict[str, float] = {}
    running_before = plan["running"]
    # every file archive must pass the extraction rules and its checksum before the app is
    # stopped: a hostile or swapped archive is refused while everything still runs untouched
    for step in plan["steps"]:
        if step["kind"] in ("volume", "path"):
            precheck(step["item"], set_directory, restic)
    if running_before:
        # each service's own stop_grace_period (Compose's default 10 s), as 'docker compose stop' would
        compose.run("stop", what="stopping the app before the restore")
        actions.append("stopped " + ", ".join(running_before))
    compose.run("up", "--no-start", "--no-recreate", what="creating the project's volumes and containers")
    not_restored = _restore_files(client, plan, set_directory, restic, actions, timings)
    started_for_dumps = _restore_databases(client, target, compose, plan, set_directory, restic, actions, timings, label)
    if start == "none":
        to_start: list[str] = []
    elif start == "all" or not plan["had_containers"]:
        to_start = plan["services"]
    else:
        to_start = running_before
    if to_start:
        compose.run("start", *to_start, what="starting the app after the restore")
        actions.append("started " + ", ".join(to_start))
    to_stop = [s for s in started_for_dumps if s not in to_start]
    if to_stop:
        compose.run("stop", *to_stop, what="stopping database services started for the restore")
        actions.append("stopped " + ", ".join(to_stop))
    healthy = None
    health_url = ((app.get("health") or {}).get("url")) if plan["live"] else None
    if health_url and to_start:
        health_began = time.monotonic()
        healthy = wait_health(health_url, health_timeout)
        timings["health"] = round(time.monotonic() - health_began, 3)
        if not healthy:
            raise OperatorError(f"{label}: the data was restored from set {entry['set_id']} but the app did not become "
                                f"healthy at {health_url} within {health_timeout:.0f} s; check docker compose logs")
    timings["total"] = round(time.monotonic() - began, 3)
    after = restore_plan_refresh(app, target, client, entry)
    fingerprint = current_fingerprint(target, client, after)
    ledger.write(f"restores/{target['project_name']}.json", {
        "format": 1, "set_id": entry["set_id"], "at": iso(), "target": target["project_name"],
        "live": plan["live"], "started": to_start, "healthy": healthy, "timings": timings, "fingerprint": fingerprint,
    })
    return {"actions": actions, "timings": timings, "started": to_start, "healthy": healthy, "not_restored": not_restored}


def restore_plan_refresh(app: dict[str, t.Any], target: dict[str, t.Any], client: t.Any, entry: dict[str, t.Any]) -> dict[str, t.Any]:
    return plan_restore(app, target, client, entry)


def already_restored(ledger: Ledger, target: dict[str, t.Any], client: t.Any, entry: dict[str, t.Any],
                     plan: dict[str, t.Any]) -> bool:
    record = ledger.read(f"restores/{target['project_name']}.json")
    if not record or record.get("set_id") != entry["set_id"] or not record.get("fingerprint"):
        return False
    return current_fingerprint(target, client, plan) == record["fingerprint"]
