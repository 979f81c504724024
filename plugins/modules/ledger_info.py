#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ledger_info
short_description: Summarize a host's ledger - releases, backup sets, drills - for the restore-points report
version_added: 0.1.0
description:
  - Reads the ledger of every app on the host (or of the apps named in O(apps)) and returns, per app, its
    releases (with where each image can come from now - the engine, the ledger's image archive, only a
    registry, or nowhere), its complete backup sets and their verification, and its drill records.
  - Read-only; M(selfhost.rollback.restore_points_report) turns what it returns for every host into the report.
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  idempotent:
    support: full
    description: Read-only.
options:
  store:
    description: The ledger root (the inventory's C(rollback_store)).
    type: path
    default: /var/lib/selfhost-rollback
  apps:
    description: Only these app names; by default every app directory in O(store).
    type: list
    elements: str
    default: []
  drills:
    description: How many of the newest drill records to return per app.
    type: int
    default: 50
requirements:
  - Docker SDK for Python 7.0 or newer, to tell whether images are on the engine (without it they show as V(unknown))
seealso:
  - module: selfhost.rollback.restore_points_report
  - module: selfhost.rollback.drill
  - module: selfhost.rollback.release_info
"""

EXAMPLES = r"""
- name: Read this host's ledger
  selfhost.rollback.ledger_info:
    store: /var/lib/selfhost-rollback
  register: ledger
"""

RETURN = r"""
host:
  description: The host's name as it calls itself.
  returned: always
  type: str
collected_at:
  description: When the ledger was read (UTC).
  returned: always
  type: str
engine:
  description: Whether the Docker Engine answered (image availability is V(unknown) when not).
  returned: always
  type: bool
apps:
  description: One entry per app, by name.
  returned: always
  type: list
  elements: dict
  sample:
    - name: notes
      current_release: r-20261122T021836Z-d1cd5945
      releases:
        - {release_id: r-20261122T021836Z-d1cd5945, recorded_at: "2026-11-22T02:18:36Z", current: true, schema_version: "1",
           version: "notes:1.0 postgres:15", images: {app: local, db: archive}}
      sets:
        - {set_id: b-20261122T020705Z-3fa1, created_at: "2026-11-22T02:07:05Z", release_id: r-20261122T021836Z-d1cd5945,
           verified: true, schema_version: "1"}
      drills:
        - {drill_id: d-20261122T030000Z-7c1e, release_id: r-20261122T021836Z-d1cd5945, set_id: b-20261122T020705Z-3fa1,
           passed: true, started_at: "2026-11-22T03:00:00Z", finished_at: "2026-11-22T03:00:14Z",
           timings: {restore_s: 4.2, boot_s: 2.9, healthy_s: 1.1, time_to_healthy_s: 8.2}, failures: []}
      interrupted_drill: null
  contains:
    name:
      description: The app's name.
      type: str
    current_release:
      description: The release the ledger says is current (V(null) when none is).
      type: str
    previous_release:
      description: The release a rollback to V(previous) goes to (V(null) when there is none).
      type: str
    releases:
      description: Every recorded release, oldest first.
      type: list
      elements: dict
      contains:
        release_id:
          description: Release id.
          type: str
        recorded_at:
          description: When it was recorded (UTC).
          type: str
        current:
          description: Whether it is the current release.
          type: bool
        schema_version:
          description: Schema version recorded with it.
          type: str
        version:
          description: Short names and tags of its images, for people.
          type: str
        images:
          description:
            - Per service, where its image is, V(local), V(registry), V(archive) or V(missing).
            - V(unknown) when the Docker Engine did not answer, or the release records no image ID.
          type: dict
    sets:
      description: Every complete backup set, oldest first.
      type: list
      elements: dict
      contains:
        set_id:
          description: The set's id.
          type: str
        created_at:
          description: When it was taken (UTC).
          type: str
        release_id:
          description: The release it was taken under.
          type: str
        schema_version:
          description: The app's schema version when it was taken.
          type: str
        verified:
          description: Whether its last verification run passed.
          type: bool
        bytes:
          description: Bytes stored for it.
          type: int
    drills:
      description: The newest O(drills) drill records, oldest first.
      type: list
      elements: dict
      contains:
        drill_id:
          description: The drill's id.
          type: str
        release_id:
          description: The release drilled.
          type: str
        set_id:
          description: The backup set restored.
          type: str
        passed:
          description: Whether every check passed.
          type: bool
        started_at:
          description: When it started (UTC).
          type: str
        finished_at:
          description: When it finished (UTC).
          type: str
        timings:
          description: Seconds per phase, as in the RV(selfhost.rollback.drill#module:timings) of the drill.
          type: dict
        failures:
          description: The first three reasons it failed (empty when it passed).
          type: list
          elements: str
    interrupted_drill:
      description: A drill that is running or was interrupted, as C(<drill_id> since <started_at>) (V(null) when there is none).
      type: str
outcome:
  description:
    - Always V(unchanged), as this module only reads.
    - V(failed) when the module could not do its work (the task fails with the same sentence in RV(reasons)).
  returned: always
  type: str
  sample: unchanged
reasons:
  description:
    - Sentences behind RV(outcome); empty when there is nothing to add.
    - On a failure, the sentence that says what failed and what to do.
  returned: always
  type: list
  elements: str
  sample: []
"""

import os
import socket
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _drill, _operation, _release, _sets
from ansible_collections.selfhost.rollback.plugins.module_utils._app import APP_NAME_RE, DEFAULT_STORE
from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso
from ansible_collections.selfhost.rollback.plugins.module_utils._images import plan_load, split_reference
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule


def version_label(record: dict[str, t.Any]) -> str:
    """notes:1.0 postgres:15 - the short names and tags of a release's images."""
    labels = []
    for _service, entry in sorted((record.get("services") or {}).items()):
        ref = entry.get("image_ref") or entry.get("pinned_ref") or ""
        name, tag, _digest = split_reference(ref)
        if name:
            labels.append(f"{name.rsplit('/', 1)[-1]}:{tag or 'latest'}")
    return " ".join(sorted(set(labels)))


def app_summary(ledger: Ledger, client: t.Any, drill_limit: int) -> dict[str, t.Any]:
    current = _release.current_release_id(ledger)
    releases = []
    for record in _release.releases(ledger):
        if client is not None:
            images = {row["service"]: row["source"] for row in plan_load(client, ledger, record, allow_pull=True)}
        else:
            images = {name: "unknown" for name in (record.get("services") or {})}
        releases.append({"release_id": record.get("release_id"), "recorded_at": record.get("recorded_at"),
                         "current": record.get("release_id") == current, "schema_version": record.get("schema_version"),
                         "version": version_label(record), "images": images})
    sets = []
    for entry in _sets.list_sets(ledger):
        view = _sets.summarize(entry)
        sets.append({k: view[k] for k in ("set_id", "created_at", "release_id", "schema_version", "verified", "bytes")})
    drills = []
    for record in _drill.drill_records(ledger)[-drill_limit:] if drill_limit > 0 else []:
        drills.append({"drill_id": record.get("drill_id"), "release_id": (record.get("target") or {}).get("release_id"),
                       "set_id": (record.get("backup_set") or {}).get("set_id"), "passed": bool(record.get("passed")),
                       "started_at": record.get("started_at"), "finished_at": record.get("finished_at"),
                       "timings": record.get("timings") or {}, "failures": (record.get("failures") or [])[:3]})
    running = ledger.read("drills/running.json")
    return {"name": ledger.app, "current_release": current, "previous_release": _operation.previous_release(ledger, current),
            "releases": releases, "sets": sets, "drills": drills,
            "interrupted_drill": f"{running.get('drill_id')} since {running.get('started_at')}" if running else None}


def collect(module: AppModule) -> dict[str, t.Any]:
    params = module.params
    store = params["store"]
    result = module.result
    result.update(changed=False, host=socket.gethostname(), collected_at=iso(), engine=False, apps=[])
    client = module.client_or_none("{exc}; image availability is reported as unknown")
    result["engine"] = client is not None
    names = params["apps"] or (sorted(n for n in os.listdir(store) if APP_NAME_RE.match(n) and os.path.isdir(os.path.join(store, n)))
                               if os.path.isdir(store) else [])
    for name in names:
        ledger = Ledger(store, name)
        if not os.path.isdir(ledger.root):
            module.warn(f"app {name} has no ledger in {store}; record a release first (selfhost.rollback.pre_upgrade)")
            continue
        result["apps"].append(app_summary(ledger, client, params["drills"]))
    return result


def main() -> None:
    module = AppModule(
        {
            "store": {"type": "path", "default": DEFAULT_STORE},
            "apps": {"type": "list", "elements": "str", "default": []},
            "drills": {"type": "int", "default": 50},
        },
        app=False, docker=False, failure="reading the ledger in {store} failed",
        os_failure="{exc}; check permissions under {store}",
    )
    module.run(collect)


if __name__ == "__main__":
    main()
