#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: restore
short_description: Restore a verified backup set into the live app or into another Compose project
version_added: 0.1.0
description:
  - Restores every item of a backup set. Into the live app (the default) - stop the app's containers
    (noting which ran), create missing volumes and containers, replace volume and path contents, load
    database dumps (the database is dropped and recreated), start what ran before, wait for health.
  - Into another project (drills) - set O(target.project_name); volumes are restored into that project's
    volumes (C(<project_name>_<volume>)), databases into that project's database services, bind paths
    into O(target.project_dir) when given.
  - Refuses a set that fails verification. By default a fresh deep check runs first and nothing is
    touched when it fails.
  - File data is extracted next to the live directory and swapped in only when complete. Extraction
    refuses absolute paths, C(..), links that point outside the target and device files.
extends_documentation_fragment:
  - selfhost.rollback.app
  - selfhost.rollback.restic
attributes:
  check_mode:
    support: full
    description: Verifies the set and reports what would be stopped, restored and started.
  diff_mode:
    support: none
    description: No diff is returned.
  idempotent:
    support: partial
    description:
      - A second run with the same set reports C(changed=false) when the target still looks exactly as the
        first run left it (file metadata of every restored tree, table write counters of each database, the
        running services). Anything written since makes it restore again. MySQL targets always restore.
options:
  set_id:
    description: The set to restore. Defaults to the newest complete set.
    type: str
  target:
    description: Where to restore. Defaults to the live app.
    type: dict
    suboptions:
      project_name:
        description: Compose project name to restore into.
        type: str
      project_dir:
        description: Project directory (a copy of the app's) whose compose files, env file and bind paths the target uses.
        type: path
  start:
    description:
      - Which services run afterwards. V(previous) - those that ran before (all of them when the target had no
        containers). V(all) - every service. V(none) - none; database services started to load dumps are stopped again.
    type: str
    choices: [previous, all, none]
    default: previous
  verify:
    description:
      - V(deep) - run a fresh deep check of the set first (recorded in C(verification.json)).
      - V(recorded) - trust the newest recorded verification run, which must have passed.
    type: str
    choices: [deep, recorded]
    default: deep
  force:
    description: Restore even when the target looks as a previous restore of the same set left it.
    type: bool
    default: false
  health_timeout:
    description: Seconds to wait for O(app.health.url) to answer 2xx after a restore into the live app.
    type: float
    default: 120
  lock_timeout:
    description: Seconds to wait for another run on the same app to finish.
    type: float
    default: 60
requirements:
  - Docker SDK for Python
  - the docker CLI with the Compose v2 plugin
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
"""

EXAMPLES = r"""
- name: Put the newest backup set back into the live notes app
  selfhost.rollback.restore:
    app: "{{ rollback_apps[0] }}"

- name: Restore one set into a scratch copy for a drill, leaving it stopped
  selfhost.rollback.restore:
    app: "{{ rollback_apps[0] }}"
    set_id: b-20261122T020705Z-3fa1
    target:
      project_name: notes-drill
      project_dir: /srv/drills/notes
    start: none
"""

RETURN = r"""
set_id:
  description: The set restored.
  returned: always
  type: str
  sample: b-20261122T020705Z-3fa1
target:
  description: The Compose project restored into.
  returned: always
  type: str
  sample: notes
live:
  description: Whether the target is the live app.
  returned: always
  type: bool
verification:
  description: The verification run that allowed the restore.
  returned: when a set was checked
  type: dict
  contains:
    at:
      description: When the run started (UTC).
      type: str
    kind:
      description: V(deep), or with O(verify=recorded) the kind of the last recorded run (V(deep) or V(test_restore)).
      type: str
    passed:
      description: Whether every item passed (always V(true) here, as a failed run refuses the restore).
      type: bool
    duration_s:
      description: Seconds the run took.
      type: float
    failures:
      description: What failed, each line naming the item.
      type: list
      elements: str
restored:
  description: Items restored (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: ["volume uploads", "path config", "database db-notes"]
left_out:
  description: Items left out, with the reason.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The item's name (a path as in O(app.paths)).
      type: str
    reason:
      description: Why it was left out (a restore into another project without O(target.project_dir) leaves bind paths alone).
      type: str
actions:
  description: What was done, in order.
  returned: always
  type: list
  elements: str
lost:
  description:
    - For a restore into the live app, what it discards, read before anything is stopped - the same in check mode.
    - "C(set_id), C(since) and C(seconds) (the set's age), C(tables) (per table, rows C(in_set) and C(now), only those that
      differ), C(files) (per volume or path, entries C(added), C(changed), C(removed) since, with C(examples)),
      C(unknown) (databases whose rows could not be counted), C(changed) (whether anything differs) and C(summary) (one sentence)."
    - Rows updated in place keep the counts, so they cannot be told.
  returned: when the target is the live app and a restore was planned
  type: dict
  sample: {set_id: b-20261202T061502Z-3c1d, seconds: 640, changed: true, tables: {public.notes: {in_set: 12, now: 14}},
           summary: "everything written in the last 10 min (public.notes has 14 rows now, 12 in the set)"}
  contains:
    set_id:
      description: The set restored.
      type: str
    since:
      description: When the set was taken (UTC).
      type: str
    seconds:
      description: The set's age in seconds.
      type: int
    tables:
      description: Per table whose row count differs, keyed by table name, its rows C(in_set) and C(now) (V(null) where the table does not exist).
      type: dict
    files:
      description:
        - Per volume or path with changes, keyed C(volume <name>) or C(path <name>), the entries C(added), C(changed)
          and C(removed) since (counts) and up to five C(examples) (their paths).
      type: dict
    unknown:
      description: Databases whose rows could not be counted, each as C(database <name>).
      type: list
      elements: str
    changed:
      description: Whether anything differs (or could not be counted).
      type: bool
    summary:
      description: One sentence that says what is discarded.
      type: str
not_restored:
  description:
    - What the target filesystem did not accept while the files were written back, per entry (at most 20 per item) -
      C(item), C(path), C(what) (V(owner), V(acl), V(xattr <name>) or V(mtime)) and C(reason). Empty when everything
      the set holds was put back.
    - The same is said in RV(actions) and as a warning; nothing is dropped silently.
  returned: success
  type: list
  elements: dict
  sample: [{item: volume uploads, path: bin/server, what: xattr security.capability, reason: Operation not permitted}]
  contains:
    item:
      description: The item, C(volume <name>) or C(path <name>).
      type: str
    path:
      description: The entry's path inside the item.
      type: str
    what:
      description: What was not accepted, V(owner), V(acl), V(xattr <name>) or V(mtime).
      type: str
    reason:
      description: The file system's answer.
      type: str
started:
  description: Services started after the restore.
  returned: success
  type: list
  elements: str
timings:
  description:
    - Seconds per item, for the health wait and in total.
    - Per item, keyed C(volume:<name>), C(path:<name>) or C(database:<name>), the seconds it took.
  returned: success
  type: dict
  sample: {"volume:uploads": 0.05, "database:db-notes": 1.9, "health": 2.1, "total": 9.8}
  contains:
    health:
      description: Seconds until the live app's health URL answered 2xx.
      type: float
      returned: when services were started in the live app and O(app.health.url) is set
    total:
      description: Seconds the whole restore took.
      type: float
outcome:
  description:
    - V(changed) when something was (or, in check mode, would be) changed, V(unchanged) when everything was already in place.
    - V(unchanged) also when the target still holds the set as restored (and O(force=false)).
    - V(failed) when the module could not do its work (the task fails with the same sentence in RV(reasons)).
  returned: always
  type: str
  sample: changed
reasons:
  description:
    - Sentences behind RV(outcome); empty when there is nothing to add.
    - On a failure, the sentence that says what failed and what to do.
  returned: always
  type: list
  elements: str
  sample: []
"""

import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _restic, _restore, _sets, _verify
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils._module import OPERATOR_FAILURES, AppModule


def argument_spec() -> dict[str, t.Any]:
    return {
        "set_id": {"type": "str"},
        "target": {"type": "dict", "options": {"project_name": {"type": "str"}, "project_dir": {"type": "path"}}},
        "start": {"type": "str", "choices": ["previous", "all", "none"], "default": "previous"},
        "verify": {"type": "str", "choices": ["deep", "recorded"], "default": "deep"},
        "force": {"type": "bool", "default": False},
        "health_timeout": {"type": "float", "default": 120},
        "restic": _restic.restic_option_spec(),
        "lock_timeout": {"type": "float", "default": 60},
    }


def gate(ledger: Ledger, entry: dict[str, t.Any], mode: str, client: t.Any, restic: t.Any, record: bool) -> dict[str, t.Any]:
    """The verification that allows a restore; raises when the set does not pass."""
    if mode == "recorded":
        run = _sets.last_verification(entry.get("verification") or [])
        if not run:
            raise OperatorError(f"backup set {entry['set_id']} was never verified; run selfhost.rollback.backup_verify "
                                "or restore with verify=deep")
    else:
        run = _verify.verify_set(ledger, entry, ["deep"], client, restic, record=record)[0]
    if not run["passed"]:
        raise OperatorError(f"restore refused: backup set {entry['set_id']} fails verification "
                            f"({'; '.join(run['failures'][:3])}); nothing was changed — restore an older set")
    return run


def restore(module: AppModule) -> dict[str, t.Any]:
    params = module.params
    result = module.result
    result.update(changed=False, set_id=params["set_id"], target=None, live=True, restored=[], left_out=[], actions=[])
    app = module.app
    restic = _restic.restic_from_params(params["restic"])
    if restic is not None:
        module.cleanup(restic.close)
    target_params = params["target"] or {}
    target = _restore.target_app(app, target_params.get("project_name"), target_params.get("project_dir"))
    result["target"] = target["project_name"]
    client = module.client
    ledger = module.ledger
    with module.lock("restore"):
        entry = _sets.load_set(ledger, params["set_id"])
        result["set_id"] = entry["set_id"]
        if entry["manifest"].get("backend") == "restic" and restic is None:
            raise OperatorError(f"set {entry['set_id']} is stored in restic; give the restic option")
        plan = _restore.plan_restore(app, target, client, entry)
        result.update(live=plan["live"], restored=[f"{s['kind']} {s['name']}" for s in plan["steps"]],
                      left_out=plan["skipped"])
        if not params["force"] and _restore.already_restored(ledger, target, client, entry, plan):
            result["actions"] = [f"{target['project_name']} still holds set {entry['set_id']} as restored; nothing to do"]
            return result
        verification = gate(ledger, entry, params["verify"], client, restic, record=not module.check_mode)
        result["verification"] = {k: v for k, v in verification.items() if k != "checks"}
        if plan["live"]:  # read while the app still runs, before anything is stopped
            result["lost"] = _restore.what_is_lost(target, client, plan, entry)
            if result["lost"]["changed"]:
                module.warn(f"app {app['name']}: restoring {entry['set_id']} discards {result['lost']['summary']}")
        if module.check_mode:
            result["changed"] = True
            result["actions"] = ([f"stop {', '.join(plan['running'])}"] if plan["running"] else []) + \
                [f"restore {r}" for r in result["restored"]]
            return result
        result["changed"] = True
        done = _restore.run_restore(app, target, client, ledger, entry, plan, restic, params["start"],
                                    params["health_timeout"])
    result.update(actions=done["actions"], started=done["started"], timings=done["timings"],
                  not_restored=done["not_restored"])
    for entry in done["not_restored"][:3]:
        module.warn(f"app {app['name']}: {entry['item']}: {entry['path']}: the target filesystem did not accept its "
                    f"{entry['what']} ({entry['reason']})")
    return result


def main() -> None:
    module = AppModule(argument_spec(), failure="restore of app {name} failed", errors=OPERATOR_FAILURES,
                       docker_failure="the Docker Engine refused a request ({exc}); check 'docker compose ps' for the app and run again",
                       os_failure="{exc}; check free space and permissions on the target")
    module.run(restore)


if __name__ == "__main__":
    main()
