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
from ansible_collections.selfhost.rollback.plugins.module_utils._common import DockerException, OperatorError, secret_values
from ansible_collections.selfhost.rollback.plugins.module_utils._images import plan_load, read_index
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils._release import content_digest, read_salt, releases, running_state


def check(level: str, name: str, detail: str, **data: t.Any) -> dict[str, t.Any]:
    return {"check": name, "level": level, "detail": detail, **data}


def image_check(client: t.Any, ledger: Ledger, target: dict[str, t.Any], allow_pull: bool,
                only: list[str] | None = None) -> dict[str, t.Any]:
    rows = [r for r in plan_load(client, ledger, target, allow_pull) if only is None or r["service"] in only]
    for row in rows:
        if row["source"] == "registry":
            try:
                client.images.get_registry_data(row["ref"])
            except DockerException:
                archive = _archive_for(ledger, row["image_id"])
                row.update({"source": "archive", "archive": archive} if archive else {"source": "missing"})
    missing = [r for r in rows if r["source"] in ("missing", "unknown")]
    sources = ", ".join(f"{r['service']} {r['source']}" for r in rows)
    if missing:
        names = ", ".join(f"{r['service']} ({r['ref']})" for r in missing)
        return check("block", "images", f"not available anywhere: {names}; they are not on this engine, not in the image archive "
                                        "and not pullable", rows=rows)
    return check("ok", "images", f"all available: {sources}", rows=rows)


def _archive_for(ledger: Ledger, image_id: str) -> str | None:
    entry = read_index(ledger)["archives"].get(image_id)
    if entry and os.path.isfile(ledger.path("images", entry["file"])):
        return entry["file"]
    return None


def lost_by(client: t.Any, app: dict[str, t.Any], entry: dict[str, t.Any]) -> dict[str, t.Any]:
    """What restoring ``entry`` into the app would discard today (see the restore module's ``lost``)."""
    from ansible_collections.selfhost.rollback.plugins.module_utils import _restore

    return _restore.what_is_lost(app, client, _restore.plan_restore(app, app, client, entry), entry)


def window_of(entry: dict[str, t.Any], sets: list[dict[str, t.Any]], keep_last: int | None, keep_within: int | None) -> dict[str, t.Any]:
    """When the retention rules will prune the restore point."""
    window = _gate.window_closes(entry, sets, keep_last, keep_within)
    parts = []
    if "removed_after_sets" in window:
        parts.append(f"pruned after {window['removed_after_sets']} more backup(s)")
    if "removed_after" in window:
        parts.append(f"pruned after {window['removed_after']}")
    return check("warn" if window.get("removed_after_sets") == 1 else "ok", "window",
                 "restore point " + ("; ".join(parts) if parts else "kept until retention rules are given"), **window)


def space_check(client: t.Any, ledger: Ledger, entry: dict[str, t.Any] | None, margin: float) -> dict[str, t.Any]:
    if entry is None:
        return check("ok", "space", "no data restore needed")
    needed = int(sum(int(i.get("raw_bytes") or i.get("bytes") or 0) for i in entry["manifest"].get("items", [])) * margin)
    root = client.info().get("DockerRootDir") or "/var/lib/docker"
    path = root if os.path.isdir(root) else ledger.root
    free = shutil.disk_usage(path).free
    detail = f"{free // 1048576} MB free under {path}, {needed // 1048576} MB needed to restore"
    if free < needed:
        return check("block", "space", f"not enough space: {detail}; free space before rolling back", free=free, needed=needed)
    return check("ok", "space", detail, free=free, needed=needed)


def part_check(module: AppModule, target: dict[str, t.Any], live: dict[str, t.Any], checks: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    """The partial rollback's plan (``_partial.plan``, or ``_artifacts.plan`` for scope artifacts) as one check."""
    app, ledger, params = module.app, module.ledger, module.params
    if params["scope"] == "artifacts":
        partial = _partial.artifacts_part(target, _artifacts.plan_now(app, ledger, target))
    else:
        files, _warning = _project.release_files(ledger, app, target)
        images = {n: {"image_ref": s.get("image_ref"), "image_id": s.get("image_id")} for n, s in (live.get("services") or {}).items()}
        held = _partial.images_file_of(app, ledger.path(PINS_FILE))
        structure = (live.get("compose") or {}).get("config") or {}
        if held and held["held"]:  # what runs is merged with the images file; the plan reads the lines of the project's own files
            structure = _partial.project_structure(app, read_salt(ledger) or b"", secret_values(app))
        partial = _partial.plan(app, target, files, _project.read_files(_project.project_files(app)), structure, images,
                                params["services"], params["scope"], os.environ, held)
        partial.pop("files")
    what = f"scope {partial['scope']}" + (f", services {', '.join(partial['services'] or params['services'])}" if params["services"] else "")
    if partial["blocking"]:
        checks.append(check("block", "part", f"{what}: " + "; ".join(partial["blocking"])))
    else:
        told = partial["partners"] + partial["actions"] + partial.get("by_hand", [])
        checks.append(check("ok" if not partial.get("by_hand") else "warn", "part", f"{what}: " + ("; ".join(told) or "nothing differs")))
    return partial


def judge(module: AppModule) -> dict[str, t.Any]:
    app = module.app
    params = module.params
    ledger = module.ledger
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
    salt = read_salt(ledger) or b""
    live = running_state(client, app, salt, secret_values(app))
    live_digest = content_digest(live)
    live_id = next((r["release_id"] for r in reversed(history) if r.get("content_digest") == live_digest), None)
    resolved = _operation.resolve_target(ledger, params["target"], live_id)
    target = _gate.pick_target(history, resolved["release_id"])
    if target is None:
        known = ", ".join(r["release_id"] for r in history[-5:])
        if params["target"] == "previous":
            raise OperatorError(f"app {app['name']}: there is no release before the one running now (recorded: {known})")
        raise OperatorError(f"app {app['name']}: release {params['target']} is not in the ledger; recorded releases: {known}")
    additive = (app.get("schema_probe") or {}).get("additive") or []
    checks: list[dict[str, t.Any]] = []
    scope, part = params["scope"], params["services"]
    partial = None
    if _partial.is_partial(part, scope):
        partial = part_check(module, target, live, checks)

    if target.get("content_digest") == live_digest:
        checks.append(check("ok", "release", f"{target['release_id']} is what runs now; nothing to roll back"))
    if partial is None or partial["back"]["images"]:
        checks.append(image_check(client, ledger, target, params["allow_pull"],
                                  partial["back"]["images"] if partial is not None else None))

    relation, why = _gate.schema_relation(live.get("schema_version"), target.get("schema_version"), additive)
    restore_entry, loss, restore_set, window_check = None, None, None, None
    schema = {"live": live.get("schema_version"), "target": target.get("schema_version")}
    # unknown is not safe: without a schema to compare, data that changed since a set taken under the
    # target comes back with the code, unless the operator keeps it (keep_data)
    unknown = relation == "unknown" and target.get("content_digest") != live_digest
    if partial is not None and (scope in ("config", "artifacts") or not partial["back"]["images"]):
        checks.append(check("ok", "schema", f"the code stays as it runs ({'only ' + scope if scope != 'all' else 'no image'} "
                            "comes back), so the data stays too", **schema))
    elif partial is not None and (relation == "older_code" or (unknown and not params["keep_data"])):
        checks.append(check("block", "schema", f"{why}; a partial rollback leaves the data as it is, so "
                            f"{', '.join(partial['back']['images'])} cannot go back to code that may need older data: roll back the "
                            "whole app (without rollback_services and rollback_scope)"
                            + (", or keep today's data with -e rollback_keep_data=true" if unknown else ""), **schema))
    elif relation == "older_code" or (unknown and not params["keep_data"]):
        # the backup layer (and what it imports) is loaded only when the data may have to come back:
        # an image-only rollback asks the engine and nothing else
        from ansible_collections.selfhost.rollback.plugins.module_utils._retention import parse_duration
        from ansible_collections.selfhost.rollback.plugins.module_utils._sets import is_verified, list_sets, summarize

        sets = list_sets(ledger)
        candidates = _gate.restore_candidates(sets, target, history, additive, under_target_only=unknown)
        verified = [e for e in candidates if is_verified(e)]
        if verified:
            restore_entry = verified[0]
            loss = lost_by(client, app, restore_entry)
            summary = summarize(restore_entry)
            taken = f"taken {_gate.human_age(loss['seconds'])} ago under {summary['release_id']}"
            if unknown and not loss["changed"]:
                checks.append(check("warn", "schema", f"{why}; the data has not changed since verified set "
                                    f"{restore_entry['set_id']} ({taken}), so it stays", **schema))
                restore_entry, loss = None, None
            else:
                lead = (f"{why}, so whether {target['release_id']} can read today's data is unknown, and the data changed since "
                        f"verified set {restore_entry['set_id']} ({taken}); it comes back with the code (keep today's data "
                        "instead with keep_data, -e rollback_keep_data=true)") if unknown else \
                    f"{why}; restore verified set {restore_entry['set_id']} ({taken})"
                checks.append(check("restore", "schema", f"{lead}; lost: {loss['summary']}", **schema))
                restore_set = {"set_id": restore_entry["set_id"], "created_at": summary["created_at"], "age_s": loss["seconds"],
                               "release_id": summary["release_id"], "schema_version": summary["schema_version"],
                               "bytes": summary["bytes"]}
                keep_within = int(parse_duration(params["keep_within"]).total_seconds()) if params["keep_within"] else None
                window_check = window_of(restore_entry, sets, params["keep_last"], keep_within)
        elif unknown:
            checks.append(check("warn", "schema", f"{why}, and no verified backup set was taken under {target['release_id']}: "
                                "today's data stays, and whether that release can read it is unknown", **schema))
        else:
            unverified = [e["set_id"] for e in candidates]
            detail = (f"{why}, and no verified backup set taken under {target['release_id']} (or on a schema it runs on) exists"
                      + (f"; {', '.join(unverified)} exist but did not pass verification" if unverified else "")
                      + "; the data cannot be brought back with the code")
            checks.append(check("block", "schema", detail, **schema))
    elif unknown:
        checks.append(check("warn", "schema", f"{why}; today's data is kept as asked (keep_data), although whether "
                            f"{target['release_id']} can read it is unknown", keep_data=True, **schema))
    else:
        checks.append(check("ok" if relation != "unknown" else "warn", "schema", why, **schema))

    findings = _gate.runtime_findings(target.get("runtime") or {}, live.get("runtime") or {})
    worst = "block" if any(f[0] == "block" for f in findings) else "warn" if any(f[0] == "warn" for f in findings) else "ok"
    checks.append(check(worst, "runtime", "; ".join(f[1] for f in findings) or "no runtime recorded"))

    violations = [] if partial is not None else _gate.lock_violations(target.get("services") or {}, app.get("version_locks") or [])
    if violations:
        checks.append(check("block", "version locks", "; ".join(violations)))
    elif app.get("version_locks"):
        checks.append(check("ok", "version locks", f"{len(app['version_locks'])} group(s) run one version each in the target"))

    drift = _gate.config_drift(target.get("config_fingerprint") or {}, live.get("config_fingerprint") or {})
    if any(drift.values()):
        parts = []
        if drift["missing_now"]:
            parts.append(f"the target had {', '.join(drift['missing_now'])}, missing now: put them back in the env file or it may not boot")
        if drift["added_since"]:
            parts.append(f"added since: {', '.join(drift['added_since'])}")
        if drift["changed"]:
            parts.append(f"other values now: {', '.join(drift['changed'])}")
        checks.append(check("warn", "config drift", "; ".join(parts), **drift))
    else:
        checks.append(check("ok", "config drift", "same keys and values as the target", **drift))

    if window_check is not None:
        checks.append(window_check)
    checks.append(space_check(client, ledger, restore_entry, params["space_margin"]))

    verdict = _gate.decide(checks)
    reasons = [f"{c['check']}: {c['detail']}" for c in checks if c["level"] != "ok"]
    return {
        "changed": False,
        "verdict": verdict,
        "outcome": verdict,
        "reasons": reasons,
        "blocking": [f"{c['check']}: {c['detail']}" for c in checks if c["level"] == "block"],
        "resolved": {"requested": params["target"], "repeat": resolved["repeat"], "reasons": resolved["reasons"]},
        "target": {"release_id": target["release_id"], "recorded_at": target.get("recorded_at"),
                   "schema_version": target.get("schema_version"),
                   "images": {n: s.get("pinned_ref") or s.get("image_ref") for n, s in (target.get("services") or {}).items()}},
        "live": {"release_id": live_id, "schema_version": live.get("schema_version"),
                 "images": {n: s.get("pinned_ref") or s.get("image_ref") for n, s in (live.get("services") or {}).items()}},
        "target_is_live": target.get("content_digest") == live_digest or (partial is not None and not _partial.changes(partial)),
        "partial": partial,
        "restore_set": restore_set,
        "data_loss": loss,
        "compatibility": relation,
        "checks": checks,
        "table": [f"rollback of {app['name']} to {target['release_id']}: {verdict}"] + _gate.render_table(checks),
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
