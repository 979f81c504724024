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
    bring the project up (C(docker compose up -d --remove-orphans))."
  - "Back (a rollback or a revert): put the project files kept with release O(release) back in
    place (secret values, which the ledger never holds, come from the live env file), make its
    images present (from the engine, their registry, or the ledger's image archive), bring the
    project up on exactly those images (by image ID, C(--pull never)), and verify that every
    service's container runs the release's image."
  - Health is not judged here; follow with M(selfhost.rollback.health_gate). Data is not restored
    here; precede with M(selfhost.rollback.restore) when M(selfhost.rollback.rollback_check) says so.
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
extends_documentation_fragment:
  - selfhost.rollback.app
attributes:
  check_mode:
    support: full
    description: Reports which files would change, which images would be loaded and which services would be recreated.
  diff_mode:
    support: full
    description: Shows the compose files before and after; env file changes are shown as keys, with the values of secret-looking keys masked.
  idempotent:
    support: full
    description: When the files already match and every service runs the intended image, nothing changes.
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
  wait:
    description: Seconds allowed for C(docker compose up).
    type: float
    default: 300
  lock_timeout:
    description: Seconds to wait for another run on the same app to finish.
    type: float
    default: 60
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
services:
  description: Per service, the container and the image it runs after the switch, and for a switch back whether that is the release's image.
  returned: always
  type: dict
  sample: {app: {container_id: 3f2a9c1d0b7e, image_id: "sha256:78d6...", expected: "sha256:78d6...", ok: true}}
seconds:
  description: Time the switch took.
  returned: always
  type: float
"""

import os
import time
import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.selfhost.rollback.plugins.module_utils import _project
from ansible_collections.selfhost.rollback.plugins.module_utils._app import AppError, app_argument_spec, validate_app
from ansible_collections.selfhost.rollback.plugins.module_utils._common import (
    Compose,
    DockerException,
    OperatorError,
    docker_cli,
    docker_client,
    is_secret,
    parse_env_text,
    project_containers,
    require_docker_sdk,
    scrub,
    secret_values,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._images import load, plan_load
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger, LedgerError, atomic_write_bytes


def running_images(client: t.Any, app: dict[str, t.Any]) -> dict[str, dict[str, t.Any]]:
    out: dict[str, dict[str, t.Any]] = {}
    for container in sorted(project_containers(client, app["project_name"]), key=lambda c: (c.status != "running", c.name)):
        service = container.labels.get("com.docker.compose.service")
        if service and service not in out:
            out[service] = {"container_id": container.id[:12], "image_id": container.attrs.get("Image"), "state": container.status}
    return out


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


def forward_files(module: AnsibleModule, app: dict[str, t.Any]) -> dict[str, bytes]:
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
            wanted[rel] = _project.unpin(wanted[rel].decode()).encode()
    return wanted


def diff_of(app: dict[str, t.Any], changed: list[str], current: dict[str, bytes], wanted: dict[str, bytes]) -> list[dict[str, str]]:
    env_rel = os.path.relpath(app["env_file"], app["project_dir"])
    diffs = []
    for rel in changed:
        if rel == env_rel:
            diffs.append({"before_header": rel + " (keys)", "after_header": rel + " (keys)",
                          "before": "", "after": "\n".join(env_diff(current.get(rel, b""), wanted[rel])) + "\n"})
        else:
            diffs.append({"before_header": rel, "after_header": rel,
                          "before": current.get(rel, b"").decode(errors="replace"), "after": wanted[rel].decode(errors="replace")})
    return diffs


def bring_up(app: dict[str, t.Any], extra_file: str | None, pull: str, wait: float) -> None:
    target = dict(app)
    if extra_file:
        target["compose_files"] = list(app["compose_files"]) + [extra_file]
    Compose(target).run("up", "-d", "--remove-orphans", "--pull", pull, timeout=wait, what="bringing the project up")


def switch_back(module: AnsibleModule, app: dict[str, t.Any], ledger: Ledger, client: t.Any) -> dict[str, t.Any]:
    release_id = module.params["release"]
    record = ledger.read(os.path.join("releases", release_id + ".json"))
    if record is None:
        known = ", ".join(n[:-5] for n in ledger.list("releases")[-5:]) or "none"
        raise OperatorError(f"app {app['name']}: release {release_id} is not in the ledger; recorded releases: {known}")
    wanted = _project.saved_files(ledger, release_id)
    if wanted is None:
        wanted = {f["path"]: f["content"].encode() for f in record["compose"]["files"] if not os.path.isabs(f["path"])}
        module.warn(f"app {app['name']}: release {release_id} has no saved project files; its compose files come from the "
                    "release record and the env file stays as it is (check the config drift rollback_check reports)")
    env_rel = os.path.relpath(app["env_file"], app["project_dir"])
    if env_rel in wanted:
        live_env = _project.read_files({env_rel: app["env_file"]})[env_rel].decode(errors="surrogateescape") \
            if os.path.isfile(app["env_file"]) else ""
        merged, missing_keys = _project.merge_env(wanted[env_rel].decode(errors="surrogateescape"), live_env)
        if missing_keys:
            raise OperatorError(f"app {app['name']}: release {release_id} needs {', '.join(missing_keys)} in {app['env_file']}, "
                                "which the env file lacks now (their values are never kept in the ledger); add them and run again")
        wanted[env_rel] = merged.encode(errors="surrogateescape")
    changed_files, current = plan_files(app, wanted)
    rows = plan_load(client, ledger, record, allow_pull=True)
    missing = [r for r in rows if r["source"] in ("missing", "unknown")]
    if missing:
        raise OperatorError(f"app {app['name']}: images of release {release_id} are not available anywhere: "
                            + ", ".join(f"{r['service']} ({r['ref']})" for r in missing) + "; nothing was changed")
    expected = {name: s["image_id"] for name, s in (record.get("services") or {}).items()}
    running = running_images(client, app)
    mismatched = sorted(n for n, i in expected.items()
                        if running.get(n, {}).get("image_id") != i or running.get(n, {}).get("state") != "running")
    actions = [f"write {rel}" for rel in changed_files]
    actions += [f"{r['source']} image for {r['service']}" for r in rows if r["source"] in ("registry", "archive")]
    if changed_files or mismatched:
        actions.append("docker compose up -d --pull never on the release's images" + (f" (recreates {', '.join(mismatched)})" if mismatched else ""))
    result: dict[str, t.Any] = {"changed": bool(actions), "actions": actions, "files_changed": changed_files, "images": rows,
                                "diff": diff_of(app, changed_files, current, wanted)}
    if not actions or module.check_mode:
        result["services"] = {n: dict(running.get(n, {}), expected=i, ok=running.get(n, {}).get("image_id") == i)
                              for n, i in expected.items()}
        return result
    with ledger.lock(module.params["lock_timeout"], purpose=f"switching to release {release_id}"):
        load(client, docker_cli(), ledger, record, rows)
        for rel in changed_files:
            _project.write_project_file(os.path.join(app["project_dir"], rel), wanted[rel])
        app = validate_app(module.params["app"])  # the compose files may have changed
        override = ledger.path("switch-override.yml")
        lines = ["# written by selfhost.rollback.switch: run the release's exact images", "services:"]
        lines += [f"  {name}:\n    image: {image_id}" for name, image_id in sorted(expected.items())]
        atomic_write_bytes(override, ("\n".join(lines) + "\n").encode())
        bring_up(app, override, "never", module.params["wait"])
    running = running_images(client, app)
    services = {n: dict(running.get(n, {}), expected=i, ok=running.get(n, {}).get("image_id") == i) for n, i in expected.items()}
    wrong = [f"{n} runs {s.get('image_id')}" for n, s in services.items() if not s["ok"]]
    if wrong:
        raise OperatorError(f"app {app['name']}: after the switch to {release_id} not every service runs the release's image: "
                            + "; ".join(wrong))
    result["services"] = services
    return result


def switch_forward(module: AnsibleModule, app: dict[str, t.Any], ledger: Ledger, client: t.Any) -> dict[str, t.Any]:
    wanted = forward_files(module, app)
    changed_files, current = plan_files(app, wanted)
    running = running_images(client, app)
    stopped = [n for n, s in running.items() if s["state"] != "running"]
    actions = [f"write {rel}" for rel in changed_files]
    if changed_files or stopped or not running:
        actions.append("docker compose up -d --remove-orphans")
    result: dict[str, t.Any] = {"changed": bool(actions), "actions": actions, "files_changed": changed_files,
                                "diff": diff_of(app, changed_files, current, wanted)}
    if actions and not module.check_mode:
        with ledger.lock(module.params["lock_timeout"], purpose="switching to a new version"):
            for rel in changed_files:
                _project.write_project_file(os.path.join(app["project_dir"], rel), wanted[rel])
            app = validate_app(module.params["app"])
            bring_up(app, None, "missing" if module.params["pull"] else "never", module.params["wait"])
        running = running_images(client, app)
    result["services"] = running
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=app_argument_spec(
            release={"type": "str"},
            env={"type": "dict"},
            compose_src={"type": "path"},
            unpin={"type": "bool", "default": True},
            pull={"type": "bool", "default": True},
            wait={"type": "float", "default": 300},
            lock_timeout={"type": "float", "default": 60},
        ),
        mutually_exclusive=[("release", "env"), ("release", "compose_src")],
        required_one_of=[("release", "env", "compose_src")],
        supports_check_mode=True,
    )
    require_docker_sdk(module)
    name = module.params["app"]["name"]
    began = time.monotonic()
    secrets: list[str] = []
    try:
        app = validate_app(module.params["app"])
        secrets = secret_values(app)
        ledger = Ledger(module.params["store"], name)
        client = docker_client()
        if module.params["release"]:
            result = switch_back(module, app, ledger, client)
        else:
            result = switch_forward(module, app, ledger, client)
    except (AppError, OperatorError, LedgerError) as exc:
        module.fail_json(msg=str(scrub(str(exc), secrets)))
    except DockerException as exc:
        module.fail_json(msg=f"app {name}: the Docker Engine refused a request ({exc}); check that dockerd is running")
    result["seconds"] = round(time.monotonic() - began, 3)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**scrub(result, secrets))


if __name__ == "__main__":
    main()
