#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release
short_description: Record the running state of a Compose app as a release
version_added: 0.1.0
description:
  - Records what an app runs now as a B(release) in the ledger, the known-good contract a rollback returns to.
  - A release holds the compose files as applied (source files and the merged project without interpolation),
    every service's image by registry digest and image ID, a config fingerprint (every env key with a salted hash
    of its value, never the value), the runtime versions (engine, API, Compose), the schema version from
    O(app.schema_probe), the declared O(app.artifacts) by digest, and the project's named volumes.
  - A copy of each declared artifact (a command's output for a command) is kept in C(<store>/<app>/artifacts/), once per
    digest, unless O(app.artifacts[].keep=false); a rollback with scope V(artifacts) puts it back from there.
  - The release id is derived from the content, so recording the same state twice returns the same release
    with C(changed=false). C(<store>/<app>/current_release.json) points at the release that matches what runs.
  - Unless O(archive_images=false), the images of the last O(keep_releases) releases (and the current one) are
    exported to the ledger's image archive, and archives no retained release needs are removed;
    see M(selfhost.rollback.image_archive).
  - The release's project files (compose files and env file) are kept in C(<store>/<app>/projects/<release_id>/),
    0600 in 0700 directories, so that M(selfhost.rollback.switch) can put them back. In the env file's copy every
    secret-looking value (by its key, or a URL with credentials) is replaced by a placeholder; a switch back takes
    it from the live env file. No secret value enters the ledger.
  - Use M(selfhost.rollback.release_info) to list and show releases.
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
extends_documentation_fragment:
  - selfhost.rollback.app
attributes:
  check_mode:
    support: full
    description: Reads the running state and reports whether a new release would be recorded and which images would be archived.
  diff_mode:
    support: none
    description: The record is returned as RV(release) instead.
  idempotent:
    support: full
    description: The same running state finds the existing release; nothing is written.
options:
  archive_images:
    description:
      - Keep the images of retained releases restorable by exporting them to C(<store>/<app>/images/) (C(docker save), compressed).
      - Set to V(false) to opt out; images with no registry digest (built locally) are then recoverable only while the engine keeps them.
    type: bool
    default: true
  keep_releases:
    description:
      - How many of the newest releases keep their images archived. The current release is always kept.
    type: int
    default: 3
  lock_timeout:
    description: Seconds to wait for another run that holds the app's ledger lock.
    type: float
    default: 30
  mixed:
    description:
      - After a partial rollback, what of the running state came back from which release (the RV(selfhost.rollback.switch#module:partial)
        result of M(selfhost.rollback.switch)); kept as the new record's C(mixed) field, outside its content digest.
      - Ignored when the state is a release recorded before (it is then not mixed).
    type: dict
requirements:
  - Docker SDK for Python
  - Docker Compose v2 CLI plugin
  - zstd (or gzip) for the image archive
notes:
  - Values of the env file and of service environments are never stored; every stored string is also scrubbed of
    values whose key looks secret (C(PASS), C(SECRET), C(TOKEN), C(KEY), ...).
seealso:
  - module: selfhost.rollback.pin
  - module: selfhost.rollback.release_info
  - module: selfhost.rollback.image_archive
"""

EXAMPLES = r"""
- name: Record the release the app runs now
  selfhost.rollback.release:
    app:
      name: notes
      project_dir: /srv/notes
      schema_probe:
        service: db
        sql: select max(version) from schema_migrations
      databases:
        - {service: db, engine: postgres, database: notes, user: notes}
      artifacts:
        - name: models
          command: [docker, compose, exec, -T, ollama, ollama, list]
  register: notes_release

- name: Record every app of the host, keeping archives for the last 5 releases
  selfhost.rollback.release:
    app: "{{ item }}"
    store: "{{ rollback_store }}"
    keep_releases: 5
  loop: "{{ rollback_apps }}"
  loop_control:
    label: "{{ item.name }}"
"""

RETURN = r"""
release_id:
  description: Id of the release that matches the running state (new or existing).
  returned: success
  type: str
  sample: r-20261122T020705Z-3f9a61c2
created:
  description: Whether a new release record was (or in check mode would be) written.
  returned: success
  type: bool
release:
  description: The release record as stored in C(<store>/<app>/releases/<release_id>.json).
  returned: success
  type: dict
  contains:
    format:
      description: Record format version.
      type: int
      sample: 1
    content_digest:
      description: Digest of the content (everything but timestamps and archive bookkeeping).
      type: str
    services:
      description:
        - Per service, C(image_ref), C(image_id), C(repo_digest), C(pinned_ref), C(source) (C(registry) or C(local)),
          C(build) and C(environment) fingerprints.
      type: dict
    config_fingerprint:
      description: Every key of the env file with a salted hash of its value.
      type: dict
    runtime:
      description: C(engine_version), C(api_version), C(compose_version).
      type: dict
    schema_version:
      description: Answer of O(app.schema_probe), or null when none is declared.
      type: str
    images_archived:
      description: Image ID to archive file (relative to the app's ledger directory).
      type: dict
record_path:
  description: Path of the release record.
  returned: success
  type: str
actions:
  description: What was done (or in check mode would be done).
  returned: success
  type: list
  elements: str
  sample: ["record release r-20261122T020705Z-3f9a61c2", "point current_release.json at r-20261122T020705Z-3f9a61c2", "archive image sha256:78d6..."]
archive:
  description: Image archive changes; empty lists when nothing changed or O(archive_images=false).
  returned: success
  type: dict
  contains:
    exported:
      description: Image IDs exported.
      type: list
      elements: str
    removed:
      description: Image IDs (or stray files) removed because no retained release needs them.
      type: list
      elements: str
    retained_releases:
      description: Releases whose images the archive keeps.
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

import os
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import docker_cli
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._project import secret_values
from ansible_collections.selfhost.rollback.plugins.module_utils._images import apply_archive, archive_changes
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils import _artifacts, _operation, _project
from ansible_collections.selfhost.rollback.plugins.module_utils._release import (
    CURRENT,
    build_record,
    content_digest,
    current_release_id,
    find_by_digest,
    has_release,
    plan_archive,
    read_release,
    read_salt,
    record_path,
    refresh_archived,
    running_state,
    write_release,
    write_salt,
)


def record_release(module: AppModule, app: dict[str, t.Any]) -> dict[str, t.Any]:
    params = module.params
    ledger = module.ledger
    client = module.client
    secrets = secret_values(app)
    salt = read_salt(ledger)
    new_salt = salt is None
    if new_salt:
        # written with the first release, so that a failed first run leaves no ledger behind
        salt = os.urandom(32).hex().encode()

    outputs: dict[str, bytes] = {}
    state = running_state(client, app, salt, secrets, outputs)
    digest = content_digest(state)
    existing = find_by_digest(ledger, digest)
    record = build_record(app["name"], state, existing)
    release_id = record["release_id"]
    actions: list[str] = []
    if existing is None:
        actions.append(f"record release {release_id}")
        if params["mixed"]:
            record["mixed"] = params["mixed"]
    keep = _artifacts.to_keep(app, ledger, record.get("artifacts") or {})
    actions += [f"keep a copy of artifact {name}" for name in keep]
    if current_release_id(ledger) != release_id:
        actions.append(f"point {CURRENT} at {release_id}")
    if _project.saved_files(ledger, release_id) is None:
        actions.append(f"keep the project files of {release_id} (compose and env files, 0600)")

    plan = plan_archive(ledger, params["keep_releases"], record) if params["archive_images"] else None
    if plan is not None:
        actions += [f"archive image {i}" for i in plan["export"]]
        actions += [f"remove archive of image {i} (no retained release needs it)" for i in plan["remove"]]
        actions += [f"remove stray archive {n}" for n in plan["stray"]]
        if not actions and archive_changes(plan):
            actions.append("update the image archive index")
    for warning in _local_image_warnings(record, params["archive_images"]):
        module.warn(warning)

    archive = {"exported": [], "removed": [], "retained_releases": plan["retained"] if plan else []}
    if actions and not module.check_mode:
        with module.lock(f"recording release {release_id}"):
            if new_salt:
                if read_salt(ledger) is not None:
                    raise OperatorError(f"app {app['name']}: another run created the ledger meanwhile; run again")
                write_salt(ledger, salt)
            # the ledger may have moved on while the state was read
            again = find_by_digest(ledger, digest)
            if again is not None and again["release_id"] != release_id:
                record, release_id = again, again["release_id"]
            if not has_release(ledger, release_id):
                write_release(ledger, record)
            if current_release_id(ledger) != release_id:
                ledger.write(CURRENT, {"release_id": release_id, "updated_at": iso()})
            _operation.note_recorded(ledger, release_id)
            _artifacts.keep(app, ledger, record.get("artifacts") or {}, outputs, keep)
            # the files a switch back to this release puts in place; same digest, same files
            _project.save_files(ledger, release_id, _project.read_files(_project.project_files(app)),
                                env_rel=os.path.relpath(app["env_file"], app["project_dir"]), env_rels=_project.env_files(app))
            if params["archive_images"]:
                plan = plan_archive(ledger, params["keep_releases"])
                done = apply_archive(client, docker_cli(), ledger, plan)
                archive = dict(done, retained_releases=plan["retained"])
            refresh_archived(ledger)
            record = read_release(ledger, release_id)
    elif plan is not None:
        archive = {"exported": plan["export"], "removed": plan["remove"] + plan["stray"], "retained_releases": plan["retained"]}

    return {"changed": bool(actions), "release_id": release_id, "created": existing is None, "release": record,
            "record_path": record_path(ledger, release_id), "actions": actions, "archive": archive}


def _local_image_warnings(record: dict[str, t.Any], archiving: bool) -> list[str]:
    warnings = []
    for name, service in sorted(record["services"].items()):
        if service["source"] == "local":
            warnings.append(
                f"service {name}: image {service['image_ref']} has no registry digest (built or loaded locally); the release "
                f"records it by image ID {service['image_id']}"
                + (" and the image archive keeps it" if archiving else "; with archive_images=false nothing can bring it back once it is pruned")
            )
    return warnings


def release(module: AppModule) -> dict[str, t.Any]:
    if module.params["keep_releases"] < 1:
        raise OperatorError(f"app {module.name}: keep_releases must be 1 or more (the current release always keeps its images)")
    return record_release(module, module.app)


def main() -> None:
    module = AppModule(
        {
            "archive_images": {"type": "bool", "default": True},
            "keep_releases": {"type": "int", "default": 3},
            "lock_timeout": {"type": "float", "default": 30},
            "mixed": {"type": "dict"},
        },
        docker_failure="the Docker Engine refused a request while recording the release ({exc}); check the engine and run again",
        os_failure="recording the release failed ({exc}); check that {store} is writable",
    )
    module.run(release)


if __name__ == "__main__":
    main()
