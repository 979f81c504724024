#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: image_archive
short_description: Keep the images of retained releases restorable, and bring them back
version_added: 0.1.0
description:
  - With O(state=present), exports the images of the newest O(keep_releases) releases, and of the current release,
    to C(<store>/<app>/images/) (one compressed C(docker save) per image ID, zstd when installed, else gzip), and
    removes archives no retained release needs. An archive a retained release needs is never removed.
  - With O(state=loaded), makes sure every image of a release is on this engine (already here, pulled by digest
    from its registry (when O(pull=true)), or loaded from the archive when the registry no longer has it).
  - A loaded image has no registry digest on this engine, so a digest-pinned reference does not resolve to it
    (Compose would try to pull). RV(compose_override) maps such services to the image ID; write it to a file
    with O(override_file) and pass it to C(docker compose -f) after the app's own files.
  - M(selfhost.rollback.release) already keeps the archive in step when it records a release; use O(state=present)
    to archive separately, for example after recording with C(archive_images=false).
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
extends_documentation_fragment:
  - selfhost.rollback.app
attributes:
  check_mode:
    support: full
    description: With O(state=loaded), check mode assumes a pull from the registry succeeds.
  diff_mode:
    support: none
    description: The changes are returned as RV(exported), RV(removed) and RV(images).
  idempotent:
    support: full
    description: A second run finds the archive in step and the images present, and changes nothing.
options:
  state:
    description:
      - V(present) keeps the archive in step with the retained releases.
      - V(loaded) makes the images of O(release_id) present on this engine.
    type: str
    choices: [present, loaded]
    default: present
  release_id:
    description:
      - With O(state=loaded), the release whose images must be present. Defaults to the current release.
    type: str
  keep_releases:
    description: With O(state=present), how many of the newest releases keep their images archived; the current release is always kept.
    type: int
    default: 3
  pull:
    description: With O(state=loaded), try the registry (by digest) before the archive.
    type: bool
    default: true
  override_file:
    description:
      - With O(state=loaded), write RV(compose_override) to this path (mode 0600) when it is not empty,
        and remove the file when it is empty.
    type: path
  lock_timeout:
    description: Seconds to wait for another run that holds the app's ledger lock.
    type: float
    default: 30
requirements:
  - Docker SDK for Python
  - zstd or gzip
seealso:
  - module: selfhost.rollback.release
"""

EXAMPLES = r"""
- name: Archive the images of the last 5 releases of notes
  selfhost.rollback.image_archive:
    app:
      name: notes
      project_dir: /srv/notes
    keep_releases: 5

- name: Make sure the images of a release are here before rolling back to it
  selfhost.rollback.image_archive:
    app:
      name: notes
      project_dir: /srv/notes
    state: loaded
    release_id: r-20261122T020705Z-3f9a61c2
    override_file: /srv/notes/compose.restored.yaml
  register: notes_images

- name: Start the release with the loaded images
  ansible.builtin.command:
    cmd: >-
      docker compose -f compose.yaml
      {{ '-f compose.restored.yaml' if notes_images.compose_override else '' }} up -d
    chdir: /srv/notes
  changed_when: true
"""

RETURN = r"""
exported:
  description: With O(state=present), image IDs exported to the archive.
  returned: state is present
  type: list
  elements: str
removed:
  description: With O(state=present), image IDs whose archives were removed because no retained release needs them.
  returned: state is present
  type: list
  elements: str
retained_releases:
  description: With O(state=present), the releases whose images the archive keeps.
  returned: state is present
  type: list
  elements: str
release_id:
  description: With O(state=loaded), the release whose images were made present.
  returned: state is loaded
  type: str
images:
  description: With O(state=loaded), one entry per service.
  returned: state is loaded
  type: list
  elements: dict
  contains:
    service:
      description: Compose service.
      type: str
    image_id:
      description: Image ID the release runs.
      type: str
    ref:
      description: The release's reference for it (digest-pinned when it has a registry digest).
      type: str
    source:
      description: Where it was found, V(local), V(registry), V(archive) or V(missing).
      type: str
    action:
      description: V(pulled) or V(loaded) when something was done.
      type: str
    run_ref:
      description: A reference this engine resolves to exactly that image without pulling.
      type: str
compose_override:
  description:
    - With O(state=loaded), a Compose override that runs by image ID the services whose release reference
      does not resolve on this engine (empty when every reference resolves).
  returned: state is loaded
  type: dict
  sample: {"services": {"app": {"image": "sha256:78d65fffd3cc..."}}}
  contains:
    services:
      description:
        - Per service whose release reference does not resolve, keyed by service name, C(image), the image ID to run it by.
      type: dict
      returned: when a reference does not resolve
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

import json
import os
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._docker import docker_cli
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._images import (
    apply_archive,
    archive_changes,
    load,
    plan_load,
    run_reference,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger, replace_file
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils._release import (
    CURRENT,
    current_release_id,
    plan_archive,
    read_release,
    refresh_archived,
    unknown_release,
)


def keep_archive(module: AppModule, app: dict[str, t.Any], ledger: Ledger) -> dict[str, t.Any]:
    keep = module.params["keep_releases"]
    plan = plan_archive(ledger, keep)
    changed = archive_changes(plan)
    result = {"exported": plan["export"], "removed": plan["remove"] + plan["stray"], "retained_releases": plan["retained"]}
    if changed and not module.check_mode:
        client = module.client
        with module.lock("archiving images"):
            plan = plan_archive(ledger, keep)
            done = apply_archive(client, docker_cli(), ledger, plan)
            refresh_archived(ledger)
        result = dict(done, retained_releases=plan["retained"])
    return dict(result, changed=changed)


def load_release(module: AppModule, app: dict[str, t.Any], ledger: Ledger) -> dict[str, t.Any]:
    release_id = module.params["release_id"] or current_release_id(ledger)
    if not release_id:
        raise OperatorError(f"app {app['name']}: no release_id given and {ledger.path(CURRENT)} does not exist; "
                            "record a release first (selfhost.rollback.release) or name one")
    record = read_release(ledger, release_id)
    if record is None:
        raise unknown_release(app["name"], release_id, ledger)
    client = module.client
    rows = plan_load(client, ledger, record, module.params["pull"])
    missing = [r for r in rows if r["source"] in ("missing", "unknown")]
    if missing:
        raise OperatorError(
            f"app {app['name']}: release {release_id} cannot be restored: the image(s) of "
            + ", ".join(f"{r['service']} ({r['ref']})" for r in missing)
            + " are not on this engine, not in the image archive"
            + (" and cannot be pulled" if module.params["pull"] else " (pull=false)")
            + "; pick a release that is still restorable (selfhost.rollback.release_info)"
        )
    changed = any(r["source"] in ("registry", "archive") for r in rows)
    if changed and not module.check_mode:
        with module.lock(f"loading the images of {release_id}"):
            rows = load(client, docker_cli(), ledger, record, rows)
            still = [r for r in rows if r["source"] == "missing"]
            if still:
                raise OperatorError(
                    f"app {app['name']}: release {release_id} cannot be restored: the registry no longer has "
                    + ", ".join(f"{r['service']} ({r['ref']})" for r in still)
                    + " and the image archive holds no copy"
                )
    override: dict[str, t.Any] = {}
    for row in rows:
        if module.check_mode and row["source"] != "local":
            row["run_ref"] = row["ref"] if row["source"] == "registry" else row["image_id"]
        else:
            row["run_ref"] = run_reference(client, row)
        if row["run_ref"] != row["ref"]:
            override.setdefault("services", {})[row["service"]] = {"image": row["run_ref"]}
    path = module.params["override_file"]
    if path:
        wanted = (json.dumps(override, indent=2, sort_keys=True) + "\n").encode() if override else None
        current = None
        if os.path.exists(path):
            with open(path, "rb") as handle:
                current = handle.read()
        if current != wanted:
            changed = True
            if not module.check_mode:
                if wanted is None:
                    os.unlink(path)
                else:
                    replace_file(path, wanted)  # 0600; the directory's own mode is left alone
    return {"changed": changed, "release_id": release_id, "images": rows, "compose_override": override}


def image_archive(module: AppModule) -> dict[str, t.Any]:
    if module.params["keep_releases"] < 1:
        raise OperatorError(f"app {module.name}: keep_releases must be 1 or more (the current release always keeps its images)")
    if module.params["state"] == "present":
        return keep_archive(module, module.app, module.ledger)
    return load_release(module, module.app, module.ledger)


def main() -> None:
    module = AppModule(
        {
            "state": {"type": "str", "choices": ["present", "loaded"], "default": "present"},
            "release_id": {"type": "str"},
            "keep_releases": {"type": "int", "default": 3},
            "pull": {"type": "bool", "default": True},
            "override_file": {"type": "path"},
            "lock_timeout": {"type": "float", "default": 30},
        },
        docker_failure="the Docker Engine refused a request for the image archive ({exc}); check the engine and run again",
        os_failure="the image archive failed ({exc}); check free space and permissions under {store}",
    )
    module.run(image_archive)


if __name__ == "__main__":
    main()
