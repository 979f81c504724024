#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: switch
short_description: Switch an app to a new version, or back to a recorded release
version_added: 0.1.0
description:
  - "Forward (an upgrade): set keys in the app's env file (O(env)) and/or replace its compose file
    (O(compose_src)), remove digest pins from image lines so new tags take effect (O(unpin)), and
    bring the project up (C(docker compose up -d))."
  - "The project is the one Compose itself runs in O(app.project_dir): its default file pair
    (C(compose.yaml) plus C(compose.override.yaml)), C(COMPOSE_FILE), C(COMPOSE_PROJECT_NAME) and
    C(COMPOSE_PROFILES) from the environment or the env file. The module stops before changing
    anything when the running containers say they were started as another project (other files,
    directory or name). It never removes a service: one the files do not define is reported in
    RV(outside_release)."
  - "A one-shot service (a migration or an init job that exits 0 by design, see O(app.one_shot))
    counts as up to date when its container exited with code 0; Compose runs it again, in order,
    when its configuration changes."
  - "Back (a rollback or a revert): put the project files kept with release O(release) back in
    place (secret values, which the ledger never holds, come from the live env file), make its
    images present (from the engine, their registry, or the ledger's image archive), bring the
    project up on exactly those images (C(--pull never)), and verify that every service's
    container runs the release's image."
  - "Only the services whose image or configuration changes are recreated: a service whose container
    already runs the release's image keeps the image reference it was created with, so Compose sees
    its configuration unchanged and leaves it running (an image-only rollback of an app does not
    restart its database). Files, images (pulled or loaded from the archive) and every check come
    before anything is stopped."
  - "With O(start_first), a service that publishes no host port (one behind a reverse proxy) is
    switched without downtime: its new container starts beside the old one, the module waits until it
    is healthy (or running, when it has no health check), then stops and removes the old one."
  - Health is not judged here; follow with M(selfhost.rollback.health_gate). Data is not restored
    here; precede with M(selfhost.rollback.restore) when M(selfhost.rollback.rollback_check) says so.
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
extends_documentation_fragment:
  - selfhost.rollback.app
attributes:
  check_mode:
    support: full
    description:
      - Reports which files would change, which images would be loaded, which services would be recreated and
        which would be started beside their old container (O(start_first)); a refusal of O(start_first) happens in check mode too.
      - A service whose configuration (not image) changes with the release files is recreated by Compose but only named in
        RV(recreated) after a real run.
  diff_mode:
    support: full
    description: Shows the compose files before and after; env file changes are shown as keys, with the values of secret-looking keys masked.
  idempotent:
    support: full
    description: When the files already match and every service runs the intended image, nothing changes (with or without O(start_first)).
options:
  release:
    description: Switch back to this recorded release (its id).
    type: str
  env:
    description: "Keys to set in the env file for an upgrade, for example V({NOTES_VERSION: '1.1'})."
    type: dict
  compose_src:
    description: A compose file on the managed host that replaces the app's first compose file for an upgrade.
    type: path
  unpin:
    description:
      - For an upgrade, remove C(@sha256:...) pins from image lines so that new tags take effect.
      - Only when O(env) or O(compose_src) change something; an app already at the new version keeps its pins.
    type: bool
    default: true
  pull:
    description: For an upgrade, pull images that are not on the engine yet.
    type: bool
    default: true
  cutover:
    description:
      - For an upgrade, capture the data at the moment of the switch, so that a revert brings back exactly what the
        app held when the new version took over.
      - "Order: the new files are written and the new images pulled while the app still runs; then every running service
        that hosts no declared database (its writers) is stopped, the databases are dumped and the volumes and paths
        captured as a backup set (tagged V(cutover), taken under the release that ran until then), and Compose brings the
        new version up. The writers' downtime grows by the time of that capture."
      - A service that hosts a declared database keeps running until Compose recreates it; its dump is taken online.
      - When the capture fails, the stopped services are started again, the old files put back, and the module fails with
        nothing switched. A run killed during the capture has its writers started again by the quiesce guard
        (see M(selfhost.rollback.backup)).
      - The set is not verified here; verify it with M(selfhost.rollback.backup_verify) (the upgrade role does, right
        after the switch) so that the compatibility gate may pick it.
    type: bool
    default: false
  start_first:
    description:
      - For a switch back (O(release)), services to switch by starting the new container beside the old one
        (C(docker compose up -d --no-recreate --scale SERVICE=2 SERVICE)), waiting until it is healthy, or running
        when it has no health check, and then stopping (with its stop signal and grace period) and removing the old one.
        Compose labels stay as Compose writes them, so a later C(docker compose up -d) with the same files sees the
        service as converged.
      - Only for services that publish no host port and set no C(container_name) (two containers cannot share either);
        the module refuses such a service before changing anything.
      - Only for services that can run twice at once for a few seconds, typically stateless web services behind a reverse
        proxy that finds them by their service name on the project network; never a database on its data volume.
      - In-flight requests to the old container end when it stops; an app that drains on its stop signal loses none.
      - A new container that does not become healthy within O(wait) is removed and the module fails; the old one keeps running.
      - Services of the release that do not change are left alone either way; services not listed are recreated as Compose does
        (stopped, then started), after the listed ones are switched.
    type: list
    elements: str
    default: []
  services:
    description:
      - For a switch back (O(release)), a partial rollback - only these services return to the release (their image and their
        configuration); every other service keeps running as it is, in the same container. A service that a version lock
        (O(app.version_locks)) ties to one of them goes too.
      - The part is written into the project files, so a later plain C(docker compose up -d) changes nothing. An env-file key comes
        back only when every service that reads it (by C(${KEY}) in its definition) goes back; the compose files come back only
        when every difference between the release's merged project and today's lies inside the part. A setting shared with a
        service that stays is kept as it is and named in RV(partial).
      - An image line shared with a service that stays (a version variable both read, a YAML anchor) is kept too; the service's
        release image goes by digest into the collection's own images file C(<store>/<app>/pins.yaml), which every Compose call
        of the collection adds while it exists (RV(partial.images_file)). A plain C(docker compose up -d) without that file brings
        the service forward again; C(COMPOSE_FILE) in the project's env file, as the plan says, keeps it. An image that file
        cannot hold (a C(build:) service, no registry digest) refuses the switch before anything changes, naming the service to
        add. An upgrade, or a full switch back to a release that held nothing there, takes the file away.
      - Data is never restored here; M(selfhost.rollback.rollback_check) refuses a partial rollback whose code needs older data.
    type: list
    elements: str
    default: []
  scope:
    description:
      - For a switch back (O(release)), what returns.
      - V(all) - images and configuration (of O(services), or of every service).
      - V(config) - env-file keys and compose settings; every service keeps the image it runs now. A key that feeds an image line
        stays as it is.
      - V(images) - images; the configuration stays (keys read only by image lines come back, the compose files only when the
        image lines are all that changed).
      - V(artifacts) - only the declared artifacts (O(app.artifacts)) whose digest differs from the release's, each from the copy the
        release module kept, checked by digest and renamed into place, then the services in their C(restart) are restarted. A
        command artifact (a model list) cannot be put back by the collection; the module warns with the lines to pull or remove.
        Nothing of the Compose project changes.
    type: str
    choices: [all, config, images, artifacts]
    default: all
  wait:
    description: Seconds allowed for C(docker compose up), and for a new container of a O(start_first) service to become healthy.
    type: float
    default: 300
  lock_timeout:
    description: Seconds to wait for another run on the same app to finish.
    type: float
    default: 60
  operation:
    description:
      - Open this operation's journal (see M(selfhost.rollback.operation)) as the first act of a switch back to
        O(release), under the app's lock, so that a rollback takes one call instead of an open and a switch.
      - The journal is written before anything changes; when another operation is still open the switch refuses
        with one sentence and changes nothing. In check mode nothing is written.
      - The journal stays owned by M(selfhost.rollback.operation); advance and close it there.
    type: dict
    suboptions:
      kind:
        description: The operation's kind.
        type: str
        choices: [rollback]
        default: rollback
      owner:
        description: The run that opens it, as the P(selfhost.rollback.run_owner#lookup) lookup names it.
        type: dict
        required: true
      fields:
        description: What the journal keeps (C(return_to) is required), as O(selfhost.rollback.operation#module:fields).
        type: dict
        default: {}
requirements:
  - Docker SDK for Python 7.0 or newer
  - the Compose v2 CLI plugin (C(docker compose))
seealso:
  - module: selfhost.rollback.release
  - module: selfhost.rollback.rollback_check
  - module: selfhost.rollback.health_gate
"""

EXAMPLES = r"""
- name: Upgrade notes to 1.1
  selfhost.rollback.switch:
    app: "{{ app }}"
    env:
      NOTES_VERSION: "1.1"

- name: Go back to the release recorded before the upgrade
  selfhost.rollback.switch:
    app: "{{ app }}"
    release: "{{ before.release_id }}"

- name: Put only the worker back; the chat front end keeps running in its container
  selfhost.rollback.switch:
    app: "{{ app }}"
    release: "{{ before.release_id }}"
    services: [worker]

- name: Put the settings back and keep today's images
  selfhost.rollback.switch:
    app: "{{ app }}"
    release: "{{ before.release_id }}"
    scope: config

- name: Roll back in one call - open the operation's journal, then switch
  selfhost.rollback.switch:
    app: "{{ app }}"
    release: "{{ before.release_id }}"
    operation:
      owner: "{{ query('selfhost.rollback.run_owner') | first }}"
      fields:
        return_to: "{{ before.release_id }}"

- name: Go back without downtime for the API behind the reverse proxy (it publishes no port)
  selfhost.rollback.switch:
    app: "{{ app }}"
    release: "{{ before.release_id }}"
    start_first: [api]
"""

RETURN = r"""
actions:
  description: What was done (or, in check mode, would be done).
  returned: always
  type: list
  elements: str
  sample: ["write compose.yaml", "write .env (NOTES_VERSION)", "docker compose up -d"]
files_changed:
  description: Project files that were (or would be) rewritten, relative to the project directory.
  returned: always
  type: list
  elements: str
images:
  description: For a switch back, per service where its image came from (C(local), C(registry), C(archive)).
  returned: when O(release) is set
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
      description: Where it was found, V(local), V(registry) or V(archive).
      type: str
    archive:
      description: The archive file it is loaded from, in the ledger's image archive.
      type: str
      returned: when C(source) is V(archive)
    action:
      description: V(pulled) or V(loaded) when something was done.
      type: str
      returned: when the image was pulled or loaded
    run_ref:
      description: The same as C(ref) here; the switch names the image each service runs in its own override file.
      type: str
services:
  description: Per service, the container and the image it runs after the switch, and for a switch back whether that is the release's image.
  returned: always
  type: dict
  sample: {app: {container_id: 3f2a9c1d0b7e, image_id: "sha256:78d6...", expected: "sha256:78d6...", ok: true}}
  contains:
    container_id:
      description: Short id (12 characters) of the service's container, a running one first.
      type: str
      returned: when the service has a container
    image_id:
      description: Image ID that container runs.
      type: str
      returned: when the service has a container
    state:
      description: The container's state (V(running), V(exited)...).
      type: str
      returned: when the service has a container
    exit_code:
      description: The container's exit code, as the engine reports it.
      type: int
      returned: when the service has a container
    expected:
      description: The image ID the release runs for the service (for a partial rollback, the one the plan chose).
      type: str
      returned: when O(release) is set, except for O(scope=artifacts)
    ok:
      description: Whether the container runs that image.
      type: bool
      returned: when O(release) is set, except for O(scope=artifacts)
recreated:
  description: Services whose container was replaced (compared by container ID before and after); in check mode, those whose image would change.
  returned: always
  type: list
  elements: str
  sample: [app]
outside_release:
  description:
    - Services of the Compose project that have containers but are not defined by the files now in place.
    - They are left as they are (never removed); remove them by hand with C(docker compose up -d --remove-orphans) if they are unwanted.
  returned: when the project was brought up
  type: list
  elements: str
  sample: [worker-old]
cutover:
  description:
    - With O(cutover), the set that captured the data at the switch and what it took.
    - "C(set_id), C(stopped) (the services stopped for it), C(stop_s) (stopping them: each one's stop grace period, while
      it still serves), C(seconds) (the capture with the writers down: what the cutover adds to the outage), C(bytes),
      C(tables) (rows per table in each database dump)."
  returned: when O(cutover) captured a set
  type: dict
  sample: {set_id: b-20261202T061502Z-3c1d, stopped: [app], seconds: 0.84, bytes: 52311, tables: {db-notes: {public.notes: 12}}}
  contains:
    set_id:
      description: The set that captured the data.
      type: str
    stopped:
      description: The services stopped for it (every running service that hosts no declared database).
      type: list
      elements: str
    stop_s:
      description: Seconds stopping them took.
      type: float
    seconds:
      description: Seconds the capture took with the writers down.
      type: float
    bytes:
      description: Bytes stored for the set.
      type: int
    tables:
      description: Per database item, keyed by its name, the rows per table in its dump.
      type: dict
partial:
  description:
    - For a partial rollback (O(services), or O(scope) other than V(all)), its plan and what it did.
    - C(scope), C(services) (the part, with the partners version locks add), C(partners) (sentences), C(images) (per service the
      image ID it runs after the switch), C(back) (C(images), C(env) keys, C(files) that came back), C(kept) (C(env) and C(files)
      that stay as they are now, each with why; C(images) of the services that keep theirs), C(images_file) (what the
      collection's images file holds back), C(actions) (the plan in sentences),
      C(untouched) (per service left alone, its container ID and whether it is the same one), and for V(artifacts) C(artifacts)
      (C(put_back), C(by_hand), C(same)) and C(by_hand) (a sentence per command artifact the operator must put back).
  returned: when O(services) or O(scope) make the switch partial
  type: dict
  sample: {scope: all, services: [worker], back: {images: [worker], env: [WORKER_VERSION, WORKER_THREADS], files: []},
           kept: {env: {}, files: {}, images: [app, db]}, untouched: {app: {container_id: 3f2a9c1d0b7e, same: true}}}
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
      description: Per service of the release, the image ID it runs after the switch.
      type: dict
      returned: unless O(scope=artifacts)
    back:
      description: What came back, C(images) (services), C(env) (keys) and C(files) (project files), each a list.
      type: dict
    kept:
      description:
        - What stays as it is now, C(env) and C(files) (each name with why it stays) and C(images) (the services that keep theirs).
      type: dict
    images_file:
      description:
        - The collection's images file, when it holds a service back after the switch or held one before it - C(path),
          C(services) (service to image it holds after the switch), C(hold) and C(release) (services put in and taken out),
          C(write) (whether it changes). V(null) otherwise, and with O(app.pins=own_file).
      type: dict
      returned: unless O(scope=artifacts)
    blocking:
      description: Why the partial rollback cannot be done (always empty here, as the switch then fails and changes nothing).
      type: list
      elements: str
    actions:
      description: The plan in sentences.
      type: list
      elements: str
    untouched:
      description: Per service left alone, keyed by service name, C(container_id) (its container now) and C(same) (whether it is the same one).
      type: dict
      returned: when the switch changed something, except in check mode and for O(scope=artifacts)
    mixed:
      description:
        - What the release recorded next says of itself (M(selfhost.rollback.release) O(selfhost.rollback.release#module:mixed)) -
          C(target), C(scope), C(services), C(back), C(kept).
      type: dict
      returned: when the switch changed something, except in check mode
    artifacts:
      description:
        - The artifacts' plan, C(put_back) (path artifacts put back from the copy kept), C(by_hand) (command artifacts the operator
          must put back), C(same) (names of the artifacts that already match), C(blocking), and once they were put back C(done)
          (each with C(name), C(path) and C(digest)).
      type: dict
      returned: for O(scope=artifacts)
    by_hand:
      description: A sentence per command artifact the operator must put back.
      type: list
      elements: str
      returned: for O(scope=artifacts)
started_first:
  description: Services switched by starting the new container beside the old one (O(start_first)), or that would be in check mode.
  returned: when O(release) is set
  type: list
  elements: str
seconds:
  description: Time the switch took.
  returned: always
  type: float
operation:
  description: The journal opened by O(operation) (in check mode, the one that would be), as M(selfhost.rollback.operation) returns it.
  returned: when O(operation) is set and the journal was opened, on a failure after that too
  type: dict
  sample: {"op_id": "20261207T170102Z-4b1f-rollback", "kind": "rollback", "phase": "switching", "return_to": "r-20261207T165800Z-0c1d"}
outcome:
  description:
    - V(changed) when files were written or containers recreated or started (in check mode, would be), V(unchanged) when the
      files already matched and every service ran the intended image.
    - V(failed) when the switch could not be done (the task fails with the same sentence in RV(reasons)).
  returned: always
  type: str
  sample: changed
reasons:
  description:
    - Sentences behind RV(outcome); empty when there is nothing to add.
    - On a failure, the sentence that says what failed, on which app, and what to do.
  returned: always
  type: list
  elements: str
  sample: []
"""

import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _partial, _switch
from ansible_collections.selfhost.rollback.plugins.module_utils._module import OPERATOR_FAILURES, AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils._pin import PinError


def argument_spec() -> dict[str, t.Any]:
    return {
        "release": {"type": "str"},
        "env": {"type": "dict"},
        "compose_src": {"type": "path"},
        "unpin": {"type": "bool", "default": True},
        "start_first": {"type": "list", "elements": "str", "default": []},
        "pull": {"type": "bool", "default": True},
        "cutover": {"type": "bool", "default": False},
        "services": {"type": "list", "elements": "str", "default": []},
        "scope": {"type": "str", "default": "all", "choices": list(_partial.SCOPES)},
        "wait": {"type": "float", "default": 300},
        "lock_timeout": {"type": "float", "default": 60},
        "operation": {"type": "dict", "options": {
            "kind": {"type": "str", "default": "rollback", "choices": ["rollback"]},
            "owner": {"type": "dict", "required": True},
            "fields": {"type": "dict", "default": {}},
        }},
    }


def main() -> None:
    module = AppModule(
        argument_spec(),
        errors=(PinError, *OPERATOR_FAILURES),
        mutually_exclusive=[("release", "env"), ("release", "compose_src")],
        required_one_of=[("release", "env", "compose_src")],
    )
    module.run(_switch.switch)


if __name__ == "__main__":
    main()
