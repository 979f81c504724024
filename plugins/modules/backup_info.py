#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_info
short_description: List an app's backup sets and their verification
version_added: 0.1.0
description:
  - Lists the complete backup sets in the ledger, oldest first, each with the release it was
    taken under, its schema version, size, and its last verification.
  - Returns the newest verified set (optionally only sets taken under one release) and its
    age, so a play can tell whether a fresh enough proven backup exists.
  - Partial sets (no manifest) are listed apart; they are never usable.
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
extends_documentation_fragment:
  - selfhost.rollback.app
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
  release_id:
    description: Only consider sets taken under this release for RV(newest_verified).
    type: str
seealso:
  - module: selfhost.rollback.backup
  - module: selfhost.rollback.backup_verify
"""

EXAMPLES = r"""
- name: Is there a proven backup of the current release from the last day?
  selfhost.rollback.backup_info:
    app: "{{ app }}"
    release_id: "{{ release.release_id }}"
  register: backups

- name: Back up when not
  selfhost.rollback.backup:
    app: "{{ app }}"
  when: backups.newest_verified is none or backups.newest_verified.age_s > 86400
"""

RETURN = r"""
sets:
  description: Every complete set, oldest first.
  returned: always
  type: list
  elements: dict
  sample: [{set_id: b-20261122T020705Z-3fa1, created_at: "2026-11-22T02:07:05Z", release_id: r-20261122T020500Z-9f8e7d6c,
            schema_version: "2", bytes: 18342, verified: true, last_verification: {at: "2026-11-22T02:07:09Z", kind: test_restore, passed: true}}]
  contains:
    set_id:
      description: The set's id.
      type: str
    created_at:
      description: When the set was taken (UTC).
      type: str
    release_id:
      description: The release it was taken under (V(null) when none was recorded).
      type: str
    schema_version:
      description: The app's schema version when it was taken (V(null) when none was recorded).
      type: str
    backend:
      description: V(local) or V(restic).
      type: str
    bytes:
      description: Bytes stored for the set.
      type: int
    items:
      description: Names of the items it holds.
      type: list
      elements: str
    verified:
      description: Whether its last verification run passed.
      type: bool
    last_verification:
      description: Its last verification run, C(at), C(kind) (V(deep) or V(test_restore)) and C(passed), or V(null) when it was never verified.
      type: dict
partial:
  description: Ids of sets without a manifest (interrupted; the next backup removes them).
  returned: always
  type: list
  elements: str
newest_verified:
  description: The newest set whose last verification passed (within O(release_id) when given), with its age in seconds, or V(null).
  returned: always
  type: dict
  contains:
    set_id:
      description: The set's id.
      type: str
    created_at:
      description: When the set was taken (UTC).
      type: str
    release_id:
      description: The release it was taken under (V(null) when none was recorded).
      type: str
    schema_version:
      description: The app's schema version when it was taken (V(null) when none was recorded).
      type: str
    backend:
      description: V(local) or V(restic).
      type: str
    bytes:
      description: Bytes stored for the set.
      type: int
    items:
      description: Names of the items it holds.
      type: list
      elements: str
    verified:
      description: Whether its last verification run passed.
      type: bool
    last_verification:
      description: Its last verification run, C(at), C(kind) (V(deep) or V(test_restore)) and C(passed), or V(null) when it was never verified.
      type: dict
    age_s:
      description: Seconds since it was taken.
      type: int
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

import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._clock import parse_iso, utcnow
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils._sets import is_verified, list_sets, partial_sets, summarize


def describe(module: AppModule) -> dict[str, t.Any]:
    ledger = module.ledger
    entries = list_sets(ledger)
    partial = partial_sets(ledger)
    wanted = module.params["release_id"]
    newest: dict[str, t.Any] | None = None
    for entry in reversed(entries):
        if is_verified(entry) and (wanted is None or entry["manifest"].get("release_id") == wanted):
            newest = summarize(entry)
            created = newest.get("created_at")
            newest["age_s"] = int((utcnow() - parse_iso(created)).total_seconds()) if created else None
            break
    return {"changed": False, "sets": [summarize(e) for e in entries], "partial": partial, "newest_verified": newest}


def main() -> None:
    module = AppModule({"release_id": {"type": "str"}}, docker=False,
                       os_failure="reading the ledger failed ({exc}); check permissions under {store}")
    module.run(describe)


if __name__ == "__main__":
    main()
