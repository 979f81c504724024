#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_info
short_description: List and show the recorded releases of a Compose app
version_added: 0.1.0
description:
  - Lists the releases in the app's ledger, newest last, with which one is current and whether each one's images
    are still restorable on this host (on the engine or in the image archive).
  - With O(release_id), also returns that release's full record.
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
    description:
      - Release to show in full. V(current) names the release the app runs now.
    type: str
requirements:
  - Docker SDK for Python (to tell which images are on the engine; without it, only the archive is consulted)
seealso:
  - module: selfhost.rollback.release
"""

EXAMPLES = r"""
- name: List the releases of notes
  selfhost.rollback.release_info:
    app:
      name: notes
      project_dir: /srv/notes
  register: notes_releases

- name: Show the current release
  selfhost.rollback.release_info:
    app:
      name: notes
      project_dir: /srv/notes
    release_id: current
  register: notes_current
"""

RETURN = r"""
releases:
  description: One summary per release, oldest first.
  returned: success
  type: list
  elements: dict
  contains:
    release_id:
      description: Release id.
      type: str
    recorded_at:
      description: When it was recorded (UTC).
      type: str
    current:
      description: Whether the app runs this release now.
      type: bool
    schema_version:
      description: Schema version recorded with it.
      type: str
    images:
      description: Service to image reference (digest-pinned when it has a registry digest).
      type: dict
    images_archived:
      description: How many of its images are in the image archive.
      type: int
    restorable:
      description: Whether every image is on this engine or in the archive (the registry is not asked).
      type: bool
    missing_images:
      description: Image IDs neither on this engine nor in the archive.
      type: list
      elements: str
current_release_id:
  description: The release the app runs now, or null.
  returned: success
  type: str
release:
  description: The full record of O(release_id) (see M(selfhost.rollback.release)).
  returned: when O(release_id) is given
  type: dict
  contains:
    format:
      description: Record format version.
      type: int
    release_id:
      description: Release id.
      type: str
    app:
      description: The app's name.
      type: str
    recorded_at:
      description: When it was recorded (UTC).
      type: str
    content_digest:
      description: Digest of the content (everything but timestamps and archive bookkeeping).
      type: str
    compose:
      description:
        - The Compose project, C(project_name), C(files) (each with C(path), C(sha256) and C(content)), C(env_file)
          (its file name, V(null) without one) and C(config) (the merged project without interpolation, literal environment values hashed).
      type: dict
    services:
      description:
        - Per service, C(image_ref), C(image_id), C(repo_digest), C(pinned_ref), C(source) (V(registry) or V(local)),
          C(build) (whether it has a C(build:) section) and C(environment) (every key with a salted hash of its value).
      type: dict
    config_fingerprint:
      description: Every key of the env file with a salted hash of its value.
      type: dict
    runtime:
      description: C(engine_version), C(api_version), C(compose_version).
      type: dict
    schema_version:
      description: Answer of O(app.schema_probe), or V(null) when none is declared.
      type: str
    artifacts:
      description:
        - Per artifact of O(app.artifacts), C(kind) (V(file), V(dir) or V(command)), C(digest), C(size), C(path) or C(command),
          and for V(dir) C(files) (how many).
      type: dict
    volumes:
      description: Compose volume key to Docker volume name.
      type: dict
    images_archived:
      description: Image ID to archive file (relative to the app's ledger directory).
      type: dict
    mixed:
      description: After a partial rollback, what of the running state came back from which release (see O(selfhost.rollback.release#module:mixed)).
      type: dict
      returned: for a release recorded after a partial rollback
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

from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._images import get_image, release_images
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils._release import archived_images, current_release_id, releases, summary


def describe(module: AppModule) -> dict[str, t.Any]:
    app = module.app
    ledger = module.ledger
    current = current_release_id(ledger)
    client = module.client_or_none("restorability is judged from the archive only: {exc}")
    out = []
    records = releases(ledger)
    for record in records:
        row = summary(record, current)
        archived = archived_images(ledger, record)
        missing = [i for i in release_images(record) if i not in archived and (client is None or get_image(client, i) is None)]
        row["restorable"] = not missing
        row["missing_images"] = missing
        out.append(row)
    result: dict[str, t.Any] = {"changed": False, "releases": out, "current_release_id": current}
    wanted = module.params["release_id"]
    if wanted:
        wanted = current if wanted == "current" else wanted
        record = next((r for r in records if r.get("release_id") == wanted), None) if wanted else None
        if record is None:
            raise OperatorError(f"app {app['name']}: release {module.params['release_id']} is not in {ledger.path('releases')}; "
                                f"known releases: {', '.join(r['release_id'] for r in out) or 'none'}")
        result["release"] = record
    return result


def main() -> None:
    module = AppModule({"release_id": {"type": "str"}}, docker=False,
                       os_failure="reading the ledger failed ({exc}); check permissions under {store}")
    module.run(describe)


if __name__ == "__main__":
    main()
