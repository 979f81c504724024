# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The switch: an app forward to a new version, or back to a recorded release (private to the collection).

The module ``selfhost.rollback.switch`` states its options and calls :func:`switch`; everything it
does lives here:

- reading the live project: per service its container, the image it runs and the image reference it
  was created with (:func:`project_images`), the services outside the files (:func:`outside`);
- the project files: what an upgrade writes (:func:`forward_files`), which files change
  (:func:`plan_files`), their diff with env values masked (:func:`diff_of`), putting them back
  (:func:`put_back`);
- the collection's pins and images files: the release's digests again (:func:`restore_pins`), the
  services a partial rollback holds back (:func:`held_file`, :func:`images_file_change`,
  :func:`mixed_pins`), the file taken away by an upgrade (:func:`drop_pins`);
- the forward switch (:func:`switch_forward`): its plan (:func:`forward_actions`), the cutover capture
  (:func:`capture_cutover`) and applying it (:func:`apply_forward`);
- the switch back (:func:`switch_back`): the target's files (:func:`target_files`), a partial plan
  (:func:`plan_partial`, :func:`put_back_artifacts`), the plan (:func:`plan_back`), applying it
  (:func:`apply_back`) and the verdict (:func:`verify_back`); the image line per service of the
  switch's override file (:func:`override_images`) and the start-beside orchestration of
  ``start_first`` (:func:`check_start_first`, :func:`start_beside`, :func:`wait_healthy`);
- the operation's journal a switch back opens first (:func:`open_operation`).

The pure pieces (plans, sentences, verdicts) take plain data; the rest is thin glue over Docker,
Compose and the ledger.
"""

from __future__ import annotations

import os
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _artifacts, _capture, _operation, _partial, _project, _quiesce
from ansible_collections.selfhost.rollback.plugins.module_utils._app import PINS_FILE, compose_variables
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import Compose, check_live_project, one_shot_services
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import docker_cli, project_containers
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._project import parse_env_text, secret_values
from ansible_collections.selfhost.rollback.plugins.module_utils._secrets import is_secret
from ansible_collections.selfhost.rollback.plugins.module_utils._images import get_image, load, plan_load, run_reference
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import atomic_write_bytes
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils._pin import unpin_text
from ansible_collections.selfhost.rollback.plugins.module_utils._release import read_release, read_salt, unknown_release

#: The collection's images file before and after a switch back: its path, its bytes before, its bytes after (None: no file).
HeldChange = t.Tuple[str, t.Optional[bytes], t.Optional[bytes]]


class BackPlan(t.NamedTuple):
    """A switch back as planned, before anything changes: what :func:`apply_back` and :func:`verify_back` work from."""

    record: dict[str, t.Any]
    partial: dict[str, t.Any] | None
    wanted: dict[str, bytes]
    current: dict[str, bytes]
    changed_files: list[str]
    rows: list[dict[str, t.Any]]
    expected: dict[str, str]
    running: dict[str, dict[str, t.Any]]
    created: dict[str, str]
    before_ids: dict[str, str | None]
    beside: list[str]
    recreate: list[str]
    held: HeldChange | None
    actions: list[str]
    result: dict[str, t.Any]


# ---------------------------------------------------------------------- the live project


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


def outside(client: t.Any, app: dict[str, t.Any], config: dict[str, t.Any]) -> list[str]:
    """Services of the Compose project that have containers but are not in the files (left as they are)."""
    defined = set(config.get("services") or {})
    return sorted({s for s in running_images(client, app) if s not in defined})


def settled(live: dict[str, t.Any], one_shot: bool) -> bool:
    """A service needs no start: it runs, or (one-shot) it ran to the end with exit code 0."""
    return live.get("state") == "running" or (one_shot and live.get("state") == "exited" and live.get("exit_code") == 0)


def verdicts(expected: dict[str, str], running: dict[str, dict[str, t.Any]]) -> dict[str, dict[str, t.Any]]:
    """Per service of ``expected``, what runs now, the image it should run and whether it does."""
    return {n: dict(running.get(n, {}), expected=i, ok=running.get(n, {}).get("image_id") == i) for n, i in expected.items()}


def bring_up(app: dict[str, t.Any], extra_file: str | None, pull: str, wait: float) -> None:
    """``docker compose up -d`` on the project's own files (plus the switch's image override).

    Never ``--remove-orphans``: a service the files do not define (any more) is reported by the
    switch, not deleted (:func:`outside`).
    """
    target = dict(app, extra_files=[extra_file] if extra_file else [])
    Compose(target).run("up", "-d", "--pull", pull, timeout=wait, what="bringing the project up")


# ---------------------------------------------------------------------- images of the switch back


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


def needed_images(app: dict[str, t.Any], release_id: str, rows: list[dict[str, t.Any]],
                  partial: dict[str, t.Any] | None) -> list[dict[str, t.Any]]:
    """The rows of ``_images.plan_load`` the switch needs (for a partial rollback, only those that come back);
    refused in one sentence when one is available nowhere."""
    if partial is not None:  # only the images that come back are needed
        rows = [r for r in rows if r["service"] in partial["back"]["images"]]
    missing = [r for r in rows if r["source"] in ("missing", "unknown")]
    if missing:
        raise OperatorError(f"app {app['name']}: images of release {release_id} are not available anywhere: "
                            + ", ".join(f"{r['service']} ({r['ref']})" for r in missing) + "; nothing was changed")
    return rows


def expected_images(record: dict[str, t.Any], partial: dict[str, t.Any] | None) -> dict[str, str]:
    """Per service, the image ID it runs after the switch back: the release's, or the one the partial plan chose."""
    return partial["images"] if partial is not None else {name: s["image_id"] for name, s in (record.get("services") or {}).items()}


def mismatched_services(expected: dict[str, str], running: dict[str, dict[str, t.Any]], one_shot: set[str]) -> list[str]:
    """The services that do not run their expected image yet, or need a start."""
    return sorted(n for n, i in expected.items()
                  if running.get(n, {}).get("image_id") != i or not settled(running.get(n, {}), n in one_shot))


def not_on_release(services: dict[str, dict[str, t.Any]]) -> list[str]:
    """A phrase per service of :func:`verdicts` that does not run its expected image."""
    return [f"{n} runs {s.get('image_id')}" for n, s in services.items() if not s["ok"]]


# ---------------------------------------------------------------------- start_first


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


def split_beside(start_first: list[str], mismatched: list[str], running: dict[str, dict[str, t.Any]]) -> tuple[list[str], list[str]]:
    """The changing services started beside their old container (listed in start_first and running), and those recreated."""
    beside = [n for n in start_first if n in mismatched and running.get(n, {}).get("state") == "running"]
    return beside, [n for n in mismatched if n not in beside]


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
    wait_healthy(app, service, new, wait)
    for container in old:
        container.stop()  # the container's own stop signal and grace period, as Compose would
        container.remove()


def wait_healthy(app: dict[str, t.Any], service: str, new: list[t.Any], wait: float) -> None:
    """Wait until every new container runs and is healthy (or has no health check); otherwise remove them and
    fail in one sentence, as soon as one exits or turns unhealthy, or after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        states = [container_health(c) for c in new]
        if new and all(state == "running" and health in (None, "healthy") for state, health in states):
            return
        if not new or time.monotonic() > deadline or any(s in ("exited", "dead") or h == "unhealthy" for s, h in states):
            for container in new:
                container.remove(force=True)
            seen = ", ".join(f"{s}/{h}" if h else s for s, h in states) or "no container"
            raise OperatorError(f"app {app['name']}: the new {service} container did not become healthy ({seen}) within "
                                f"{wait:g} s; it was removed and the old one keeps running; see its logs with "
                                f"'docker compose logs {service}' after running it by hand")
        time.sleep(0.1)


# ---------------------------------------------------------------------- project files


def env_diff(before: bytes, after: bytes) -> list[str]:
    """The keys an env file change adds (+), removes (-) and changes (~), with secret-looking values masked."""
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
    """The project files that change (sorted), and every project file as it is now."""
    current = _project.read_files(_project.project_files(app))
    changed = sorted(rel for rel, data in wanted.items() if current.get(rel) != data)
    return changed, current


def forward_files(module: AppModule, app: dict[str, t.Any]) -> dict[str, bytes]:
    """The project files after the upgrade; pins are lifted only when something else changes."""
    params = module.params
    files = _project.read_files(_project.project_files(app))
    source = None
    if params["compose_src"]:
        if not os.path.isfile(params["compose_src"]):
            raise OperatorError(f"app {app['name']}: compose_src {params['compose_src']} does not exist on this host")
        with open(params["compose_src"], "rb") as handle:
            source = handle.read()
    return forward_wanted(app, files, source, params["env"], params["unpin"])


def forward_wanted(app: dict[str, t.Any], files: dict[str, bytes], source: bytes | None, env: dict[str, t.Any] | None,
                   unpin: bool) -> dict[str, bytes]:
    """``files`` after the upgrade: the first compose file replaced by ``source``, ``env`` set in the env file, and
    (``unpin``) the digest pins taken off the compose files, unless nothing else changes."""
    wanted = dict(files)
    if source is not None:
        wanted[os.path.relpath(app["compose_files"][0], app["project_dir"])] = source
    if env:
        env_rel = os.path.relpath(app["env_file"], app["project_dir"])
        text = files.get(env_rel, b"").decode()
        wanted[env_rel] = _project.set_env(text, {k: str(v) for k, v in env.items()}).encode()
    if wanted == files:
        return files  # already there: a pinned file stays pinned
    if unpin:
        for path in app["compose_files"]:
            rel = os.path.relpath(path, app["project_dir"])
            wanted[rel] = unpin_text(wanted[rel].decode(), rel).encode()
    return wanted


def diff_of(app: dict[str, t.Any], changed: list[str], current: dict[str, bytes], wanted: dict[str, bytes]) -> list[dict[str, str]]:
    """The diff of the changed files: whole texts, except env files, shown as keys (:func:`env_diff`)."""
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


def read_or_none(path: str | None) -> bytes | None:
    """A file's bytes, None when there is none."""
    if path and os.path.isfile(path):
        with open(path, "rb") as handle:
            return handle.read()
    return None


# ---------------------------------------------------------------------- the pins and images files


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


def held_after(record: dict[str, t.Any], partial: dict[str, t.Any] | None, found: dict[str, t.Any]) -> dict[str, str]:
    """What the images file holds after a switch back: what the partial plan says (``images_file``, else what it
    holds now), or after a full one what the release held (``_partial.held_by``: a mixed release), usually nothing."""
    if partial is None:
        return _partial.held_by(record)
    return dict(partial["images_file"]["services"]) if partial.get("images_file") else dict(found["held"])


def images_file_change(app: dict[str, t.Any], path: str, record: dict[str, t.Any], partial: dict[str, t.Any] | None,
                       env_text: bytes | None) -> HeldChange | None:
    """pins: compose_files - the collection's images file (at ``path``) before and after a switch back, when it changes.

    ``env_text``: the env file as the switch leaves it (its COMPOSE_FILE may name the images file).
    None: it stays as it is (or, with pins: own_file, is not the switch's to hold anything in).
    """
    found = _partial.images_file_of(app, path)
    if found is None:
        return None
    held = held_after(record, partial, found)
    values = compose_variables(app["env_file"], parse_env_text((env_text or b"").decode(errors="replace")))
    after = held_file(app, found["path"], held, values)
    before = read_or_none(found["path"])
    return None if after == before else (found["path"], before, after)


def held_actions(held: HeldChange | None) -> list[str]:
    """The sentence of a change to the images file, if there is one."""
    if held is None:
        return []
    holds = ", ".join(f"{n} on {r}" for n, r in sorted(_project.images_in_file(held[2] or b"").items()))
    return [f"remove {held[0]} (it holds no service now)" if held[2] is None else f"write {held[0]} (holds {holds or 'nothing'})"]


def mixed_pins(app: dict[str, t.Any], record: dict[str, t.Any], back: list[str]) -> dict[str, t.Any]:
    """For pins: own_file, the pins of what runs now with those of the services that come back."""
    services: dict[str, dict[str, t.Any]] = {}
    if app.get("pins_file") and os.path.isfile(app["pins_file"]):
        with open(app["pins_file"], "rb") as handle:
            services = {n: {"pinned_ref": ref} for n, ref in _project.images_in_file(handle.read()).items()}
    for name in back:
        services[name] = {"pinned_ref": (record["services"][name] or {}).get("pinned_ref")}
    return {"release_id": f"{record['release_id']} ({', '.join(back) or 'no image'} only)", "services": services}


# ---------------------------------------------------------------------- partial rollbacks


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


def left_alone(services: list[str], scope: str, partial: dict[str, t.Any], before: dict[str, str | None],
               running: dict[str, dict[str, t.Any]]) -> dict[str, dict[str, t.Any]]:
    """The services a partial rollback leaves alone (by ``services``, or with scope images the images that stay),
    each with its container now and whether it is the one it had before."""
    leave = [n for n in before if n not in partial["services"]] if services else \
        [n for n in before if n not in partial["back"]["images"]] if scope == "images" else []
    out = {}
    for name in sorted(leave):
        now = running.get(name, {}).get("container_id")
        out[name] = {"container_id": now, "same": now == before[name]}
    return out


def untouched(module: AppModule, partial: dict[str, t.Any], before: dict[str, str | None],
              running: dict[str, dict[str, t.Any]]) -> dict[str, dict[str, t.Any]]:
    """The services a partial rollback leaves alone, and whether each kept its container (a warning when not)."""
    out = left_alone(module.params["services"], module.params["scope"], partial, before, running)
    for name, seen in out.items():
        if not seen["same"]:
            module.warn(f"app {module.name}: Compose recreated {name}, which the partial rollback leaves as it was "
                        "(its configuration or a dependency changed with the part)")
    return out


def plan_artifacts(app: dict[str, t.Any], record: dict[str, t.Any], found: dict[str, t.Any]) -> tuple[dict[str, t.Any], list[str], list[str]]:
    """Scope artifacts: the part (``_partial.artifacts_part`` of ``found``, ``_artifacts.plan_now``), the services to
    restart and the actions; refused in one sentence when an artifact cannot be put back."""
    partial = _partial.artifacts_part(record, found)
    if partial["blocking"]:
        raise OperatorError(f"app {app['name']}: the artifacts of release {record['release_id']} cannot be put back, nothing "
                            "was changed: " + "; ".join(partial["blocking"]))
    declared = {a["name"]: a for a in app.get("artifacts") or []}
    restart = sorted({s for i in partial["artifacts"]["put_back"] for s in declared[i["name"]].get("restart") or []})
    actions = list(partial["actions"])
    if restart and actions:
        actions.append(f"docker compose restart {' '.join(restart)}")
    return partial, restart, actions


def put_back_artifacts(module: AppModule, record: dict[str, t.Any]) -> dict[str, t.Any]:
    """Scope artifacts: the release's declared artifacts back from the copies kept, by digest; nothing else changes."""
    app, ledger = module.app, module.ledger
    partial, restart, actions = plan_artifacts(app, record, _artifacts.plan_now(app, ledger, record))
    plan = partial["artifacts"]
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


# ---------------------------------------------------------------------- the cutover


def writers(client: t.Any, app: dict[str, t.Any]) -> list[t.Any]:
    """The running containers of services that host no declared database: what the cutover stops."""
    hosts = {d["service"] for d in app.get("databases") or []}
    return sorted((c for c in project_containers(client, app["project_name"])
                   if c.status == "running" and c.labels.get("com.docker.compose.service") not in hosts), key=lambda c: c.name)


def cutover_options(app: dict[str, t.Any]) -> _capture.BackupOptions:
    return _capture.BackupOptions(consistency=dict(app.get("consistency") or {}), tags=["cutover"])


def cutover_record(manifest: dict[str, t.Any], stopped: list[t.Any], stop_s: float, seconds: float) -> dict[str, t.Any]:
    """What the module returns of a cutover set: its id, the services stopped, the times, the bytes and the rows per table."""
    return {"set_id": manifest["set_id"], "stopped": sorted({c.labels.get("com.docker.compose.service") for c in stopped}),
            "stop_s": round(stop_s, 3), "seconds": round(seconds, 3),
            "bytes": sum(int(i.get("bytes") or 0) for i in manifest["items"]),
            "tables": {i["name"]: i.get("tables") for i in manifest["items"] if i.get("kind") == "database"}}


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
    return quiesce, cutover_record(done["manifest"], stopped, held - began, time.monotonic() - held)


# ---------------------------------------------------------------------- forward: an upgrade


def forward_actions(changed_files: list[str], pins_file: str | None, writer_names: list[str] | None, stopped: list[str],
                    running: bool) -> list[str]:
    """What an upgrade does: the files written, the pins removed (``pins_file``: the pins file an unpin empties), the
    cutover (``writer_names``: the services it stops, None without one), and the ``up`` when something must change."""
    actions = [f"write {rel}" for rel in changed_files]
    if changed_files and pins_file:
        actions.append(f"remove the digest pins in {pins_file}")
    if writer_names is not None:
        actions.append(f"stop {', '.join(writer_names) or 'no writer'} and capture the data as the cutover set")
    if changed_files or stopped or not running:
        actions.append("docker compose up -d")
    return actions


def switch_forward(module: AppModule) -> dict[str, t.Any]:
    """An upgrade: the new files, the cutover capture when asked, and ``docker compose up -d``."""
    app = module.app
    if module.params["start_first"]:
        raise OperatorError(f"app {app['name']}: start_first applies to a switch back (release); an upgrade recreates its services")
    wanted = forward_files(module, app)
    changed_files, current = plan_files(app, wanted)
    running = running_images(module.client, app)
    one_shot = one_shot_services(Compose(app).config(), app) if any(s["state"] != "running" for s in running.values()) else set()
    stopped = [n for n, s in running.items() if not settled(s, n in one_shot)]
    pins_file = app["pins_file"] if changed_files and app.get("pins_file") and os.path.isfile(app["pins_file"]) \
        and module.params["unpin"] else None
    cutover = module.params["cutover"] and bool(changed_files or stopped)
    names = sorted({c.labels.get("com.docker.compose.service") for c in writers(module.client, app)}) if cutover else None
    actions = forward_actions(changed_files, pins_file, names, stopped, bool(running))
    result: dict[str, t.Any] = {"changed": bool(actions), "actions": actions, "files_changed": changed_files,
                                "diff": diff_of(app, changed_files, current, wanted)}
    if actions and not module.check_mode:
        module.result.update(actions=actions, files_changed=changed_files)  # what a failure from here on reports
        app = apply_forward(module, wanted, changed_files, current, cutover, result)
        result["outside_release"] = outside(module.client, app, Compose(app).config())
        running = running_images(module.client, app)
    result["services"] = running
    return result


def apply_forward(module: AppModule, wanted: dict[str, bytes], changed_files: list[str], current: dict[str, bytes],
                  cutover: bool, result: dict[str, t.Any]) -> dict[str, t.Any]:
    """Write the new files, capture the cutover set (the old files back when it fails), bring the project up;
    the app as resolved again from the new files."""
    with module.lock("switching to a new version"):
        before, quiesce = module.app, None
        if cutover:
            resumed = _quiesce.resume_interrupted(module.ledger, module.client)
            plan = _capture.plan_backup(before, module.client, cutover_options(before))
        pins = read_or_none(before.get("pins_file"))
        for rel in changed_files:
            _project.write_project_file(os.path.join(before["project_dir"], rel), wanted[rel])
        if changed_files and module.params["unpin"]:
            drop_pins(before)  # what pinning added, taken away, as unpin does in the files
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
    return app


# ---------------------------------------------------------------------- back: a rollback or a revert


def target_files(module: AppModule) -> tuple[dict[str, t.Any], dict[str, bytes]]:
    """The release switched back to (refused when the ledger has no such record) and its project files."""
    ledger = module.ledger
    release_id = module.params["release"]
    record = read_release(ledger, release_id)
    if record is None:
        raise unknown_release(module.app["name"], release_id, ledger)
    wanted, warning = _project.release_files(ledger, module.app, record)
    if warning:
        module.warn(warning)
    return record, wanted


def back_actions(changed_files: list[str], held: HeldChange | None, rows: list[dict[str, t.Any]], beside: list[str],
                 recreate: list[str]) -> list[str]:
    """What a switch back does: the files and the images file written, the images fetched, the services started
    beside their old container, and the ``up`` on the release's images."""
    actions = [f"write {rel}" for rel in changed_files]
    actions += held_actions(held)
    actions += [f"{r['source']} image for {r['service']}" for r in rows if r["source"] in ("registry", "archive")]
    actions += [f"start {n} beside its old container, wait until it is healthy, remove the old one" for n in beside]
    if changed_files or recreate or held is not None:
        actions.append("docker compose up -d --pull never on the release's images" + (f" (recreates {', '.join(recreate)})" if recreate else ""))
    return actions


def held_diff(held: HeldChange) -> dict[str, str]:
    """The diff entry of the images file."""
    return {"before_header": held[0], "after_header": held[0], "before": (held[1] or b"").decode(errors="replace"),
            "after": (held[2] or b"").decode(errors="replace")}


def plan_back(module: AppModule, record: dict[str, t.Any], wanted: dict[str, bytes], partial: dict[str, t.Any] | None) -> BackPlan:
    """Everything a switch back to ``record`` does, decided before anything changes (refusals included)."""
    app, ledger, client = module.app, module.ledger, module.client
    changed_files, current = plan_files(app, wanted)
    rows = needed_images(app, module.params["release"], plan_load(client, ledger, record, allow_pull=True), partial)
    expected = expected_images(record, partial)
    running, created = project_images(client, app)
    one_shot = one_shot_services((record.get("compose") or {}).get("config") or {}, app)
    start_first = list(dict.fromkeys(module.params["start_first"] or []))
    if start_first:
        check_start_first(app, Compose(app).config(), start_first)
    beside, recreate = split_beside(start_first, mismatched_services(expected, running, one_shot), running)
    env_rel = os.path.relpath(app["env_file"], app["project_dir"])
    held = images_file_change(app, ledger.path(PINS_FILE), record, partial, wanted.get(env_rel, current.get(env_rel)))
    actions = back_actions(changed_files, held, rows, beside, recreate)
    result: dict[str, t.Any] = {"changed": bool(actions), "actions": actions, "files_changed": changed_files, "images": rows,
                                "recreated": recreate, "started_first": beside,
                                "diff": diff_of(app, changed_files, current, wanted)}
    if held is not None:
        result["diff"].append(held_diff(held))
    if partial is not None:
        result["partial"] = partial
    return BackPlan(record, partial, wanted, current, changed_files, rows, expected, running, created,
                    {n: s.get("container_id") for n, s in running.items()}, beside, recreate, held, actions, result)


def write_back_files(app: dict[str, t.Any], plan: BackPlan) -> None:
    """The release's project files, its pins (pins: own_file) and the images file (pins: compose_files)."""
    for rel in plan.changed_files:
        _project.write_project_file(os.path.join(app["project_dir"], rel), plan.wanted[rel])
    # pins: own_file - the release's digests (for a partial rollback, of what comes back), as its saved files hold them otherwise
    restore_pins(app, plan.record if plan.partial is None else mixed_pins(app, plan.record, plan.partial["back"]["images"]))
    if plan.held is not None:  # pins: compose_files - the services a partial rollback holds back, or none any more
        put_file(plan.held[0], plan.held[2])


def apply_back(module: AppModule, plan: BackPlan) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """Make the images present, write the files, then start the start_first services beside their old container and
    bring the project up on the release's images; the app resolved again and its Compose configuration."""
    ledger, client = module.ledger, module.client
    module.result.update(actions=plan.actions, files_changed=plan.changed_files, images=plan.rows)  # what a failure from here on reports
    with module.lock(f"switching to release {module.params['release']}"):
        load(client, docker_cli(), ledger, plan.record, plan.rows)
        write_back_files(module.app, plan)
        app = module.revalidate()  # the compose files may have changed
        config = Compose(app).config()
        if plan.beside:
            try:
                check_start_first(app, config, plan.beside)  # the release's files may publish a port the live ones do not
            except OperatorError:
                put_back(app, plan.changed_files, plan.current, None)
                if plan.held is not None:
                    put_file(plan.held[0], plan.held[1])
                raise
        override = ledger.path("switch-override.yml")
        in_files = {n: str(s.get("image")) for n, s in (config.get("services") or {}).items() if s.get("image")}
        images = override_images(client, plan.expected, plan.running, plan.created, in_files, plan.rows)
        atomic_write_bytes(override, _project.images_file("written by selfhost.rollback.switch: run the release's exact images", images))
        for name in plan.beside:
            start_beside(client, app, override, name, module.params["wait"])
        bring_up(app, override, "never", module.params["wait"])
    return app, config


def verify_back(module: AppModule, plan: BackPlan, app: dict[str, t.Any], config: dict[str, t.Any]) -> dict[str, t.Any]:
    """After the switch back: what was recreated, and every service on the release's image (a failure otherwise)."""
    result, release_id = plan.result, module.params["release"]
    result["outside_release"] = outside(module.client, app, config)
    running = running_images(module.client, app)
    result["recreated"] = sorted(n for n, s in running.items() if s.get("container_id") != plan.before_ids.get(n) and n not in plan.beside)
    services = verdicts(plan.expected, running)
    wrong = not_on_release(services)
    if wrong:
        module.result.update(services=services, recreated=result["recreated"])
        raise OperatorError(f"app {app['name']}: after the switch to {release_id} not every service runs the release's image: "
                            + "; ".join(wrong))
    result["services"] = services
    if plan.partial is not None:
        plan.partial["untouched"] = untouched(module, plan.partial, plan.before_ids, running)
        plan.partial["mixed"] = _partial.mixed(release_id, plan.partial)
    return result


def switch_back(module: AppModule) -> dict[str, t.Any]:
    """A switch back to the release ``release``: all of it, or the part ``services`` and ``scope`` say."""
    record, wanted = target_files(module)
    partial = None
    if _partial.is_partial(module.params["services"], module.params["scope"]):
        if module.params["scope"] == "artifacts":
            return put_back_artifacts(module, record)
        partial = plan_partial(module, record, wanted)
        wanted = partial.pop("files")
    plan = plan_back(module, record, wanted, partial)
    if not plan.actions or module.check_mode:
        plan.result["services"] = verdicts(plan.expected, plan.running)
        if not plan.actions:
            plan.result["recreated"] = []
        return plan.result
    app, config = apply_back(module, plan)
    return verify_back(module, plan, app, config)


# ---------------------------------------------------------------------- the run


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
    """The module's body: the live project checked, the operation opened (O(operation)), the switch, its time."""
    began = time.monotonic()
    check_live_project(module.client, module.app)
    if module.params["operation"]:
        open_operation(module)
    result = switch_back(module) if module.params["release"] else switch_forward(module)
    result["seconds"] = round(time.monotonic() - began, 3)
    if not module.diff_mode:
        result.pop("diff", None)
    return result
