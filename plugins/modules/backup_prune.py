#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_prune
short_description: Remove old backup sets by keep-last and keep-within rules, never a restore point still needed
version_added: 0.1.0
description:
  - Keeps the newest O(keep_last) sets and every set younger than O(keep_within); removes the rest.
  - Whatever the rules say, never removes the newest verified set, nor for each retained release (a release
    record still in the ledger, or the current release) the newest set taken under it, nor a set a release
    record names in C(backup_set) or C(backup_sets).
  - Partial sets (no manifest) are removed too; only the backup module creates them, under the same app lock.
  - Sets stored in restic have their snapshots forgotten and pruned (O(restic) is then required).
extends_documentation_fragment:
  - selfhost.rollback.app
  - selfhost.rollback.restic
attributes:
  check_mode:
    support: full
    description: Runs the same checks and reports what would change, changing nothing.
  diff_mode:
    support: none
    description: No diff is returned.
  idempotent:
    support: full
    description: Running it again with the same input changes nothing.
options:
  keep_last:
    description: Number of newest complete sets to keep.
    type: int
  keep_within:
    description: Keep every set younger than this, as a number and a unit (V(s), V(m), V(h), V(d), V(w)), for example V(7d).
    type: str
  lock_timeout:
    description: Seconds to wait for another run on the same app to finish.
    type: float
    default: 60
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
"""

EXAMPLES = r"""
- name: Keep a week of backups and at least the last three
  selfhost.rollback.backup_prune:
    app: "{{ item }}"
    keep_last: 3
    keep_within: 7d
  loop: "{{ rollback_apps }}"
"""

RETURN = r"""
removed:
  description: Sets removed (or that would be, in check mode), oldest first.
  returned: always
  type: list
  elements: str
  sample: [b-20261101T020000Z-0a1b]
kept:
  description: Sets kept, each with the rules that keep it.
  returned: always
  type: list
  elements: dict
  sample: [{"set_id": "b-20261122T020705Z-3fa1", "reasons": ["among the last 3", "newest verified set"]}]
  contains:
    set_id:
      description: The set's id.
      type: str
    reasons:
      description:
        - The rules that keep it, V(among the last <n>), V(within keep_within), V(newest verified set),
          V(needed by retained release <release_id>), V(named by a release record).
      type: list
      elements: str
partial_removed:
  description: Partial sets (no manifest) removed.
  returned: always
  type: list
  elements: str
outcome:
  description:
    - V(changed) when something was (or, in check mode, would be) changed, V(unchanged) when everything was already in place.
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

import shutil
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _retention, _sets
from ansible_collections.selfhost.rollback.plugins.module_utils._clock import utcnow
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils._restic import ResticError, restic_from_params, restic_option_spec


def argument_spec() -> dict[str, t.Any]:
    return {
        "keep_last": {"type": "int"},
        "keep_within": {"type": "str"},
        "restic": restic_option_spec(),
        "lock_timeout": {"type": "float", "default": 60},
    }


def prune(module: AppModule) -> dict[str, t.Any]:
    params = module.params
    result = module.result
    result.update(changed=False, removed=[], kept=[], partial_removed=[])
    ledger = module.ledger  # an unusable app definition fails before the options are judged
    if params["keep_last"] is not None and params["keep_last"] < 0:
        raise OperatorError("keep_last must be 0 or more")
    within = _retention.parse_duration(params["keep_within"]) if params["keep_within"] else None
    with module.lock("backup_prune"):
        sets = _sets.list_sets(ledger)
        releases, pinned = _retention.retained_releases(ledger)
        plan = _retention.prune_plan(sets, releases, params["keep_last"], within, utcnow(), pinned)
        partial = _sets.partial_sets(ledger)
        result.update(removed=plan["remove"], kept=plan["keep"], partial_removed=partial,
                      changed=bool(plan["remove"] or partial))
        if result["changed"] and not module.check_mode:
            by_id = {e["set_id"]: e for e in sets}
            snapshots = [i["snapshot"] for s in plan["remove"] for i in by_id[s]["manifest"].get("items", []) if i.get("snapshot")]
            if snapshots:
                restic = restic_from_params(params["restic"])
                if restic is None:
                    raise OperatorError("sets to remove are stored in restic; give the restic option")
                module.cleanup(restic.close)
                restic.forget(snapshots)
            for set_id in plan["remove"] + partial:
                shutil.rmtree(ledger.path("backups", set_id))
    return result


def main() -> None:
    module = AppModule(argument_spec(), docker=False, required_one_of=[("keep_last", "keep_within")],
                       failure="pruning backup sets of app {name} failed", errors=(ResticError,),
                       os_failure="{exc}; check permissions of {store}")
    module.run(prune)


if __name__ == "__main__":
    main()
