# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup sets on disk: ids, directories, manifests and verification records (private to the collection).

A set lives in ``<store>/<app>/backups/<set_id>/`` (0700): one archive per item (0600)
and ``manifest.json``, written last and atomically — its presence makes the set
complete. Verification runs are appended to ``verification.json`` in the same
directory so that the manifest never changes. With the restic backend the archives
are restic snapshots and the set directory holds the manifest and results only.

Taking a set is ``_capture``, checking one ``_verify``, choosing which to keep
``_retention``. Callers hold the app's ledger lock; nothing here or there takes it, so
a restore can run its own verification without locking itself out.
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._clock import stamp
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger

MANIFEST_FORMAT = 1
MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
SET_ID_RE = re.compile(r"^b-\d{8}T\d{6}Z-[0-9a-f]{4}$")


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


def record_verification(ledger: Ledger, set_id: str, kind: str, checks: list[dict[str, t.Any]],
                        started_at: str, duration: float) -> dict[str, t.Any]:
    failures = [f for check in checks for f in check["failures"]]
    run = {"at": started_at, "kind": kind, "passed": not failures, "checks": checks,
           "duration_s": round(duration, 3), "failures": failures}
    runs = ledger.read(f"backups/{set_id}/{VERIFICATION}", default=[]) or []
    runs.append(run)
    ledger.write(f"backups/{set_id}/{VERIFICATION}", runs)
    return run
