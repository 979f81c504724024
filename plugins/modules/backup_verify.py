#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_verify
short_description: Prove a backup set by checking every checksum and restoring it somewhere disposable
version_added: 0.1.0
description:
  - V(deep) check - reads every archive of the set (a decompression checks zstd's frame checksum or gzip's
    CRC; an archive recorded with a sha256 is compared with it) and, for file data, compares every member's
    type, mode, owner, mtime, xattrs, size, link and sha256 with the manifest.
  - V(test_restore) - restores every database dump into a throwaway container of the same database
    image (no network) and compares row counts per table with the manifest; SQLite copies are opened
    on the host and pass C(PRAGMA integrity_check); file archives are extracted to a scratch directory
    and compared with the manifest file by file.
  - Each run is appended to C(verification.json) in the set directory (when, what, pass or fail,
    timings, failures); the manifest is never changed.
extends_documentation_fragment:
  - selfhost.rollback.app
  - selfhost.rollback.restic
attributes:
  check_mode:
    support: full
    description: The checks run but their results are not recorded.
  diff_mode:
    support: none
    description: No diff is returned.
  idempotent:
    support: none
    description: Every run outside check mode records one more verification run.
options:
  set_id:
    description: The set to verify. Defaults to the newest complete set.
    type: str
  checks:
    description: Which checks to run, in order.
    type: list
    elements: str
    choices: [deep, test_restore]
    default: [deep, test_restore]
  fail_on_mismatch:
    description: Fail the task when a check fails (the result still carries RV(passed) and RV(failures)).
    type: bool
    default: true
  timeout:
    description: Seconds to wait for a throwaway database container to accept connections.
    type: float
    default: 120
  lock_timeout:
    description: Seconds to wait for another run on the same app to finish.
    type: float
    default: 60
requirements:
  - Docker SDK for Python
  - zstd or gzip (whichever compressed the set); restic for restic sets
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
"""

EXAMPLES = r"""
- name: Prove the newest backup set of every app
  selfhost.rollback.backup_verify:
    app: "{{ item }}"
  loop: "{{ rollback_apps }}"

- name: Only check checksums of one set, and report instead of failing
  selfhost.rollback.backup_verify:
    app: "{{ rollback_apps[0] }}"
    set_id: b-20261122T020705Z-3fa1
    checks: [deep]
    fail_on_mismatch: false
  register: verify
"""

RETURN = r"""
set_id:
  description: The set verified.
  returned: always
  type: str
  sample: b-20261122T020705Z-3fa1
passed:
  description: Whether every check of every item passed.
  returned: always
  type: bool
failures:
  description: What failed, each line naming the item.
  returned: always
  type: list
  elements: str
  sample: ["volume uploads: archive checksum mismatch: stored sha256:12..., manifest says sha256:9a..."]
runs:
  description: The verification runs, as recorded in C(verification.json).
  returned: always
  type: list
  elements: dict
  sample: [{"at": "2026-11-22T02:07:31Z", "kind": "deep", "passed": true, "duration_s": 0.41, "failures": [],
            "checks": [{"item": "uploads", "kind": "checksum", "passed": true, "duration_s": 0.02, "failures": []}]}]
  contains:
    at:
      description: When the run started (UTC).
      type: str
    kind:
      description: The check run, V(deep) or V(test_restore).
      type: str
    passed:
      description: Whether every item passed.
      type: bool
    duration_s:
      description: Seconds the run took.
      type: float
    failures:
      description: What failed, each line naming the item.
      type: list
      elements: str
    checks:
      description: One entry per item of the set.
      type: list
      elements: dict
      contains:
        item:
          description: The item's name.
          type: str
        kind:
          description: V(checksum) for a deep check, V(test_restore) for a test restore.
          type: str
        passed:
          description: Whether the item passed.
          type: bool
        duration_s:
          description: Seconds the item's check took.
          type: float
        failures:
          description: What failed, each line naming the item.
          type: list
          elements: str
        notices:
          description: What the scratch file system could not restore, said but not counted as a failure.
          type: list
          elements: str
          returned: when there is something to say
duration_s:
  description: Seconds all checks took.
  returned: always
  type: float
outcome:
  description:
    - V(passed) when every check passed, V(failed) when one did not (the task fails unless O(fail_on_mismatch=false)).
    - V(failed) when the module could not do its work (the task fails with the same sentence in RV(reasons)).
  returned: always
  type: str
  sample: passed
reasons:
  description:
    - The same sentences as RV(failures) (empty when the set passed).
    - When the verification could not run, the sentence that says why.
  returned: always
  type: list
  elements: str
  sample: []
"""

import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _restic, _sets, _verify
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._module import OPERATOR_FAILURES, AppModule


def argument_spec() -> dict[str, t.Any]:
    return {
        "set_id": {"type": "str"},
        "checks": {"type": "list", "elements": "str", "choices": ["deep", "test_restore"], "default": ["deep", "test_restore"]},
        "fail_on_mismatch": {"type": "bool", "default": True},
        "restic": _restic.restic_option_spec(),
        "timeout": {"type": "float", "default": 120},
        "lock_timeout": {"type": "float", "default": 60},
    }


def verify(module: AppModule) -> dict[str, t.Any]:
    params = module.params
    result = module.result
    result.update(changed=False, set_id=params["set_id"], passed=False, failures=[], runs=[], duration_s=0.0)
    ledger = module.ledger
    restic = _restic.restic_from_params(params["restic"])
    if restic is not None:
        module.cleanup(restic.close)
    client = module.client
    began = time.monotonic()
    with module.lock("backup_verify"):
        entry = _sets.load_set(ledger, params["set_id"])
        result["set_id"] = entry["set_id"]
        if entry["manifest"].get("backend") == "restic" and restic is None:
            raise OperatorError(f"set {entry['set_id']} is stored in restic; give the restic option")
        runs = _verify.verify_set(ledger, entry, params["checks"], client, restic,
                                  record=not module.check_mode, timeout=params["timeout"])
    result.update(
        changed=not module.check_mode,
        runs=runs,
        passed=all(run["passed"] for run in runs),
        failures=[f for run in runs for f in run["failures"]],
        duration_s=round(time.monotonic() - began, 3),
    )
    result.update(outcome="passed" if result["passed"] else "failed", reasons=result["failures"])
    if not result["passed"] and params["fail_on_mismatch"]:
        module.fail(f"backup set {result['set_id']} of app {module.name} failed verification: "
                    f"{'; '.join(result['failures'][:3])}; take a new backup, and do not restore this set")
    return result


def main() -> None:
    module = AppModule(argument_spec(), failure="verification of a backup set of app {name} could not run",
                       errors=OPERATOR_FAILURES,
                       docker_failure="the Docker Engine refused a request ({exc}); check that the database image still exists")
    module.run(verify)


if __name__ == "__main__":
    main()
