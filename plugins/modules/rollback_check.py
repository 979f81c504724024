#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rollback_check
short_description: Say whether an app can go back to a release, before anything changes
version_added: 0.1.0
description:
  - The compatibility gate. Compares a target release (V(previous) or an id) with what
    runs on the host today and returns a verdict, V(ready), V(needs_data_restore) or
    V(blocked), with every reason and the numbers behind it.
  - "Checks: the target's images are here, in the image archive, or pullable from their
    registry; the live schema against the target's (when newer and not additive, which
    verified backup set would restore it, its age and the data written since); engine API
    and Compose versions against what the target recorded; declared version locks; config
    drift (keys only, never values); the retention window of the restore point; free
    space to restore."
  - Read-only. Never fails because of the verdict; use RV(verdict) in the play.
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
  target:
    description:
      - The release to go back to, V(previous) (the newest release before what runs now) or a release id.
    type: str
    default: previous
  allow_pull:
    description: Count images that their registry still serves as available (the registry is asked).
    type: bool
    default: true
  keep_last:
    description: The backup retention's keep-last rule, to say when the restore point will be pruned.
    type: int
  keep_within:
    description: The backup retention's keep-within rule (V(7d), V(36h), V(90m)), to say when the restore point will be pruned.
    type: str
  space_margin:
    description: Free space needed to restore, as a multiple of the backup set's unpacked size.
    type: float
    default: 1.2
  keep_data:
    description:
      - When the gate cannot tell whether the data fits the target (no schema probe, or one that failed), keep today's data
        instead of bringing back the verified set taken under the target.
      - By default (V(false)), unknown is not safe - data that changed since the newest verified set taken under the target
        comes back with the code (verdict V(needs_data_restore)), and RV(data_loss) says what that discards. Data that did not
        change stays either way.
    type: bool
    default: false
  services:
    description:
      - Judge a partial rollback of only these services (and the partners a version lock ties to them); see
        M(selfhost.rollback.switch) O(selfhost.rollback.switch#module:services) for what comes back and what stays.
      - The plan is the C(part) check and RV(partial); a part that cannot come back alone blocks, with the service to add.
      - A partial rollback never restores data - the gate blocks one whose code needs older data (or, with no schema probe,
        may need it, unless O(keep_data)).
    type: list
    elements: str
    default: []
  scope:
    description:
      - What the rollback brings back - V(all), V(config), V(images) or V(artifacts) (see M(selfhost.rollback.switch)
        O(selfhost.rollback.switch#module:scope)). V(config) and V(artifacts) keep the code and so the data as they are.
      - For V(artifacts), an artifact the target recorded but whose copy was not kept blocks.
    type: str
    choices: [all, config, images, artifacts]
    default: all
  check_journal:
    description:
      - First look for an operation that a run left open (its journal, see M(selfhost.rollback.operation)). When
        there is one, judge nothing and return RV(outcome=pending) with the journal in RV(pending), so that the caller
        finishes it first and asks again; when there is none, judge as usual. The rollback role asks this way, which
        spares a separate call before every rollback.
      - Leave it off where the caller's own operation is open (the revert of an upgrade).
    type: bool
    default: false
requirements:
  - Docker SDK for Python 7.0 or newer
  - the Compose v2 CLI plugin (C(docker compose))
seealso:
  - module: selfhost.rollback.release
  - module: selfhost.rollback.backup
  - module: selfhost.rollback.migration_note
"""

EXAMPLES = r"""
- name: Can notes go back to the previous release?
  selfhost.rollback.rollback_check:
    app: "{{ rollback_apps | selectattr('name', 'equalto', 'notes') | first }}"
  register: gate

- name: Show the table
  ansible.builtin.debug:
    var: gate.table

- name: Stop when the target is blocked
  ansible.builtin.fail:
    msg: "{{ gate.reasons | join(' ') }}"
  when: gate.verdict == 'blocked'
"""

RETURN = r"""
verdict:
  description:
    - V(ready) (images and config suffice), V(needs_data_restore) (the data must come back with the code), or V(blocked).
    - V(null) when O(check_journal) found an open operation (RV(outcome=pending)).
  returned: success
  type: str
  sample: needs_data_restore
reasons:
  description:
    - Every finding that is not plain ok, each one sentence with its numbers.
    - On a failure, the sentence that says why the check could not run.
  returned: always
  type: list
  elements: str
outcome:
  description:
    - The same word as RV(verdict), for playbooks that branch on every module's C(outcome).
    - V(pending) with O(check_journal) when an operation is still open (nothing was judged; see RV(pending)).
    - V(failed) when the check could not run (the task fails).
  returned: always
  type: str
  sample: ready
pending:
  description:
    - With O(check_journal), the open journal of an operation that a run left (as M(selfhost.rollback.operation) returns
      it), or V(null) when there is none. Whether its run is gone or still going is told by M(selfhost.rollback.operation)
      on the control node.
  returned: success
  type: dict
  sample: {"op_id": "20261207T170102Z-4b1f-rollback", "kind": "rollback", "phase": "switching", "return_to": "r-20261207T165800Z-0c1d"}
blocking:
  description: The findings that block the rollback (empty unless RV(verdict) is V(blocked)).
  returned: success
  type: list
  elements: str
resolved:
  description:
    - How O(target) was resolved - C(requested), C(repeat) (true when a rollback to V(previous) was just done and this
      run returns to the same release, so that it changes nothing) and C(reasons).
    - V(previous) is the release before the one that runs now in the app's history; see M(selfhost.rollback.operation).
  returned: success
  type: dict
  contains:
    requested:
      description: O(target) as given.
      type: str
    repeat:
      description: Whether a rollback to V(previous) was just done and this run returns to the same release.
      type: bool
    reasons:
      description: Sentences that say how V(previous) was resolved (empty when there is nothing to add).
      type: list
      elements: str
target:
  description: The target release (id, when recorded, schema, images).
  returned: success
  type: dict
  contains:
    release_id:
      description: Release id.
      type: str
    recorded_at:
      description: When it was recorded (UTC).
      type: str
    schema_version:
      description: Schema version recorded with it.
      type: str
    images:
      description: Service to image reference (digest-pinned when it has a registry digest).
      type: dict
live:
  description: What runs now (matching release id if recorded, schema, images).
  returned: success
  type: dict
  contains:
    release_id:
      description: The recorded release whose content matches what runs now (V(null) when none does).
      type: str
    schema_version:
      description: The schema version now (answer of O(app.schema_probe), or V(null)).
      type: str
    images:
      description: Service to image reference (digest-pinned when it has a registry digest).
      type: dict
target_is_live:
  description: Whether the target is exactly what runs now (nothing to roll back); for a partial rollback, whether nothing of the part differs.
  returned: success
  type: bool
partial:
  description:
    - For a partial rollback (O(services) or O(scope)), its plan - C(scope), C(services), C(partners), C(back), C(kept), C(blocking),
      C(actions) (see M(selfhost.rollback.switch) RV(selfhost.rollback.switch#module:partial)); V(null) otherwise.
  returned: success
  type: dict
  contains:
    scope:
      description: The scope, as in O(scope).
      type: str
    services:
      description: The part, with the partners version locks add (empty for V(artifacts)).
      type: list
      elements: str
    partners:
      description: One sentence per group of partners a version lock adds.
      type: list
      elements: str
    images:
      description: Per service of the target, the image ID it would run after the switch.
      type: dict
      returned: unless O(scope=artifacts)
    back:
      description: What would come back, C(images) (services), C(env) (keys) and C(files) (project files), each a list.
      type: dict
    kept:
      description:
        - What would stay as it is now, C(env) and C(files) (each name with why it stays) and C(images) (the services that keep theirs).
      type: dict
    images_file:
      description:
        - The collection's images file, when it would hold a service back (an image line shared with a service that stays) or
          holds one now - C(path), C(services), C(hold), C(release), C(write) (see M(selfhost.rollback.switch)); V(null) otherwise.
      type: dict
      returned: unless O(scope=artifacts)
    blocking:
      description: Why the partial rollback cannot be done (empty when it can).
      type: list
      elements: str
    actions:
      description: The plan in sentences.
      type: list
      elements: str
    artifacts:
      description:
        - The artifacts' plan, C(put_back) (path artifacts to put back from the copy kept), C(by_hand) (command artifacts the
          operator must put back), C(same) (names of the artifacts that already match) and C(blocking).
      type: dict
      returned: for O(scope=artifacts)
compatibility:
  description:
    - How the target's code relates to today's data, from the schema versions - V(same), V(compatible) (newer by additive
      steps only), V(newer_code) (the target migrates it forward), V(older_code) (the data must come back), or V(unknown)
      (no schema probe, or it failed; see O(keep_data)).
  returned: success
  type: str
  sample: unknown
restore_set:
  description: The verified backup set that would bring the data back (V(null) when none is needed or none qualifies).
  returned: success
  type: dict
  sample: {set_id: b-20261122T020705Z-1a2b, age_s: 640, release_id: r-20261122T020500Z-9f8e7d6c, schema_version: "2"}
  contains:
    set_id:
      description: The set's id.
      type: str
    created_at:
      description: When it was taken (UTC).
      type: str
    age_s:
      description: Its age in seconds.
      type: int
    release_id:
      description: The release it was taken under.
      type: str
    schema_version:
      description: The app's schema version when it was taken.
      type: str
    bytes:
      description: Bytes stored for it.
      type: int
data_loss:
  description:
    - What restoring RV(restore_set) would discard today - the set's age, rows per table then and now, files added, changed
      or removed since, and a C(summary) sentence (the restore module's RV(selfhost.rollback.restore#module:lost)).
  returned: success
  type: dict
  contains:
    set_id:
      description: The set that would be restored.
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
      description: One sentence that says what would be discarded.
      type: str
checks:
  description: One entry per check with C(check), C(level) (ok, warn, restore, block), C(detail) and its data.
  returned: success
  type: list
  elements: dict
  contains:
    check:
      description:
        - The check's name, V(part), V(release), V(images), V(schema), V(runtime), V(version locks), V(config drift),
          V(window) or V(space).
      type: str
    level:
      description: V(ok), V(warn), V(restore) (the data must come back) or V(block).
      type: str
    detail:
      description: What was found, in one sentence with its numbers.
      type: str
    rows:
      description: Per service, where its image is, with C(service), C(image_id), C(ref), C(source), C(run_ref) and, from the archive, C(archive).
      type: list
      elements: dict
      returned: for the V(images) check
    live:
      description: The schema version now.
      type: str
      returned: for the V(schema) check
    target:
      description: The target's schema version.
      type: str
      returned: for the V(schema) check
    keep_data:
      description: V(true) when today's data is kept as asked with O(keep_data), although the schemas cannot be compared.
      type: bool
      returned: for the V(schema) check, when O(keep_data) kept the data
    missing_now:
      description: Env file keys the target had that are missing now.
      type: list
      elements: str
      returned: for the V(config drift) check
    added_since:
      description: Env file keys added since the target.
      type: list
      elements: str
      returned: for the V(config drift) check
    changed:
      description: Env file keys with other values now.
      type: list
      elements: str
      returned: for the V(config drift) check
    sets_newer:
      description: How many backup sets are newer than the restore point.
      type: int
      returned: for the V(window) check
    removed_after_sets:
      description: After how many more backups O(keep_last) prunes the restore point.
      type: int
      returned: for the V(window) check, with O(keep_last)
    removed_after:
      description: When O(keep_within) prunes the restore point (UTC).
      type: str
      returned: for the V(window) check, with O(keep_within)
    free:
      description: Bytes free where the Docker Engine keeps its data.
      type: int
      returned: for the V(space) check, when a data restore is needed
    needed:
      description: Bytes a restore needs (the set's size times O(space_margin)).
      type: int
      returned: for the V(space) check, when a data restore is needed
table:
  description: The checks as a short fixed-width table, for the task output.
  returned: success
  type: list
  elements: str
"""

import os
import shutil
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _artifacts, _gate, _operation, _partial, _project
from ansible_collections.selfhost.rollback.plugins.module_utils._app import PINS_FILE
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import DockerException
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._project import secret_values
from ansible_collections.selfhost.rollback.plugins.module_utils._images import plan_load, read_index
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils._release import (
    content_digest,
    find_by_digest,
    known_ids,
    read_salt,
    releases,
    running_state,
    unknown_release,
)


def image_check(client: t.Any, ledger: Ledger, target: dict[str, t.Any], allow_pull: bool,
                only: list[str] | None = None) -> dict[str, t.Any]:
    """Where each image of the target is: on the engine, in the archive, or served by its registry (asked)."""
    rows = [r for r in plan_load(client, ledger, target, allow_pull) if only is None or r["service"] in only]
    for row in rows:
        if row["source"] == "registry":
            try:
                client.images.get_registry_data(row["ref"])
            except DockerException:
                archive = _archive_for(ledger, row["image_id"])
                row.update({"source": "archive", "archive": archive} if archive else {"source": "missing"})
    return _gate.images_check(rows)


def _archive_for(ledger: Ledger, image_id: str) -> str | None:
    entry = read_index(ledger)["archives"].get(image_id)
    if entry and os.path.isfile(ledger.path("images", entry["file"])):
        return entry["file"]
    return None


def lost_by(client: t.Any, app: dict[str, t.Any], entry: dict[str, t.Any]) -> dict[str, t.Any]:
    """What restoring ``entry`` into the app would discard today (see the restore module's ``lost``)."""
    from ansible_collections.selfhost.rollback.plugins.module_utils import _restore

    return _restore.what_is_lost(app, client, _restore.plan_restore(app, app, client, entry), entry)


def space_check(client: t.Any, ledger: Ledger, entry: dict[str, t.Any] | None, margin: float) -> dict[str, t.Any]:
    """Free space where the engine keeps its data, against what restoring ``entry`` needs (nothing asked without one)."""
    if entry is None:
        return _gate.space_check(None)
    root = client.info().get("DockerRootDir") or "/var/lib/docker"
    path = root if os.path.isdir(root) else ledger.root
    return _gate.space_check(_gate.restore_bytes(entry, margin), path, shutil.disk_usage(path).free)


def part_plan(module: AppModule, target: dict[str, t.Any], live: dict[str, t.Any]) -> dict[str, t.Any]:
    """The partial rollback's plan (``_partial.plan``, or ``_artifacts.plan`` for scope artifacts)."""
    app, ledger, params = module.app, module.ledger, module.params
    if params["scope"] == "artifacts":
        return _partial.artifacts_part(target, _artifacts.plan_now(app, ledger, target))
    files, _warning = _project.release_files(ledger, app, target)
    images = {n: {"image_ref": s.get("image_ref"), "image_id": s.get("image_id")} for n, s in (live.get("services") or {}).items()}
    held = _partial.images_file_of(app, ledger.path(PINS_FILE))
    structure = (live.get("compose") or {}).get("config") or {}
    if held and held["held"]:  # what runs is merged with the images file; the plan reads the lines of the project's own files
        structure = _partial.project_structure(app, read_salt(ledger) or b"", secret_values(app))
    partial = _partial.plan(app, target, files, _project.read_files(_project.project_files(app)), structure, images,
                            params["services"], params["scope"], os.environ, held)
    partial.pop("files")
    return partial


def resolve(module: AppModule, history: list[dict[str, t.Any]], live_id: str | None) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """How ``target`` resolves (``_operation.resolve_target``) and the release record it names."""
    app, ledger, requested = module.app, module.ledger, module.params["target"]
    resolved = _operation.resolve_target(ledger, requested, live_id)
    target = _gate.pick_target(history, resolved["release_id"])
    if target is None and requested == "previous":
        raise OperatorError(f"app {app['name']}: there is no release before the one running now (recorded: {known_ids(ledger)})")
    if target is None:
        raise unknown_release(app["name"], requested, ledger)
    return resolved, target


def data_back(module: AppModule, target: dict[str, t.Any], history: list[dict[str, t.Any]], additive: list[str], why: str,
              schema: dict[str, t.Any], unknown: bool) -> dict[str, t.Any]:
    """The ``schema`` check when the data may have to come back: the verified set that would, what it discards, its window."""
    # the backup layer (and what it imports) is loaded only when the data may have to come back:
    # an image-only rollback asks the engine and nothing else
    from ansible_collections.selfhost.rollback.plugins.module_utils._retention import parse_duration
    from ansible_collections.selfhost.rollback.plugins.module_utils._sets import is_verified, list_sets, summarize

    params = module.params
    sets = list_sets(module.ledger)
    candidates = _gate.restore_candidates(sets, target, history, additive, under_target_only=unknown)
    chosen = _gate.choose_set(candidates, is_verified)
    loss = lost_by(module.client, module.app, chosen) if chosen is not None else None
    summary = summarize(chosen) if chosen is not None else None
    found, restore_set = _gate.restore_check(why, schema, target["release_id"], unknown, candidates, chosen, loss, summary)
    if restore_set is None or chosen is None:
        return {"check": found, "entry": None, "loss": None, "restore_set": None, "window": None}
    keep_within = int(parse_duration(params["keep_within"]).total_seconds()) if params["keep_within"] else None
    return {"check": found, "entry": chosen, "loss": loss, "restore_set": restore_set,
            "window": _gate.window_check(chosen, sets, params["keep_last"], keep_within)}


def judge(module: AppModule) -> dict[str, t.Any]:
    app, params, ledger = module.app, module.params, module.ledger
    journal = _operation.pending(ledger) if params["check_journal"] else None
    if journal is not None:
        said = (f"the {journal.get('kind')} {journal.get('op_id')} is still open (phase '{journal.get('phase')}'); "
                "finish it before judging a rollback")
        return {"changed": False, "verdict": None, "outcome": "pending", "reasons": [said], "pending": journal}
    history = releases(ledger)
    if not history:
        raise OperatorError(f"app {app['name']}: no release is recorded in {ledger.root}; record one with "
                            "selfhost.rollback.release (the pre_upgrade playbook does) before asking about a rollback")
    client = module.client
    live = running_state(client, app, read_salt(ledger) or b"", secret_values(app))
    live_digest = content_digest(live)
    live_record = find_by_digest(ledger, live_digest)
    live_id = live_record["release_id"] if live_record else None
    resolved, target = resolve(module, history, live_id)
    target_is_live = target.get("content_digest") == live_digest
    partial = part_plan(module, target, live) if _partial.is_partial(params["services"], params["scope"]) else None
    back_images = partial["back"]["images"] if partial is not None else None

    checks = [_gate.part_check(partial, params["services"])] if partial is not None else []
    same = _gate.release_check(target["release_id"], target_is_live)
    if same is not None:
        checks.append(same)
    if back_images is None or back_images:
        checks.append(image_check(client, ledger, target, params["allow_pull"], back_images))
    additive = (app.get("schema_probe") or {}).get("additive") or []
    relation, why = _gate.schema_relation(live.get("schema_version"), target.get("schema_version"), additive)
    schema = {"live": live.get("schema_version"), "target": target.get("schema_version")}
    unknown = _gate.data_unknown(relation, target_is_live)
    found = _gate.schema_check(relation, why, schema, target["release_id"], unknown, params["keep_data"], params["scope"], back_images)
    if found is None:  # the data may have to come back: ask the backup layer
        data = data_back(module, target, history, additive, why, schema, unknown)
    else:
        data = {"check": found, "entry": None, "loss": None, "restore_set": None, "window": None}
    checks.append(data["check"])
    checks.append(_gate.runtime_check(target.get("runtime") or {}, live.get("runtime") or {}))
    locks = _gate.locks_check(target.get("services") or {}, app.get("version_locks") or [], partial is not None)
    if locks is not None:
        checks.append(locks)
    checks.append(_gate.drift_check(target.get("config_fingerprint") or {}, live.get("config_fingerprint") or {}))
    if data["window"] is not None:
        checks.append(data["window"])
    checks.append(space_check(client, ledger, data["entry"], params["space_margin"]))

    told = _gate.verdict_of(checks)
    return {
        "changed": False,
        **told,
        "resolved": {"requested": params["target"], "repeat": resolved["repeat"], "reasons": resolved["reasons"]},
        "target": {"release_id": target["release_id"], "recorded_at": target.get("recorded_at"),
                   "schema_version": target.get("schema_version"),
                   "images": {n: s.get("pinned_ref") or s.get("image_ref") for n, s in (target.get("services") or {}).items()}},
        "live": {"release_id": live_id, "schema_version": live.get("schema_version"),
                 "images": {n: s.get("pinned_ref") or s.get("image_ref") for n, s in (live.get("services") or {}).items()}},
        "target_is_live": target_is_live or (partial is not None and not _partial.changes(partial)),
        "partial": partial,
        "restore_set": data["restore_set"],
        "data_loss": data["loss"],
        "compatibility": relation,
        "checks": checks,
        "table": [f"rollback of {app['name']} to {target['release_id']}: {told['verdict']}"] + _gate.render_table(checks),
        "pending": None,
    }


def main() -> None:
    module = AppModule({
        "target": {"type": "str", "default": "previous"},
        "allow_pull": {"type": "bool", "default": True},
        "keep_last": {"type": "int"},
        "keep_within": {"type": "str"},
        "space_margin": {"type": "float", "default": 1.2},
        "keep_data": {"type": "bool", "default": False},
        "services": {"type": "list", "elements": "str", "default": []},
        "scope": {"type": "str", "default": "all", "choices": list(_partial.SCOPES)},
        "check_journal": {"type": "bool", "default": False},
    })
    module.run(judge)


if __name__ == "__main__":
    main()
