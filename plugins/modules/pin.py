#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pin
short_description: Pin every image of a Compose app by registry digest
version_added: 0.1.0
description:
  - Rewrites the app's compose file(s) so that every image reads C(name:tag@sha256:...), the digest of the image the
    service runs (or, when it is not running, the image its tag names on this engine).
  - Only the image scalars change. Comments, ordering, quoting, anchors and C(${VAR:-default}) interpolation stay
    byte-for-byte as written; an anchored image is pinned once, at its anchor.
  - An image with a variable tag such as C(repo:${TAG:-1.0}) is pinned by appending the digest after the
    interpolation (C(repo:${TAG:-1.0}@sha256:...)); the file still interpolates, and the digest decides what runs.
    An upgrade that changes the tag must pin again.
  - An image given entirely through a variable, such as C(${OLLAMA_IMAGE}), is not pinned in the file, with a warning;
    set the variable to a digest reference instead. Images without a tag get an explicit C(:latest).
  - Images with no registry digest (built locally) stay as they are, with a warning; M(selfhost.rollback.release)
    records them by image ID and keeps them in the image archive. Services with only C(build:) are skipped.
  - Images that are already pinned are left as they are.
  - "With O(app.pins=own_file) the project's files are never written (a deploy tool that templates
    C(compose.yaml) keeps owning it). The digests go into the collection's own compose file
    C(<store>/<app>/pins.yaml), one image line per service as Compose resolves it, and every Compose
    call the collection makes adds that file after the project's own. M(selfhost.rollback.app_info)
    returns the command that does the same by hand (RV(selfhost.rollback.app_info#module:compose_command))."
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
extends_documentation_fragment:
  - selfhost.rollback.app
attributes:
  check_mode:
    support: full
    description: Reports exactly which image lines would change; nothing is written.
  diff_mode:
    support: full
    description: Returns the before and after text of each changed compose file.
  idempotent:
    support: full
    description: Pinned images are left as they are; a second run changes nothing.
options:
  pull:
    description:
      - Pull an image that is not on this engine before resolving its digest.
      - When V(false), an image of an active service that is not on this engine is an error.
    type: bool
    default: false
  lock_timeout:
    description: Seconds to wait for another run that holds the app's ledger lock.
    type: float
    default: 30
requirements:
  - Docker SDK for Python
  - ruamel.yaml
  - Docker Compose v2 CLI plugin
notes:
  - The compose files are replaced atomically and keep their owner and mode.
  - Variables are interpolated from the environment and the app's env file, as Compose does; their values are never returned.
seealso:
  - module: selfhost.rollback.release
"""

EXAMPLES = r"""
- name: Pin the images of the notes app
  selfhost.rollback.pin:
    app:
      name: notes
      project_dir: /srv/notes

- name: Pin an app made of several compose files, pulling what is missing
  selfhost.rollback.pin:
    app:
      name: chat
      project_dir: /srv/chat
      compose_files: [compose.yaml, compose.gpu.yaml]
    pull: true
  register: chat_pins

- name: Show which images were pinned
  ansible.builtin.debug:
    msg: "{{ chat_pins.pins | map(attribute='after') | list }}"
"""

RETURN = r"""
files:
  description: Every compose file with what was decided for each of its images.
  returned: success
  type: list
  elements: dict
  contains:
    path:
      description: Path of the compose file.
      type: str
    changed:
      description: Whether the file was (or in check mode would be) rewritten.
      type: bool
    images:
      description: One entry per image scalar, with C(services), C(line), C(image), C(status) and, when pinned, C(after) and C(digest).
      type: list
      elements: dict
    skipped_services:
      description: Services with no image (only C(build:)), which are not pinned.
      type: list
      elements: str
pins_file:
  description: The collection's own pins file, written instead of the project's files.
  returned: when O(app.pins=own_file)
  type: str
  sample: /var/lib/selfhost-rollback/chat/pins.yaml
pins:
  description: The changes made (or in check mode that would be made), one per image scalar.
  returned: success
  type: list
  elements: dict
  contains:
    path:
      description: Compose file (with O(app.pins=own_file), the pins file).
      type: str
    line:
      description: Line of the image scalar (V(null) with O(app.pins=own_file)).
      type: int
    services:
      description: Services using that image scalar (several when it is an anchor).
      type: list
      elements: str
    before:
      description: The image as written before.
      type: str
    after:
      description: The image as written after.
      type: str
  sample: [{"path": "/srv/notes/compose.yaml", "line": 19, "services": ["app"],
            "before": "127.0.0.1:5000/selfhost/notes:${NOTES_VERSION:-1.0}",
            "after": "127.0.0.1:5000/selfhost/notes:${NOTES_VERSION:-1.0}@sha256:ec5f..."}]
outcome:
  description:
    - V(changed) when something was (or, in check mode, would be) changed, V(unchanged) when everything was already in place.
    - V(failed) when the module could not do its work (the task fails with the same sentence in RV(reasons)).
  returned: always
  type: str
  sample: changed
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
import tempfile
import typing as t

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.selfhost.rollback.plugins.module_utils import _project
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import Compose
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import project_containers
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._project import read_env_file
from ansible_collections.selfhost.rollback.plugins.module_utils._images import pull, resolve
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import atomic_write_bytes
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils._pin import (
    DIGEST_IN_REF,
    HAS_RUAMEL,
    ImageNode,
    PinError,
    locate_images,
    pin_suffix,
    plan_file,
)


class Resolver:
    """Digest of the image a service runs (its container's image) or would run (what its tag names here)."""

    def __init__(self, client: t.Any, app: dict[str, t.Any], config: dict[str, t.Any], allow_pull: bool) -> None:
        self.client = client
        self.app = app
        self.active = {name: s.get("image") for name, s in (config.get("services") or {}).items()}
        self.built = {name for name, s in (config.get("services") or {}).items() if "build" in s}
        self.running: dict[str, str] = {}
        for container in project_containers(client, app["project_name"]):
            service = container.labels.get("com.docker.compose.service")
            if service and (service not in self.running or container.status == "running"):
                self.running[service] = container.attrs.get("Image")
        self.allow_pull = allow_pull

    def __call__(self, node: ImageNode, ref: str) -> dict[str, t.Any]:
        effective = [s for s in node.services if self.active.get(s) == ref]
        image_id = next((self.running[s] for s in effective if s in self.running), None)
        found = resolve(self.client, ref, image_id)
        if found is None and self.allow_pull and pull(self.client, ref):
            found = resolve(self.client, ref)
        if found is None:
            if effective and all(s in self.built for s in effective):
                return {"skip": "built locally (build:) and not built yet"}
            if effective:
                raise PinError(
                    f"image {ref} of service {', '.join(effective)} is not on this engine"
                    + (" and the registry does not have it" if self.allow_pull else "")
                    + "; deploy or pull it first (docker compose pull), or set pull=true"
                )
            return {"skip": "not on this engine and not the image of an active service (overridden or in an inactive profile)"}
        return {"digest": found["repo_digest"], "image_id": found["image_id"]}


def write_preserving(module: AppModule, path: str, text: str) -> None:
    """Replace ``path`` atomically with ``text``; owner, mode and SELinux context are kept by atomic_move."""
    fd, tmp = tempfile.mkstemp(prefix=".pin-", dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as handle:
        handle.write(text.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
    module.module.atomic_move(tmp, path)


def pin_app(module: AppModule, app: dict[str, t.Any]) -> dict[str, t.Any]:
    texts = {}
    for path in app["compose_files"]:
        with open(path, "rb") as handle:
            raw = handle.read()
        try:
            texts[path] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PinError(f"{path} is not UTF-8 text ({exc})") from exc
        locate_images(texts[path], path)  # a clear YAML error before Compose's
    client = module.client
    config = Compose(app).config()
    resolver = Resolver(client, app, config, module.params["pull"])
    env = dict(read_env_file(app["env_file"]))
    env.update(os.environ)  # the shell wins over .env, as in Compose

    plans = [plan_file(texts[path], path, env, resolver) for path in app["compose_files"]]
    files, pins, diffs = [], [], []
    for plan in plans:
        changed = plan["after"] != plan["before"]
        files.append({"path": plan["file"], "changed": changed, "images": plan["images"],
                      "skipped_services": list(plan["without_image"])})
        for edit in plan["edits"]:
            pins.append({"path": plan["file"], "line": edit.line, "services": edit.services, "before": edit.before, "after": edit.after})
        for warning in plan["warnings"]:
            module.warn(warning)
        if changed:
            diffs.append({"before_header": plan["file"], "after_header": plan["file"], "before": plan["before"], "after": plan["after"]})
    for plan in plans:
        for service in plan["without_image"]:
            if service in plan["has_build"]:
                module.warn(f"{plan['file']}: service {service} has only build: and no image, so nothing is pinned for it; "
                            "the release records the image it runs by image ID and the archive keeps it")

    if diffs and not module.check_mode:
        with module.lock("pinning the compose files"):
            for plan in plans:
                if plan["after"] != plan["before"]:
                    with open(plan["file"], "rb") as handle:
                        if handle.read().decode("utf-8") != plan["before"]:
                            raise PinError(f"{plan['file']} changed while it was being pinned; run again")
                    write_preserving(module, plan["file"], plan["after"])
    result: dict[str, t.Any] = {"changed": bool(diffs), "files": files, "pins": pins}
    if module.diff_mode:
        result["diff"] = diffs
    return result


def pin_own_file(module: AppModule, app: dict[str, t.Any]) -> dict[str, t.Any]:
    """``pins: own_file``: the user's files stay as they are; the digests go into the collection's own
    compose file (``pins_file``), one image line per service, which every Compose call of the
    collection adds after the project's files. Images come as Compose resolves them."""
    client = module.client
    config = Compose(dict(app, pins_file=None)).config()  # what the project's own files say, pins aside
    resolver = Resolver(client, app, config, module.params["pull"])
    images: dict[str, str] = {}
    pins = []
    for name, spec in sorted((config.get("services") or {}).items()):
        ref = spec.get("image")
        if not ref:
            module.warn(f"service {name} has only build: and no image, so nothing is pinned for it; the release records "
                        "the image it runs by image ID and the archive keeps it")
            continue
        if DIGEST_IN_REF.search(ref):
            pinned = ref
        else:
            found = resolver(ImageNode(services=[name], value=ref, start=0, end=0, line=0, style=None), ref)
            if not found.get("digest"):
                if found.get("image_id"):
                    module.warn(f"{ref} (service {name}) has no registry digest, so it stays unpinned; the release records it "
                                f"by image ID {found['image_id']} and the image archive keeps it restorable")
                continue
            pinned = ref + pin_suffix(ref, found["digest"])
            pins.append({"path": app["pins_file"], "line": None, "services": [name], "before": ref, "after": pinned})
        images[name] = pinned
    before = ""
    if os.path.isfile(app["pins_file"]):
        with open(app["pins_file"], encoding="utf-8") as handle:
            before = handle.read()
    text = _project.images_file(f"written by selfhost.rollback.pin for app {app['name']}: the digest of every image", images).decode()
    changed = before != text
    if changed and not module.check_mode:
        with module.lock("pinning the images"):
            atomic_write_bytes(app["pins_file"], text.encode())
    result: dict[str, t.Any] = {"changed": changed, "pins_file": app["pins_file"], "pins": pins if changed else [],
                                "files": [{"path": p, "changed": False, "images": [], "skipped_services": []} for p in app["compose_files"]]}
    if module.diff_mode and changed:
        result["diff"] = [{"before_header": app["pins_file"], "after_header": app["pins_file"], "before": before, "after": text}]
    return result


def pin(module: AppModule) -> dict[str, t.Any]:
    try:
        if module.app.get("pins") == "own_file" and module.app.get("pins_file"):
            return pin_own_file(module, module.app)
        return pin_app(module, module.app)
    except PinError as exc:
        raise OperatorError(f"app {module.name}: nothing was pinned: {exc}") from exc


def main() -> None:
    module = AppModule(
        {
            "pull": {"type": "bool", "default": False},
            "lock_timeout": {"type": "float", "default": 30},
        },
        docker_failure="the Docker Engine refused a request while pinning ({exc}); check the engine and run again",
        os_failure="pinning failed ({exc}); check that the compose files are writable",
    )
    if not HAS_RUAMEL:
        module.fail(missing_required_lib("ruamel.yaml"))
    module.run(pin)


if __name__ == "__main__":
    main()
