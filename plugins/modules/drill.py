#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: drill
short_description: Rehearse a rollback in an isolated copy of an app
version_added: 0.1.0
description:
  - Picks a release (by default the previous one) and a verified backup set it can run on, builds an
    isolated copy of the app (its own Compose project, volumes and network; ports only on free loopback
    ports; no restart policy; the env overrides of O(env) to mute outbound effects), restores the set
    into it, starts the release's exact images on it, and checks it - health gate, row counts and file
    checksums against the set's manifest, and the smoke requests of O(smoke).
  - Times each phase (verify, prepare, restore, boot, healthy, checks, teardown), always tears the copy
    down, and keeps a drill record in the ledger as C(drills/<drill_id>.json) and C(.md).
  - Production is never addressed - the copy's Compose project, volumes and network have other names, and
    the module compares production's containers before and after.
  - Every resource of the copy carries the labels C(io.selfhost-rollback.drill),
    C(io.selfhost-rollback.drill.app) and C(io.selfhost-rollback.drill.ledger). A drill that was killed
    leaves them behind; the next drill of the app removes them first (and says so in its record).
  - A failed drill fails the task with the first reason; the record holds every check.
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
extends_documentation_fragment:
  - selfhost.rollback.app
  - selfhost.rollback.restic
attributes:
  check_mode:
    support: full
    description: Says which release and backup set would be drilled and what a sweep would remove; builds nothing.
  diff_mode:
    support: none
    description: A drill changes nothing in production; there is nothing to show.
  idempotent:
    support: none
    description: Every run is a new rehearsal with a new record.
options:
  target:
    description:
      - The release to drill - V(previous) (the newest release whose content differs from the current one,
        what a rollback would return to), V(current), or a release id.
    type: str
    default: previous
  set_id:
    description:
      - The backup set to restore. By default the newest verified set taken under the target release, else
        the newest verified set whose schema the target runs on.
    type: str
  verify:
    description:
      - V(deep) checks every checksum of the set first (and records the run); V(recorded) trusts its last verification.
      - Either way a set that does not pass is not restored and the drill fails.
    type: str
    choices: [deep, recorded]
    default: deep
  env:
    description:
      - "Environment overrides per service in the copy, to mute outbound effects (mail, webhooks, payments),
        for example V({app: {SMTP_HOST: '', WEBHOOKS_ENABLED: 'false'}})."
      - Only the keys are recorded, never the values.
    type: dict
    default: {}
  smoke:
    description:
      - Requests sent to the copy once it is healthy, on the port of its health URL, after the app's own
        O(app.smoke) requests.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: The path, for example V(/notes).
        type: str
        required: true
      method:
        description: HTTP method.
        type: str
        default: GET
      body:
        description: Request body.
        type: str
      content_type:
        description: The C(Content-Type) of O(smoke[].body), for example V(application/json).
        type: str
      status:
        description: The status expected.
        type: int
        default: 200
      contains:
        description: Text the answer must contain.
        type: str
      matches:
        description: A regular expression the answer must match (Python's C(re.search)).
        type: str
      json:
        description: Values the answer, read as JSON, must hold, by dotted path (list items by index).
        type: dict
      timeout:
        description: Seconds to wait for the answer.
        type: float
        default: 5
  probes:
    description: Health probes once the copy is healthy (per health URL).
    type: int
    default: 10
  max_error_rate:
    description: Highest share of failed probes that passes.
    type: float
    default: 0.0
  max_p99_ratio:
    description: Highest p99 latency, as a multiple of the release's recorded baseline (when there is one), that passes.
    type: float
    default: 3.0
  p99_floor_ms:
    description:
      - p99 latency, in milliseconds, that always passes whatever the baseline says.
      - A copy that has just booted beside production answers more slowly than the warm release did; below this
        figure a slower copy is not a failed drill. Set O(max_p99_ratio=0) to leave latency out altogether.
    type: float
    default: 500
  health_wait:
    description: Seconds the copy may take from started to healthy.
    type: float
    default: 120
  boot_timeout:
    description: Seconds allowed for C(docker compose up) of the copy.
    type: float
    default: 300
  ignore_tables:
    description: Tables left out of the row count check (ones the release writes when it starts), by name or C(schema.name).
    type: list
    elements: str
    default: []
  allow_host_paths:
    description:
      - Host paths outside the project directory that the copy may bind-mount too (shared with production).
      - Any other such bind mount fails the drill before anything starts.
    type: list
    elements: path
    default: []
  lock_timeout:
    description: Seconds to wait for another run on the same app to finish.
    type: float
    default: 60
requirements:
  - Docker SDK for Python 7.0 or newer
  - the Compose v2 CLI plugin (C(docker compose)) 2.24 or newer
notes:
  - The drill holds the app's ledger lock, so it never runs during an upgrade or a rollback of the same app.
  - Bind paths of the set are restored into the copy's own project directory under C(<store>/<app>/drills/work/).
seealso:
  - module: selfhost.rollback.restore
  - module: selfhost.rollback.rollback_check
  - module: selfhost.rollback.ledger_info
"""

EXAMPLES = r"""
- name: Rehearse going back to the previous release
  selfhost.rollback.drill:
    app: "{{ rollback_apps[0] }}"
    store: /var/lib/selfhost-rollback
  register: drill

- name: Rehearse the current release on its newest backup, muting mail, with smoke requests
  selfhost.rollback.drill:
    app: "{{ rollback_apps[0] }}"
    target: current
    env:
      app: {SMTP_HOST: "127.0.0.1", SMTP_PORT: "9"}
    smoke:
      - {path: /notes, contains: shopping}
      - {path: /notes, method: POST, body: '{"title": "drill"}', status: 201}
"""

RETURN = r"""
drill_id:
  description: The drill's id; names its record.
  returned: always
  type: str
  sample: d-20261122T030000Z-7c1e
passed:
  description:
    - Whether every check passed.
    - V(null) in check mode, where nothing is built and nothing is checked; the verdict is unknown until a drill runs.
  returned: always
  type: bool
release_id:
  description: The release drilled.
  returned: success
  type: str
set_id:
  description: The backup set restored.
  returned: success
  type: str
project:
  description: The Compose project name of the copy.
  returned: always
  type: str
  sample: notes-drill-20261122t030000z-7c1e
timings:
  description:
    - Seconds per phase, C(time_to_healthy_s) (restore + boot + healthy, what a rollback with data takes) and C(total_s).
  returned: success
  type: dict
  sample: {verify_s: 0.1, prepare_s: 0.4, restore_s: 4.2, boot_s: 2.9, healthy_s: 1.1, checks_s: 0.8, teardown_s: 1.5,
           time_to_healthy_s: 8.2, total_s: 11.3}
  contains:
    verify_s:
      description: Seconds spent verifying the backup set (V(null) when the phase did not run).
      type: float
    prepare_s:
      description: Seconds spent preparing the copy (project files, isolation, images) (V(null) when the phase did not run).
      type: float
    restore_s:
      description: Seconds spent restoring the set into the copy (V(null) when the phase did not run).
      type: float
    boot_s:
      description: Seconds spent starting the copy (V(null) when the phase did not run).
      type: float
    healthy_s:
      description: Seconds spent waiting until the copy is healthy (V(null) when the phase did not run).
      type: float
    checks_s:
      description: Seconds spent the health gate, row counts and smoke requests (V(null) when the phase did not run).
      type: float
    teardown_s:
      description: Seconds spent removing the copy (V(null) when the phase did not run).
      type: float
    time_to_healthy_s:
      description: The sum of C(restore_s), C(boot_s) and C(healthy_s), what a rollback with data takes (V(null) when one of them is).
      type: float
    total_s:
      description: Seconds the whole drill took.
      type: float
checks:
  description: Every check with its outcome and failures.
  returned: success
  type: list
  elements: dict
  sample: [{name: "rows db-notes", kind: rows, passed: true, failures: [], detail: "2 tables, 3 rows as in the manifest"}]
  contains:
    name:
      description: The check's name (C(health gate), C(rows <item>), C(smoke <method> <path>)...).
      type: str
    kind:
      description:
        - V(verify), V(isolation), V(images), V(restore), V(checksums), V(health), V(rows), V(smoke),
          V(teardown) or V(production).
      type: str
    passed:
      description: Whether the check passed.
      type: bool
    failures:
      description: What failed, one sentence each (at most 20).
      type: list
      elements: str
    detail:
      description: What was checked, in a few words.
      type: str
      returned: when there is something to say
    figures:
      description: The health gate's figures, C(requests), C(errors), C(error_rate), C(p50_ms), C(p99_ms) and C(statuses).
      type: dict
      returned: for the V(health) check
    tables:
      description: Rows per table found in the copy.
      type: dict
      returned: for a V(rows) check whose database was counted
failures:
  description: Why the drill failed, one sentence each (empty when it passed).
  returned: always
  type: list
  elements: str
swept:
  description: Resources of earlier, interrupted drills that were removed first (or, in check mode, would be).
  returned: always
  type: list
  elements: str
record:
  description: The record files (JSON and Markdown) in the ledger.
  returned: success
  type: dict
  sample: {json: /var/lib/selfhost-rollback/notes/drills/d-20261122T030000Z-7c1e.json,
           markdown: /var/lib/selfhost-rollback/notes/drills/d-20261122T030000Z-7c1e.md}
  contains:
    json:
      description: Path of the JSON record.
      type: str
    markdown:
      description: Path of the Markdown record, for people.
      type: str
outcome:
  description:
    - V(passed) or V(failed), the drill's verdict; in check mode V(changed) (a drill would run).
    - V(failed) when the module could not do its work (the task fails with the same sentence in RV(reasons)).
  returned: always
  type: str
  sample: passed
reasons:
  description:
    - The same sentences as RV(failures) (empty when the drill passed).
    - When the drill could not run, the sentence that says why.
  returned: always
  type: list
  elements: str
  sample: []
"""

import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _drill, _restic
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._app import SMOKE_OPTIONS
from ansible_collections.selfhost.rollback.plugins.module_utils._module import OPERATOR_FAILURES, AppModule


def argument_spec() -> dict[str, t.Any]:
    return {
        "target": {"type": "str", "default": "previous"},
        "set_id": {"type": "str"},
        "verify": {"type": "str", "choices": ["deep", "recorded"], "default": "deep"},
        "env": {"type": "dict", "default": {}, "no_log": True},
        "smoke": {"type": "list", "elements": "dict", "default": [], "options": SMOKE_OPTIONS},
        "probes": {"type": "int", "default": 10},
        "max_error_rate": {"type": "float", "default": 0.0},
        "max_p99_ratio": {"type": "float", "default": 3.0},
        "p99_floor_ms": {"type": "float", "default": 500},
        "health_wait": {"type": "float", "default": 120},
        "boot_timeout": {"type": "float", "default": 300},
        "ignore_tables": {"type": "list", "elements": "str", "default": []},
        "allow_host_paths": {"type": "list", "elements": "path", "default": []},
        "restic": _restic.restic_option_spec(),
        "lock_timeout": {"type": "float", "default": 60},
    }


def env_values(env: dict[str, t.Any]) -> list[str]:
    return [str(v) for values in env.values() if isinstance(values, dict) for v in values.values() if v is not None]


def run_drill(module: AppModule) -> dict[str, t.Any]:
    params = module.params
    name = module.name
    result = module.result
    result.update(changed=False, drill_id=None, passed=False, project=None, failures=[], swept=[])
    for service, values in (params["env"] or {}).items():
        if not isinstance(values, dict):
            raise OperatorError(f"app {name}: env.{service} must map variable names to values, for example "
                                "{app: {SMTP_HOST: ''}}")
    module.add_secrets(*env_values(params["env"]))
    app = module.app
    restic = _restic.restic_from_params(params["restic"])
    if restic is not None:
        module.cleanup(restic.close)
    client = module.client
    ledger = module.ledger
    drill = _drill.Drill(app, ledger, client, params, restic, warn=module.warn)
    result.update(drill_id=drill.drill_id, project=drill.project)
    if module.check_mode:
        target, entry, _current = drill.select()
        found = _drill.labelled(client, app["name"], drill.tag)
        # nothing is built and nothing checked, so the verdict is unknown, not a pass
        result.update(changed=True, passed=None, release_id=target["release_id"], set_id=entry["set_id"],
                      swept=[f"{kind[:-1]} {r.name}" for kind, rows in found.items() for r in rows])
        return result
    with module.lock(f"drill {drill.drill_id}"):
        record = drill.run()
    result.update(changed=True, passed=record["passed"], release_id=record["target"]["release_id"],
                  set_id=record["backup_set"]["set_id"], timings=record["timings"], checks=record["checks"],
                  failures=record["failures"], swept=record["swept"],
                  record={"json": ledger.path("drills", drill.drill_id + ".json"),
                          "markdown": ledger.path("drills", drill.drill_id + ".md")},
                  outcome="passed" if record["passed"] else "failed", reasons=record["failures"])
    if not result["passed"]:
        first = result["failures"][0] if result["failures"] else "a check failed"
        module.fail(f"drill {result['drill_id']} of app {name} failed: {first}; the copy was torn down and every "
                    f"check is in {result['record']['markdown']}")
    return result


def main() -> None:
    module = AppModule(argument_spec(), failure="drill of app {name} could not run", errors=OPERATOR_FAILURES,
                       docker_failure="the Docker Engine refused a request ({exc}); check that dockerd is running, "
                       "then run the drill again (it removes what this one left)")
    module.run(run_drill)


if __name__ == "__main__":
    main()
