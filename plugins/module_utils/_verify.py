# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verifying backup sets: checksums and test restores (private to the collection).

``deep`` reads every archive back against its checksum and, for file data, every member
and file against the manifest. ``test_restore`` restores every item somewhere disposable
(file data and SQLite files into scratch space, a server database into a throwaway
container of the recorded image, without a network) and compares what came back with the
manifest. Runs are recorded in the set's ``verification.json`` (``_sets``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _archive, _dumps, _extract, _tree
from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger, ensure_dir
from ansible_collections.selfhost.rollback.plugins.module_utils._restic import Restic
from ansible_collections.selfhost.rollback.plugins.module_utils._sets import record_verification
from ansible_collections.selfhost.rollback.plugins.module_utils._storage import ArchiveSource, StorageError


def _check(item: dict[str, t.Any], kind: str, began: float, failures: list[str],
           notices: list[str] | None = None) -> dict[str, t.Any]:
    extra = {"notices": notices} if notices else {}
    return {**extra, "item": item["name"], "kind": kind, "passed": not failures, "duration_s": round(time.monotonic() - began, 3),
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
        notices: list[str] = []
        try:
            if item["kind"] == "database":
                failures = _test_restore_database(directory, item, restic, client, scratch_root, label, timeout)
            else:
                scratch = tempfile.mkdtemp(prefix="test-restore-", dir=scratch_root)
                try:
                    source = ArchiveSource(directory, item, restic)
                    extracted = None
                    try:
                        extracted = _extract.extract_stream(source.stream, scratch)
                    except _archive.ArchiveError as exc:
                        failures.append(str(exc))
                    finally:
                        failures = source.finish() + failures
                    if not failures and extracted is not None:
                        # what the scratch filesystem refused is said, and not counted twice as a difference
                        failures = _archive.compare_trees(item.get("files") or {}, _tree.scan_tree(scratch),
                                                          not_restored=extracted.not_restored)
                        if extracted.not_restored_total:
                            notices.append(f"{item['kind']} {item['name']}: {_extract.not_restored_sentence(extracted)}")
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
        except (OperatorError, StorageError, OSError) as exc:
            failures.append(str(exc))
        checks.append(_check(item, "test_restore", began, failures, notices))
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
