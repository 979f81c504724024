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

import os
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _artifacts, _capture, _operation, _partial, _project, _quiesce
from ansible_collections.selfhost.rollback.plugins.module_utils._app import PINS_FILE, compose_variables
from ansible_collections.selfhost.rollback.plugins.module_utils._common import (
    Compose,
    OperatorError,
    check_live_project,
    docker_cli,
    is_secret,
    one_shot_services,
    parse_env_text,
    project_containers,
    secret_values,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._images import get_image, load, plan_load, run_reference
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import atomic_write_bytes
from ansible_collections.selfhost.rollback.plugins.module_utils._pin import PinError, unpin_text
from ansible_collections.selfhost.rollback.plugins.module_utils._release import read_release, read_salt, unknown_release
from ansible_collections.selfhost.rollback.plugins.module_utils._module import OPERATOR_FAILURES, AppModule


def running_images(client: t.Any, app: dict[str, t.Any]) -> dict[str, dict[str, t.Any]]:
    """Per service, its container (a running one first), the image it runs and its state."""
    return project_images(client, app)[0]


def project_images(client: t.Any, app: dict[str, t.Any]) -> tuple[dict[str, dict[str, t.Any]], dict[str, str]]:
    """One listing of the project's containers: what :func:`running_images` says, and per service the image
    reference its running container was created with (what Compose hashed)."""
    running: dict[str, dict[str, t.Any]] = {}
    created: dict[str, str] = {}
    for container in sorted(project_containers(client, app["project_name"]), key=lambda c: (c.status != "running", c.name)):
        service = container.labels.get("com.docker.compose.service")
        if not service:
            continue
        if service not in running:
            running[service] = {"container_id": container.id[:12], "image_id": container.attrs.get("Image"), "state": container.status,
                                "exit_code": (container.attrs.get("State") or {}).get("ExitCode")}
        image = (container.attrs.get("Config") or {}).get("Image")
        if container.status == "running" and image and service not in created:
            created[service] = image
    return running, created


def resolves_to(client: t.Any, ref: str, image_id: str) -> bool:
    image = get_image(client, ref)
    return image is not None and image.id == image_id


def override_images(client: t.Any, expected: dict[str, str], running: dict[str, dict[str, t.Any]],
                    created: dict[str, str], in_files: dict[str, str], rows: list[dict[str, t.Any]]) -> dict[str, str]:
    """The image line per service that runs exactly the release's images and recreates only what must change.

    Compose recreates a container when the service's configuration hash changes, and the image
    string is part of it. A service already on the release's image keeps the string its container
    was created with (when that still names the same image here); the others get the image line of
    the release's own files, the release's reference, or the image ID, the first that names the
    image here. With the files' own line a later plain ``docker compose up -d`` changes nothing.
    """
    refs = {r["service"]: r for r in rows}
    out: dict[str, str] = {}
    for name, image_id in sorted(expected.items()):
        live = running.get(name, {})
        if live.get("image_id") == image_id and live.get("state") == "running" and name in created \
                and resolves_to(client, created[name], image_id):
            out[name] = created[name]
        elif in_files.get(name) and resolves_to(client, in_files[name], image_id):
            out[name] = in_files[name]
        elif name in refs:
            out[name] = run_reference(client, refs[name])
        else:
            out[name] = image_id
    return out


def check_start_first(app: dict[str, t.Any], config: dict[str, t.Any], names: list[str]) -> None:
    """Refuse, in one sentence, a service that cannot run twice side by side."""
    services = config.get("services") or {}
    for name in names:
        spec = services.get(name)
        if spec is None:
            raise OperatorError(f"app {app['name']}: start_first names {name}, which is not a service of the project "
                                f"(services: {', '.join(sorted(services))}); nothing was changed")
        ports = [str(p.get("published") or p.get("target")) if isinstance(p, dict) else str(p) for p in spec.get("ports") or []]
        if ports:
            raise OperatorError(f"app {app['name']}: service {name} publishes host port {ports[0]}, so its new container cannot "
                                "start beside the old one; leave it out of start_first (it is then stopped and recreated); "
                                "nothing was changed")
        if spec.get("container_name"):
            raise OperatorError(f"app {app['name']}: service {name} sets container_name {spec['container_name']}, so a second "
                                "container cannot start beside the old one; leave it out of start_first; nothing was changed")


def container_health(container: t.Any) -> tuple[str, str | None]:
    container.reload()
    state = container.attrs.get("State") or {}
    return str(state.get("Status")), (state.get("Health") or {}).get("Status")


def start_beside(client: t.Any, app: dict[str, t.Any], override: str, service: str, wait: float) -> None:
    """Start the service's new container next to the old one, wait until it is healthy, then remove the old one."""
    filters = {"label": [f"com.docker.compose.project={app['project_name']}", f"com.docker.compose.service={service}"]}
    old = client.containers.list(filters=filters)
    target = dict(app, extra_files=[override])
    # --no-recreate keeps the old containers (and the dependencies) as they are; the added ones get the
    # service's new configuration. Not --no-deps: it drops depends_on from the configuration Compose
    # hashes, and the next plain 'up' would then recreate the new container.
    Compose(target).run("up", "-d", "--no-recreate", "--pull", "never", "--scale", f"{service}={2 * len(old)}",
                        service, timeout=wait, what=f"starting the new {service} container beside the old one")
    old_ids = {c.id for c in old}
    new = [c for c in client.containers.list(all=True, filters=filters) if c.id not in old_ids]
    deadline = time.monotonic() + wait
    while True:
        states = [container_health(c) for c in new]
        if new and all(state == "running" and health in (None, "healthy") for state, health in states):
            break
        if not new or time.monotonic() > deadline or any(s in ("exited", "dead") or h == "unhealthy" for s, h in states):
            for container in new:
                container.remove(force=True)
            seen = ", ".join(f"{s}/{h}" if h else s for s, h in states) or "no container"
            raise OperatorError(f"app {app['name']}: the new {service} container did not become healthy ({seen}) within "
                                f"{wait:g} s; it was removed and the old one keeps running; see its logs with "
                                f"'docker compose logs {service}' after running it by hand")
        time.sleep(0.1)
    for container in old:
        container.stop()  # the container's own stop signal and grace period, as Compose would
        container.remove()


def env_diff(before: bytes, after: bytes) -> list[str]:
    old = parse_env_text(before.decode(errors="replace"))
    new = parse_env_text(after.decode(errors="replace"))
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        masked = is_secret(key, old.get(key, "")) or is_secret(key, new.get(key, ""))
        show_old = "********" if masked else old.get(key)
        show_new = "********" if masked else new.get(key)
        if key not in old:
            lines.append(f"+{key}={show_new}")
        elif key not in new:
            lines.append(f"-{key}={show_old}")
        else:
            lines.append(f"~{key}: {show_old} -> {show_new}")
    return lines


def plan_files(app: dict[str, t.Any], wanted: dict[str, bytes]) -> tuple[list[str], dict[str, bytes]]:
    current = _project.read_files(_project.project_files(app))
    changed = sorted(rel for rel, data in wanted.items() if current.get(rel) != data)
    return changed, current


def forward_files(module: AppModule, app: dict[str, t.Any]) -> dict[str, bytes]:
    """The project files after the upgrade; pins are lifted only when something else changes."""
    params = module.params
    files = _project.read_files(_project.project_files(app))
    wanted = dict(files)
    first = os.path.relpath(app["compose_files"][0], app["project_dir"])
    if params["compose_src"]:
        if not os.path.isfile(params["compose_src"]):
            raise OperatorError(f"app {app['name']}: compose_src {params['compose_src']} does not exist on this host")
        with open(params["compose_src"], "rb") as handle:
            wanted[first] = handle.read()
    if params["env"]:
        env_rel = os.path.relpath(app["env_file"], app["project_dir"])
        text = files.get(env_rel, b"").decode()
        wanted[env_rel] = _project.set_env(text, {k: str(v) for k, v in params["env"].items()}).encode()
    if wanted == files:
        return files  # already there: a pinned file stays pinned
    if params["unpin"]:
        for path in app["compose_files"]:
            rel = os.path.relpath(path, app["project_dir"])
            wanted[rel] = unpin_text(wanted[rel].decode(), rel).encode()
    return wanted


def diff_of(app: dict[str, t.Any], changed: list[str], current: dict[str, bytes], wanted: dict[str, bytes]) -> list[dict[str, str]]:
    masked = _project.env_files(app)
    diffs = []
    for rel in changed:
        if rel in masked:
            diffs.append({"before_header": rel + " (keys)", "after_header": rel + " (keys)",
                          "before": "", "after": "\n".join(env_diff(current.get(rel, b""), wanted[rel])) + "\n"})
        else:
            diffs.append({"before_header": rel, "after_header": rel,
                          "before": current.get(rel, b"").decode(errors="replace"), "after": wanted[rel].decode(errors="replace")})
    return diffs


def restore_pins(app: dict[str, t.Any], record: dict[str, t.Any]) -> None:
    """pins: own_file - the pins file says the release's digests again (services without one are left out)."""
    if app.get("pins") != "own_file" or not app.get("pins_file"):
        return
    pinned = {n: s["pinned_ref"] for n, s in (record.get("services") or {}).items() if s.get("pinned_ref")}
    if pinned:
        atomic_write_bytes(app["pins_file"], _project.images_file(
            f"written by selfhost.rollback.switch for app {app['name']}: the digests of release {record['release_id']}", pinned))
    else:
        drop_pins(app)


def drop_pins(app: dict[str, t.Any]) -> None:
    """Take away the collection's own images file: its pins (pins: own_file; the next pin writes them again), or the
    services a partial rollback held back in it (pins: compose_files), which an upgrade brings forward."""
    if app.get("pins_file") and os.path.isfile(app["pins_file"]):
        put_file(app["pins_file"], held_file(app, app["pins_file"], {}, compose_variables(app["env_file"])))


def held_file(app: dict[str, t.Any], path: str, held: dict[str, str], values: t.Mapping[str, str]) -> bytes | None:
    """The collection's images file with the services a partial rollback holds back in it (pins: compose_files).

    None (no file) when it holds none, unless COMPOSE_FILE (in ``values``) names it: a plain
    ``docker compose`` would then fail on a missing file, so it stays, holding nothing.
    """
    if held:
        return _project.images_file(f"written by selfhost.rollback.switch for app {app['name']}: the services a partial "
                                    "rollback holds back", held)
    if _partial.names_images_file(path, values):
        return f"# written by selfhost.rollback.switch for app {app['name']}: it holds no service now\nservices: {{}}\n".encode()
    return None


def put_file(path: str, data: bytes | None) -> None:
    """Write the collection's file (0600), or remove it (``data`` None)."""
    if data is not None:
        atomic_write_bytes(path, data)
    elif os.path.isfile(path):
        os.remove(path)


def images_file_change(module: AppModule, record: dict[str, t.Any], partial: dict[str, t.Any] | None,
                       env_text: bytes | None) -> tuple[str, bytes | None, bytes | None] | None:
    """pins: compose_files - the collection's images file before and after a switch back, when it changes.

    After a partial rollback it holds what the plan says (``images_file``); after a full one, what the
    release held (``_partial.held_by``: a mixed release), usually nothing. ``env_text``: the env file as
    the switch leaves it (its COMPOSE_FILE may name the images file). None: it stays as it is.
    """
    app = module.app
    found = _partial.images_file_of(app, module.ledger.path(PINS_FILE))
    if found is None:
        return None
    if partial is None:
        held = _partial.held_by(record)
    else:
        held = dict(partial["images_file"]["services"]) if partial.get("images_file") else dict(found["held"])
    values = compose_variables(app["env_file"], parse_env_text((env_text or b"").decode(errors="replace")))
    after = held_file(app, found["path"], held, values)
    before = None
    if os.path.isfile(found["path"]):
        with open(found["path"], "rb") as handle:
            before = handle.read()
    return None if after == before else (found["path"], before, after)


def settled(live: dict[str, t.Any], one_shot: bool) -> bool:
    """A service needs no start: it runs, or (one-shot) it ran to the end with exit code 0."""
    return live.get("state") == "running" or (one_shot and live.get("state") == "exited" and live.get("exit_code") == 0)


def bring_up(app: dict[str, t.Any], extra_file: str | None, pull: str, wait: float) -> None:
    """``docker compose up -d`` on the project's own files (plus the switch's image override).

    Never ``--remove-orphans``: a service the files do not define (any more) is reported by the
    switch, not deleted (:func:`outside`).
    """
    target = dict(app, extra_files=[extra_file] if extra_file else [])
    Compose(target).run("up", "-d", "--pull", pull, timeout=wait, what="bringing the project up")


def outside(client: t.Any, app: dict[str, t.Any], config: dict[str, t.Any]) -> list[str]:
    """Services of the Compose project that have containers but are not in the files (left as they are)."""
    defined = set(config.get("services") or {})
    return sorted({s for s in running_images(client, app) if s not in defined})


def switch_back(module: AppModule) -> dict[str, t.Any]:
    app, ledger, client = module.app, module.ledger, module.client
    release_id = module.params["release"]
    record = read_release(ledger, release_id)
    if record is None:
        raise unknown_release(app["name"], release_id, ledger)
    wanted, warning = _project.release_files(ledger, app, record)
    if warning:
        module.warn(warning)
    partial = None
    if _partial.is_partial(module.params["services"], module.params["scope"]):
        if module.params["scope"] == "artifacts":
            return put_back_artifacts(module, record)
        partial = plan_partial(module, record, wanted)
        wanted = partial.pop("files")
    changed_files, current = plan_files(app, wanted)
    rows = plan_load(client, ledger, record, allow_pull=True)
    if partial is not None:  # only the images that come back are needed
        rows = [r for r in rows if r["service"] in partial["back"]["images"]]
    missing = [r for r in rows if r["source"] in ("missing", "unknown")]
    if missing:
        raise OperatorError(f"app {app['name']}: images of release {release_id} are not available anywhere: "
                            + ", ".join(f"{r['service']} ({r['ref']})" for r in missing) + "; nothing was changed")
    expected = partial["images"] if partial is not None else {name: s["image_id"] for name, s in (record.get("services") or {}).items()}
    running, created = project_images(client, app)
    before_ids = {n: s.get("container_id") for n, s in running.items()}
    one_shot = one_shot_services((record.get("compose") or {}).get("config") or {}, app)
    mismatched = sorted(n for n, i in expected.items()
                        if running.get(n, {}).get("image_id") != i or not settled(running.get(n, {}), n in one_shot))
    start_first = list(dict.fromkeys(module.params["start_first"] or []))
    if start_first:
        check_start_first(app, Compose(app).config(), start_first)
    beside = [n for n in start_first if n in mismatched and running.get(n, {}).get("state") == "running"]
    recreate = [n for n in mismatched if n not in beside]
    env_rel = os.path.relpath(app["env_file"], app["project_dir"])
    held = images_file_change(module, record, partial, wanted.get(env_rel, current.get(env_rel)))
    actions = [f"write {rel}" for rel in changed_files]
    if held is not None:
        holds = ", ".join(f"{n} on {r}" for n, r in sorted(_project.images_in_file(held[2] or b"").items()))
        actions.append(f"remove {held[0]} (it holds no service now)" if held[2] is None else f"write {held[0]} (holds {holds or 'nothing'})")
    actions += [f"{r['source']} image for {r['service']}" for r in rows if r["source"] in ("registry", "archive")]
    actions += [f"start {n} beside its old container, wait until it is healthy, remove the old one" for n in beside]
    if changed_files or recreate or held is not None:
        actions.append("docker compose up -d --pull never on the release's images" + (f" (recreates {', '.join(recreate)})" if recreate else ""))
    result: dict[str, t.Any] = {"changed": bool(actions), "actions": actions, "files_changed": changed_files, "images": rows,
                                "recreated": recreate, "started_first": beside,
                                "diff": diff_of(app, changed_files, current, wanted)}
    if held is not None:
        result["diff"].append({"before_header": held[0], "after_header": held[0], "before": (held[1] or b"").decode(errors="replace"),
                               "after": (held[2] or b"").decode(errors="replace")})
    if partial is not None:
        result["partial"] = partial
    if not actions or module.check_mode:
        result["services"] = {n: dict(running.get(n, {}), expected=i, ok=running.get(n, {}).get("image_id") == i)
                              for n, i in expected.items()}
        if not actions:
            result["recreated"] = []
        return result
    module.result.update(actions=actions, files_changed=changed_files, images=rows)  # what a failure from here on reports
    with module.lock(f"switching to release {release_id}"):
        load(client, docker_cli(), ledger, record, rows)
        for rel in changed_files:
            _project.write_project_file(os.path.join(app["project_dir"], rel), wanted[rel])
        # pins: own_file - the release's digests (for a partial rollback, of what comes back), as its saved files hold them otherwise
        restore_pins(app, record if partial is None else mixed_pins(app, record, partial["back"]["images"]))
        if held is not None:  # pins: compose_files - the services a partial rollback holds back, or none any more
            put_file(held[0], held[2])
        app = module.revalidate()  # the compose files may have changed
        config = Compose(app).config()
        if beside:
            try:
                check_start_first(app, config, beside)  # the release's files may publish a port the live ones do not
            except OperatorError:
                for rel in changed_files:
                    if rel in current:
                        _project.write_project_file(os.path.join(app["project_dir"], rel), current[rel])
                    else:
                        os.remove(os.path.join(app["project_dir"], rel))
                if held is not None:
                    put_file(held[0], held[1])
                raise
        override = ledger.path("switch-override.yml")
        in_files = {n: str(s.get("image")) for n, s in (config.get("services") or {}).items() if s.get("image")}
        images = override_images(client, expected, running, created, in_files, rows)
        atomic_write_bytes(override, _project.images_file("written by selfhost.rollback.switch: run the release's exact images", images))
        for name in beside:
            start_beside(client, app, override, name, module.params["wait"])
        bring_up(app, override, "never", module.params["wait"])
    result["outside_release"] = outside(client, app, config)
    running = running_images(client, app)
    result["recreated"] = sorted(n for n, s in running.items() if s.get("container_id") != before_ids.get(n) and n not in beside)
    services = {n: dict(running.get(n, {}), expected=i, ok=running.get(n, {}).get("image_id") == i) for n, i in expected.items()}
    wrong = [f"{n} runs {s.get('image_id')}" for n, s in services.items() if not s["ok"]]
    if wrong:
        module.result.update(services=services, recreated=result["recreated"])
        raise OperatorError(f"app {app['name']}: after the switch to {release_id} not every service runs the release's image: "
                            + "; ".join(wrong))
    result["services"] = services
    if partial is not None:
        partial["untouched"] = untouched(module, partial, before_ids, running)
        partial["mixed"] = _partial.mixed(release_id, partial)
    return result


def plan_partial(module: AppModule, record: dict[str, t.Any], target_files: dict[str, bytes]) -> dict[str, t.Any]:
    """The part of ``record`` that comes back (see ``_partial.plan``); refused in one sentence when it cannot."""
    app, client = module.app, module.client
    compose = Compose(app)
    structure = _partial.project_structure(app, read_salt(module.ledger) or b"", secret_values(app))
    config = compose.config()
    running = running_images(client, app)
    live_images = {name: {"image_ref": spec.get("image"), "image_id": running[name]["image_id"]}
                   for name, spec in (config.get("services") or {}).items() if name in running}
    live_files = _project.read_files(_project.project_files(app))
    plan = _partial.plan(app, record, target_files, live_files, structure, live_images, module.params["services"],
                         module.params["scope"], os.environ, _partial.images_file_of(app, module.ledger.path(PINS_FILE)))
    if plan["blocking"]:
        raise OperatorError(f"app {app['name']}: the partial rollback to {record['release_id']} cannot be done, nothing was "
                            "changed: " + "; ".join(plan["blocking"]))
    return plan


def untouched(module: AppModule, partial: dict[str, t.Any], before: dict[str, str | None],
              running: dict[str, dict[str, t.Any]]) -> dict[str, dict[str, t.Any]]:
    """The services a partial rollback leaves alone, and whether each kept its container."""
    leave = [n for n in before if n not in partial["services"]] if module.params["services"] else \
        [n for n in before if n not in partial["back"]["images"]] if module.params["scope"] == "images" else []
    out = {}
    for name in sorted(leave):
        now = running.get(name, {}).get("container_id")
        out[name] = {"container_id": now, "same": now == before[name]}
        if now != before[name]:
            module.warn(f"app {module.name}: Compose recreated {name}, which the partial rollback leaves as it was "
                        "(its configuration or a dependency changed with the part)")
    return out


def mixed_pins(app: dict[str, t.Any], record: dict[str, t.Any], back: list[str]) -> dict[str, t.Any]:
    """For pins: own_file, the pins of what runs now with those of the services that come back."""
    services: dict[str, dict[str, t.Any]] = {}
    if app.get("pins_file") and os.path.isfile(app["pins_file"]):
        with open(app["pins_file"], "rb") as handle:
            services = {n: {"pinned_ref": ref} for n, ref in _project.images_in_file(handle.read()).items()}
    for name in back:
        services[name] = {"pinned_ref": (record["services"][name] or {}).get("pinned_ref")}
    return {"release_id": f"{record['release_id']} ({', '.join(back) or 'no image'} only)", "services": services}


def put_back_artifacts(module: AppModule, record: dict[str, t.Any]) -> dict[str, t.Any]:
    """Scope artifacts: the release's declared artifacts back from the copies kept, by digest; nothing else changes."""
    app, ledger = module.app, module.ledger
    partial = _partial.artifacts_part(record, _artifacts.plan_now(app, ledger, record))
    if partial["blocking"]:
        raise OperatorError(f"app {app['name']}: the artifacts of release {record['release_id']} cannot be put back, nothing "
                            "was changed: " + "; ".join(partial["blocking"]))
    plan = partial["artifacts"]
    declared = {a["name"]: a for a in app.get("artifacts") or []}
    restart = sorted({s for i in plan["put_back"] for s in declared[i["name"]].get("restart") or []})
    actions = list(partial["actions"])
    if restart and actions:
        actions.append(f"docker compose restart {' '.join(restart)}")
    for sentence in partial["by_hand"]:
        module.warn(sentence)
    result: dict[str, t.Any] = {"changed": bool(actions), "actions": actions, "files_changed": [], "images": [],
                                "recreated": [], "started_first": [], "partial": partial,
                                "services": running_images(module.client, app)}
    if actions and not module.check_mode:
        with module.lock(f"putting back the artifacts of release {record['release_id']}"):
            plan["done"] = _artifacts.put_back(app, ledger, plan["put_back"])
            partial["mixed"] = _partial.mixed(record["release_id"], partial)
            if restart:
                Compose(app).run("restart", *restart, timeout=module.params["wait"], what="restarting what reads the artifacts")
    return result


def writers(client: t.Any, app: dict[str, t.Any]) -> list[t.Any]:
    """The running containers of services that host no declared database: what the cutover stops."""
    hosts = {d["service"] for d in app.get("databases") or []}
    return sorted((c for c in project_containers(client, app["project_name"])
                   if c.status == "running" and c.labels.get("com.docker.compose.service") not in hosts), key=lambda c: c.name)


def put_back(app: dict[str, t.Any], changed_files: list[str], current: dict[str, bytes], pins: bytes | None) -> None:
    """The project files (and the pins file) as they were before the switch wrote them."""
    for rel in changed_files:
        path = os.path.join(app["project_dir"], rel)
        if rel in current:
            _project.write_project_file(path, current[rel])
        elif os.path.exists(path):
            os.remove(path)
    if pins is not None:
        atomic_write_bytes(app["pins_file"], pins)


def capture_cutover(module: AppModule, app: dict[str, t.Any], plan: dict[str, t.Any], resumed: list[str]) -> tuple[t.Any, dict[str, t.Any]]:
    """Stop the writers and capture the data as it is at this moment (the caller holds the lock)."""
    _capture.check_space(module.ledger, plan["sources"], f"app {app['name']}")  # before anything stops
    began = time.monotonic()
    quiesce = _quiesce.Quiesce(module.ledger, purpose="cutover")
    stopped = writers(module.client, app)
    options = cutover_options(app)
    options.space_check = False
    try:
        for container in stopped:
            quiesce.hold(container, "stop")
        held = time.monotonic()
        done = _capture.run_backup(app, module.client, module.ledger, options, plan, resumed, quiesce)
    except BaseException:
        quiesce.release()
        raise
    manifest = done["manifest"]
    return quiesce, {"set_id": manifest["set_id"], "stopped": sorted({c.labels.get("com.docker.compose.service") for c in stopped}),
                     "stop_s": round(held - began, 3), "seconds": round(time.monotonic() - held, 3),
                     "bytes": sum(int(i.get("bytes") or 0) for i in manifest["items"]),
                     "tables": {i["name"]: i.get("tables") for i in manifest["items"] if i.get("kind") == "database"}}


def cutover_options(app: dict[str, t.Any]) -> _capture.BackupOptions:
    return _capture.BackupOptions(consistency=dict(app.get("consistency") or {}), tags=["cutover"])


def switch_forward(module: AppModule) -> dict[str, t.Any]:
    app = module.app
    if module.params["start_first"]:
        raise OperatorError(f"app {app['name']}: start_first applies to a switch back (release); an upgrade recreates its services")
    wanted = forward_files(module, app)
    changed_files, current = plan_files(app, wanted)
    running = running_images(module.client, app)
    one_shot = one_shot_services(Compose(app).config(), app) if any(s["state"] != "running" for s in running.values()) else set()
    stopped = [n for n, s in running.items() if not settled(s, n in one_shot)]
    actions = [f"write {rel}" for rel in changed_files]
    if changed_files and app.get("pins_file") and os.path.isfile(app["pins_file"]) and module.params["unpin"]:
        actions.append(f"remove the digest pins in {app['pins_file']}")
    cutover = module.params["cutover"] and bool(changed_files or stopped)
    if cutover:
        names = sorted({c.labels.get("com.docker.compose.service") for c in writers(module.client, app)})
        actions.append(f"stop {', '.join(names) or 'no writer'} and capture the data as the cutover set")
    if changed_files or stopped or not running:
        actions.append("docker compose up -d")
    result: dict[str, t.Any] = {"changed": bool(actions), "actions": actions, "files_changed": changed_files,
                                "diff": diff_of(app, changed_files, current, wanted)}
    if actions and not module.check_mode:
        module.result.update(actions=actions, files_changed=changed_files)  # what a failure from here on reports
        with module.lock("switching to a new version"):
            before, quiesce = app, None
            if cutover:
                resumed = _quiesce.resume_interrupted(module.ledger, module.client)
                plan = _capture.plan_backup(before, module.client, cutover_options(before))
            pins = None
            if app.get("pins_file") and os.path.isfile(app["pins_file"]):
                with open(app["pins_file"], "rb") as handle:
                    pins = handle.read()
            for rel in changed_files:
                _project.write_project_file(os.path.join(app["project_dir"], rel), wanted[rel])
            if changed_files and module.params["unpin"]:
                drop_pins(app)  # what pinning added, taken away, as unpin does in the files
            app = module.revalidate()
            try:
                if cutover:
                    if module.params["pull"]:  # while the app still runs: the cutover's downtime holds no download
                        # best effort: what this cannot pull, 'up --pull missing' pulls (or names) below
                        Compose(app).run("pull", "--policy", "missing", "--quiet", "--ignore-buildable", check=False,
                                         timeout=module.params["wait"], what="pulling the new images")
                    quiesce, result["cutover"] = capture_cutover(module, before, plan, resumed)
                    module.result["cutover"] = result["cutover"]  # a failure from here on still names the set
            except BaseException:
                put_back(before, changed_files, current, pins)
                raise
            try:
                bring_up(app, None, "missing" if module.params["pull"] else "never", module.params["wait"])
            finally:
                if quiesce is not None:  # replaced by Compose, or started again where it could not
                    quiesce.release()
        result["outside_release"] = outside(module.client, app, Compose(app).config())
        running = running_images(module.client, app)
    result["services"] = running
    return result


def open_operation(module: AppModule) -> None:
    """Open the journal of the operation this switch begins (O(operation)), under the app's lock and before any
    change; a failure from here on carries it, so the caller can close it."""
    spec = module.params["operation"]
    if not module.params["release"]:
        raise _operation.OperationError("operation goes with release: only a switch back opens a rollback's journal")
    with module.lock("opening the operation"):
        module.result["operation"] = _operation.open_operation(module.ledger, spec["kind"], spec["owner"], spec["fields"] or {},
                                                               write=not module.check_mode)


def switch(module: AppModule) -> dict[str, t.Any]:
    began = time.monotonic()
    check_live_project(module.client, module.app)
    if module.params["operation"]:
        open_operation(module)
    result = switch_back(module) if module.params["release"] else switch_forward(module)
    result["seconds"] = round(time.monotonic() - began, 3)
    if not module.diff_mode:
        result.pop("diff", None)
    return result


def main() -> None:
    module = AppModule(
        {
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
        },
        errors=(PinError, *OPERATOR_FAILURES),
        mutually_exclusive=[("release", "env"), ("release", "compose_src")],
        required_one_of=[("release", "env", "compose_src")],
    )
    module.run(switch)


if __name__ == "__main__":
    main()
