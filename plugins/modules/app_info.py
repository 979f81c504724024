#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: app_info
short_description: Report what an app runs now, and whether it answers
version_added: 0.1.0
description:
  - Reads the app's Compose project from the Docker Engine and reports every service's
    container, state, health, image and image digest, the published ports, and the
    answer of the app's health URL.
  - Validates the app definition (project directory, compose files) on the way, so it
    is the first task of every role in this collection.
  - Changes nothing.
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
  probe_health:
    description: Request O(app.health.url) and report the answer.
    type: bool
    default: true
requirements:
  - Docker SDK for Python 7.0 or newer
  - the Compose v2 CLI plugin (C(docker compose))
notes:
  - Secret values from the project's env file never appear in the result.
"""

EXAMPLES = r"""
- name: Show what the notes app runs
  selfhost.rollback.app_info:
    app:
      name: notes
      project_dir: /srv/notes
      health:
        url: http://127.0.0.1:8080/healthz
  register: notes_info

- name: Print where it answers
  ansible.builtin.debug:
    msg: "{{ notes_info.health.url }} answered {{ notes_info.health.status }}"
"""

RETURN = r"""
project_name:
  description: The Compose project name.
  returned: always
  type: str
  sample: notes
project_name_from:
  description:
    - Where the project name comes from, in Compose's order of precedence.
    - V(project_name), V(COMPOSE_PROJECT_NAME), V(the compose file's name:), or V(the project directory's name).
    - V(containers) when the definition names no project (the name would come from the compose file's C(name:) or
      the directory's name) and the containers started from the project directory carry another, all one project
      started with the files the definition reads, as after C(docker compose -p NAME up -d) or with
      C(COMPOSE_PROJECT_NAME) set in the shell only. That name is used for the whole run and a warning says so;
      set O(app.project_name) to keep it when no container runs.
  returned: always
  type: str
  sample: the project directory's name
compose_files:
  description: The compose files Compose reads in the project directory, in merge order.
  returned: always
  type: list
  elements: str
  sample: [/srv/notes/compose.yaml, /srv/notes/compose.override.yaml]
compose_command:
  description: The C(docker compose) command prefix that drives exactly this project by hand (its files, the pins file with O(app.pins=own_file), its name).
  returned: always
  type: str
  sample: docker compose --project-directory /srv/chat -p chat -f /srv/chat/compose.yaml -f /var/lib/selfhost-rollback/chat/pins.yaml
compose_files_from:
  description: Where that list comes from (C(compose_files), C(COMPOSE_FILE), or the default file names).
  returned: always
  type: str
  sample: the default file names
services:
  description:
    - One entry per service declared in the compose files.
    - Keyed by service name.
  returned: always
  type: dict
  sample:
    app:
      declared_image: 127.0.0.1:5000/selfhost/notes:1.0
      container: notes-app-1
      container_id: 3f2a9c1d0b7e
      state: running
      health: healthy
      image_id: sha256:78d65fffd3cc
      repo_digests: ["127.0.0.1:5000/selfhost/notes@sha256:ec5f..."]
      ports: ["127.0.0.1:8080->8080/tcp"]
  contains:
    declared_image:
      description: The image the compose files declare for the service (V(null) when they declare none).
      type: str
    container:
      description: Name of the service's container (V(null) when it has none).
      type: str
    container_id:
      description: Short id (12 characters) of that container (V(null) when it has none).
      type: str
    state:
      description: The container's state as the engine reports it (V(running), V(exited)...), or V(absent) when there is no container.
      type: str
    exit_code:
      description: The container's exit code, as the engine reports it.
      type: int
      returned: when the service has a container
    health:
      description: The container's health check status (V(healthy), V(unhealthy), V(starting)), or V(null) without a health check or container.
      type: str
    image_id:
      description: Image ID the container runs (V(null) when there is no container).
      type: str
    repo_digests:
      description: Registry digests of that image (empty when it has none or there is no container).
      type: list
      elements: str
    ports:
      description: Published ports, each as C(<host ip>:<host port>-><container port>/<protocol>).
      type: list
      elements: str
    one_shot:
      description: "V(true) for a one-shot service, named in O(app.one_shot) or awaited by another with C(condition: service_completed_successfully)."
      type: bool
      returned: for a one-shot service
running:
  description: Whether every declared service has a running container (a one-shot service, one that exited by design).
  returned: always
  type: bool
health:
  description: The health URL's answer (V(null) when O(app.health.url) is not set or O(probe_health=false)).
  returned: always
  type: dict
  sample: {url: "http://127.0.0.1:8080/healthz", status: 200, ok: true, body: {status: ok, version: "1.0"}, ms: 4.1}
  contains:
    url:
      description: The URL requested.
      type: str
    status:
      description: HTTP status of the answer (V(0) when nothing answered).
      type: int
    ok:
      description: Whether the status is 2xx.
      type: bool
    ms:
      description: Milliseconds the request took.
      type: float
    body:
      description: The answer's body, read as JSON when it parses, else its first 500 characters (V(null) when empty).
      type: raw
    error:
      description: Why nothing answered (connection refused, timeout...).
      type: str
      returned: when nothing answered
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

import os
import shlex
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._compose import Compose, check_live_project, one_shot_services
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import DockerException, project_containers
from ansible_collections.selfhost.rollback.plugins.module_utils._health import probe_once
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule


def describe(client: t.Any, app: dict[str, t.Any], declared: dict[str, t.Any]) -> dict[str, t.Any]:
    services: dict[str, t.Any] = {}
    by_service: dict[str, t.Any] = {}
    for container in project_containers(client, app["project_name"]):
        by_service.setdefault(container.labels.get("com.docker.compose.service"), container)
    for name in sorted(declared):
        entry: dict[str, t.Any] = {"declared_image": declared[name].get("image"), "container": None,
                                   "container_id": None, "state": "absent", "health": None,
                                   "image_id": None, "repo_digests": [], "ports": []}
        container = by_service.get(name)
        if container is not None:
            state = container.attrs.get("State", {})
            entry.update(container=container.name, container_id=container.id[:12], state=state.get("Status"),
                         exit_code=state.get("ExitCode"),
                         health=(state.get("Health") or {}).get("Status"), image_id=container.attrs.get("Image"))
            try:
                entry["repo_digests"] = client.images.get(entry["image_id"]).attrs.get("RepoDigests") or []
            except DockerException:
                entry["repo_digests"] = []
            for port, bindings in sorted((container.attrs.get("NetworkSettings", {}).get("Ports") or {}).items()):
                for binding in bindings or []:
                    entry["ports"].append(f"{binding.get('HostIp')}:{binding.get('HostPort')}->{port}")
        services[name] = entry
    return services


def compose_command(app: dict[str, t.Any]) -> str:
    """The ``docker compose`` prefix that drives the same project by hand (files, pins, name)."""
    words = ["docker", "compose", "--project-directory", app["project_dir"], "-p", app["project_name"]]
    for path in list(app["compose_files"]) + ([app["pins_file"]] if app.get("pins_file") and os.path.isfile(app["pins_file"]) else []):
        words += ["-f", path]
    return " ".join(shlex.quote(w) for w in words)


def report(module: AppModule) -> dict[str, t.Any]:
    app = module.app
    check_live_project(module.client, app)
    config = Compose(app).config()
    declared = config.get("services", {})
    services = describe(module.client, app, declared)
    one_shot = one_shot_services(config, app)
    for name in one_shot & set(services):
        services[name]["one_shot"] = True
    health = None
    if module.params["probe_health"] and (app.get("health") or {}).get("url"):
        health = probe_once(app["health"]["url"], app["health"]["timeout"], with_body=True)
    return {
        "changed": False,
        "project_name": app["project_name"],
        "project_name_from": app["project_name_from"],
        "compose_files": app["compose_files"],
        "compose_files_from": app["compose_files_from"],
        "compose_command": compose_command(app),
        "services": services,
        "running": bool(services) and all(s["state"] == "running" or (s.get("one_shot") and s["state"] == "exited")
                                          for s in services.values()),
        "health": health,
    }


def main() -> None:
    module = AppModule({"probe_health": {"type": "bool", "default": True}},
                       docker_failure="the Docker Engine refused a request ({exc}); check that dockerd is running and this user may use it")
    module.run(report)


if __name__ == "__main__":
    main()
