#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: operation
short_description: Open, advance, take over and close an app's upgrade or rollback, and read where it stands
version_added: 0.2.0
description:
  - One upgrade or rollback of one app is an operation. Its journal says what is under way, which run owns it
    and which release it returns to, so that a run killed halfway is finished by the next one and a run still
    going on is left alone. Closing keeps the record under C(operations/), as C(last_operation.json), and moves
    the app's release history, which defines what V(previous) means for rollback, revert, drill and report.
  - The roles of this collection reach the journal only through this module; it runs under the app's lock and
    writes atomically.
  - "O(state=inspect) reads: the open journal (if any) and whether its run is this one, another one still going on
    on this control node, gone, or on another control node (decided on the control node by the action plugin of
    the same name); the last operation; the current and previous releases; a fleet run's record (O(run_id))."
  - "O(state=open), O(state=advance), O(state=adopt) and O(state=close) are the transitions; each refuses, with one
    sentence, what the rules do not allow (a second open operation, a phase backwards, an outcome a kind cannot
    have, a journal owned by another run)."
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
extends_documentation_fragment:
  - selfhost.rollback.app
attributes:
  action:
    support: full
    description: An action plugin on the control node names the run (see the P(selfhost.rollback.run_owner#lookup) lookup).
  check_mode:
    support: full
    description: Transitions are computed and returned, nothing is written.
  diff_mode:
    support: none
    description: A journal is a record, not a file an operator edits; RV(operation) shows it whole.
  idempotent:
    support: partial
    description: O(state=inspect) never changes anything; every other state records a new fact about an operation.
options:
  state:
    description: What to do.
    type: str
    choices: [inspect, open, advance, adopt, close]
    default: inspect
  kind:
    description: For O(state=open), the kind of operation.
    type: str
    choices: [upgrade, rollback]
  op_id:
    description: The operation to advance, adopt or close; defaults to the open one.
    type: str
  phase:
    description: For O(state=advance), the phase the operation enters (C(switching), C(judging), C(reverting)).
    type: str
  outcome:
    description:
      - For O(state=close), how the operation ended.
      - An upgrade ends as C(upgraded), C(reverted), C(revert_failed), C(recovered) or C(recovery_failed); a rollback as
        C(rolled_back), C(failed), C(recovered) or C(recovery_failed).
    type: str
  fields:
    description:
      - Facts to keep in the journal and the record (for example C(release_before), C(return_to), C(backup_set),
        C(restore_set), C(change), C(run_id), C(failure), C(data_restored), C(lost), C(figures)).
      - Never put a secret here; the record is kept on disk.
    type: dict
    default: {}
  report_failure:
    description:
      - For O(state=close), fail the task after closing, with one sentence that says what happened and what the
        operator can do; the result keeps RV(outcome) so that a playbook can branch on it.
    type: bool
    default: false
  run_id:
    description: For O(state=inspect), a fleet upgrade run whose record to return as RV(run).
    type: str
  take_over:
    description: For O(state=inspect), treat an operation that another control node opened as interrupted.
    type: bool
    default: false
  run_owner:
    description:
      - This run's identity. The action plugin fills it in; do not set it.
    type: dict
  lock_timeout:
    description: Seconds to wait for another run holding the app's lock.
    type: float
    default: 60
seealso:
  - plugin: selfhost.rollback.run_owner
    plugin_type: lookup
"""

EXAMPLES = r"""
- name: Finish or refuse what another run left
  selfhost.rollback.operation:
    app: "{{ app }}"
  register: where

- name: Open the upgrade
  selfhost.rollback.operation:
    app: "{{ app }}"
    state: open
    kind: upgrade
    fields:
      release_before: "{{ before }}"
      return_to: "{{ before }}"
  register: op

- name: Close it
  selfhost.rollback.operation:
    app: "{{ app }}"
    state: close
    op_id: "{{ op.operation.op_id }}"
    outcome: upgraded
    fields:
      release_after: "{{ after }}"
"""

RETURN = r"""
outcome:
  description:
    - For O(state=inspect), C(clear) (no operation open), C(interrupted) (its run is gone; finish it), C(busy)
      (another run is doing it; the task fails) or C(own) (this run opened it).
    - For a transition, the phase or outcome the operation has now.
  returned: always
  type: str
  sample: clear
reasons:
  description: Sentences behind the outcome.
  returned: always
  type: list
  elements: str
operation:
  description: The operation's record after the transition (or the open journal, for O(state=inspect)).
  returned: when an operation is open or was changed
  type: dict
  contains:
    op_id:
      description: The operation's id, C(<UTC time>-<kind>).
      type: str
    kind:
      description: V(upgrade) or V(rollback).
      type: str
    app:
      description: The app's name.
      type: str
    phase:
      description: The phase it is in (V(switching), V(judging), V(reverting), V(recovering)), V(done) once closed.
      type: str
    started_at:
      description: When it was opened (UTC).
      type: str
    started_ts:
      description: When it was opened, in seconds since the epoch.
      type: float
    owner:
      description:
        - The run that holds it, C(controller) (the control node's host name), C(pid) and C(started) (its ansible-playbook
          process and that process's start time), and C(boot_id) (the control node's boot).
      type: dict
    return_to:
      description: The release it returns to on failure (from O(fields)).
      type: str
    interrupted_in:
      description: The phase it was in when its run was gone.
      type: str
      returned: once O(state=adopt) took it over
    previous_owner:
      description: The run that held it before, with the same keys as C(owner).
      type: dict
      returned: once O(state=adopt) took it over
    outcome:
      description: How it ended (see O(outcome)).
      type: str
      returned: once closed
    finished_at:
      description: When it was closed (UTC).
      type: str
      returned: once closed
    release_after:
      description: The release the app runs after it (from O(fields)); moves the release history on V(upgraded), V(reverted), V(rolled_back) and V(recovered).
      type: str
      returned: when given in O(fields)
    run_id:
      description: The fleet run it belongs to (from O(fields)); an upgrade closed as V(upgraded) records what the run changed.
      type: str
      returned: when given in O(fields)
    figures:
      description: Figures from O(fields), and once closed C(seconds), how long the whole operation took.
      type: dict
      returned: once closed, or when given in O(fields)
result:
  description:
    - For O(state=close), the app's result as a playbook keeps it (the upgrade role's C(upgrade_result)), built from the
      closed record so that no role restates it.
  returned: after O(state=close)
  type: dict
  contains:
    app:
      description: The app's name.
      type: str
    outcome:
      description: How the operation ended (see O(outcome)).
      type: str
    op_id:
      description: The operation's id.
      type: str
    release_before:
      description: The release that ran before it (from O(fields)).
      type: str
    release_after:
      description: The release that runs after it; null when it ended as a failure.
      type: str
    reasons:
      description: Why it did not go as planned, from the C(failure) and C(revert_failure) fields; empty otherwise.
      type: list
      elements: str
    data_restored:
      description: The backup set that came back with the code, or null (when it went back).
      type: str
      returned: when the operation went back (V(reverted), V(rolled_back), V(recovered))
    lost:
      description: What the restore lost (when it went back).
      type: str
      returned: when the operation went back
  sample: {"app": "notes", "outcome": "reverted", "op_id": "20261122T020705Z-upgrade", "release_before": "r-20261122T020705Z-3f9a61c2",
           "release_after": "r-20261122T020705Z-3f9a61c2", "reasons": ["health gate: error rate 0.4 > 0.05"], "data_restored": null, "lost": null}
pending:
  description: The open journal, for O(state=inspect); null when none is open.
  returned: always
  type: dict
  contains:
    op_id:
      description: The operation's id, C(<UTC time>-<kind>).
      type: str
    kind:
      description: V(upgrade) or V(rollback).
      type: str
    app:
      description: The app's name.
      type: str
    phase:
      description: The phase it is in (V(switching), V(judging), V(reverting), V(recovering)).
      type: str
    started_at:
      description: When it was opened (UTC).
      type: str
    started_ts:
      description: When it was opened, in seconds since the epoch.
      type: float
    owner:
      description:
        - The run that holds it, C(controller) (the control node's host name), C(pid) and C(started) (its ansible-playbook
          process and that process's start time), and C(boot_id) (the control node's boot).
      type: dict
    return_to:
      description: The release it returns to on failure (from O(fields)).
      type: str
    interrupted_in:
      description: The phase it was in when its run was gone.
      type: str
      returned: once O(state=adopt) took it over
    previous_owner:
      description: The run that held it before, with the same keys as C(owner).
      type: dict
      returned: once O(state=adopt) took it over
last:
  description: The last finished operation's record.
  returned: when O(state=inspect)
  type: dict
  contains:
    op_id:
      description: The operation's id, C(<UTC time>-<kind>).
      type: str
    kind:
      description: V(upgrade) or V(rollback).
      type: str
    app:
      description: The app's name.
      type: str
    phase:
      description: V(done).
      type: str
    started_at:
      description: When it was opened (UTC).
      type: str
    started_ts:
      description: When it was opened, in seconds since the epoch.
      type: float
    owner:
      description:
        - The run that held it last, C(controller) (the control node's host name), C(pid) and C(started) (its ansible-playbook
          process and that process's start time), and C(boot_id) (the control node's boot).
      type: dict
    return_to:
      description: The release it returns to on failure (from O(fields)).
      type: str
    interrupted_in:
      description: The phase it was in when its run was gone.
      type: str
      returned: when O(state=adopt) took it over
    previous_owner:
      description: The run that held it before, with the same keys as C(owner).
      type: dict
      returned: when O(state=adopt) took it over
    outcome:
      description: How it ended (see O(outcome)).
      type: str
    finished_at:
      description: When it was closed (UTC).
      type: str
    release_after:
      description: The release the app runs after it (from O(fields)); moves the release history on V(upgraded), V(reverted), V(rolled_back) and V(recovered).
      type: str
      returned: when given in O(fields)
    run_id:
      description: The fleet run it belongs to (from O(fields)); an upgrade closed as V(upgraded) records what the run changed.
      type: str
      returned: when given in O(fields)
    figures:
      description: Figures from O(fields), and once closed C(seconds), how long the whole operation took.
      type: dict
      returned: once closed, or when given in O(fields)
current:
  description: The release recorded as running now.
  returned: when O(state=inspect)
  type: str
previous:
  description: The release before the current one in the app's history (what V(previous) means).
  returned: when O(state=inspect)
  type: str
run:
  description: What fleet run O(run_id) changed on this app (C(release_before), C(release_after)); null when it left it alone.
  returned: when O(run_id) is set
  type: dict
  contains:
    run_id:
      description: The fleet run.
      type: str
    release_before:
      description: The release the app ran before the run upgraded it.
      type: str
    release_after:
      description: The release the run upgraded it to.
      type: str
    op_id:
      description: The upgrade operation that did it.
      type: str
"""

import contextlib
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _operation
from ansible_collections.selfhost.rollback.plugins.module_utils._app import APP_NAME_RE, AppError, validate_app
from ansible_collections.selfhost.rollback.plugins.module_utils._project import secret_values
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils._release import current_release_id
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule


def inspect(module: AppModule, ledger: Ledger) -> dict[str, t.Any]:
    journal = _operation.pending(ledger)
    current = current_release_id(ledger)
    result: dict[str, t.Any] = {
        "changed": False, "outcome": "pending" if journal else "clear", "reasons": [], "pending": journal,
        "operation": journal, "last": _operation.last(ledger), "current": current,
        "previous": _operation.previous_release(ledger, current),
    }
    if module.params["run_id"]:
        result["run"] = _operation.run_record(ledger, module.params["run_id"])
    return result


def transition(module: AppModule, ledger: Ledger) -> dict[str, t.Any]:
    params = module.params
    owner = params["run_owner"] or {}
    write = not module.check_mode
    state, fields = params["state"], params["fields"] or {}
    if state == "open":
        if not params["kind"]:
            raise _operation.OperationError("state=open needs kind (upgrade or rollback)")
        record = _operation.open_operation(ledger, params["kind"], owner, fields, write)
    elif state == "advance":
        if not params["phase"]:
            raise _operation.OperationError("state=advance needs phase")
        record = _operation.advance(ledger, params["op_id"], owner, params["phase"], fields, write)
    elif state == "adopt":
        record = _operation.adopt(ledger, params["op_id"], owner, write)
    else:
        if not params["outcome"]:
            raise _operation.OperationError("state=close needs outcome")
        record = _operation.close(ledger, params["op_id"], owner, params["outcome"], fields, write)
    reasons = [r for r in (record.get("reasons") or []) if isinstance(r, str)]
    result = {"changed": True, "outcome": record.get("outcome") or record["phase"], "reasons": reasons,
              "operation": record, "pending": None if state == "close" else record}
    if state == "close":
        result["result"] = _operation.result_of(record)
    return result


def operate(module: AppModule) -> dict[str, t.Any]:
    params = module.params
    if not APP_NAME_RE.match(module.name or ""):
        raise AppError(f"app name {module.name!r} is not usable: use lower-case letters, digits, '-' and '_'")
    # the journal needs only the ledger, so that a broken project never blocks recovery; the project, when it
    # is there, gives the env file's secrets that no record or message may carry
    with contextlib.suppress(AppError, OSError, UnicodeDecodeError):
        module.add_secrets(*secret_values(validate_app(params["app"])))
    ledger = Ledger(params["store"], module.name)
    if params["state"] == "inspect":
        return inspect(module, ledger)
    if not params["run_owner"]:
        raise _operation.OperationError("the run's identity is missing: call this module as a task (its action "
                                        "plugin names the run), not with ansible -m")
    with ledger.lock(params["lock_timeout"], purpose=f"operation {params['state']}"):
        result = transition(module, ledger)
    if params["report_failure"] and params["state"] == "close":
        module.fail(_operation.failure_sentence(result["operation"]), **result)
    return result


def main() -> None:
    module = AppModule(
        {
            "state": {"type": "str", "choices": ["inspect", "open", "advance", "adopt", "close"], "default": "inspect"},
            "kind": {"type": "str", "choices": ["upgrade", "rollback"]},
            "op_id": {"type": "str"},
            "phase": {"type": "str"},
            "outcome": {"type": "str"},
            "fields": {"type": "dict", "default": {}},
            "report_failure": {"type": "bool", "default": False},
            "run_id": {"type": "str"},
            "take_over": {"type": "bool", "default": False},
            "run_owner": {"type": "dict"},
            "lock_timeout": {"type": "float", "default": 60},
        },
        docker=False,
    )
    module.run(operate)


if __name__ == "__main__":
    main()
