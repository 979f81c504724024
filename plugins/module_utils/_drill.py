# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rollback drills: restore a backup set into an isolated copy, boot a release on it, judge it, tear it down (private).

A drill copy is its own Compose project (``<app>-drill-<hex>``) made from the target
release's saved project files in ``<store>/<app>/drills/work/<drill_id>/``, with an
override file that:

- runs the release's exact images by ID (``--pull never``);
- publishes only the ports the health checks need, on free loopback ports;
- clears ``container_name`` and restart policies, adds the user's muting env keys;
- labels every container, volume and network ``io.selfhost-rollback.drill*``.

Every resource carries the labels, so a drill that was killed is cleaned up by the next
one (the sweep at the start, under the app's lock). Production is never addressed: the
sweep only removes resources with the drill labels and never anything of the app's own
Compose project. Pure helpers come first (unit-tested); the orchestration is at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets as _secrets
import shutil
import socket
import time
import typing as t
import urllib.parse


from ansible_collections.selfhost.rollback.plugins.module_utils import (
    _archive,
    _dumps,
    _gate,
    _operation,
    _project,
    _release,
    _restore,
    _sets,
    _sources,
    _tree,
    _verify,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso, stamp
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import Compose
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import docker_cli, project_containers
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._health import judge, probe_once, run_smoke, summarize
from ansible_collections.selfhost.rollback.plugins.module_utils._images import load, plan_load
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger, atomic_write_bytes, ensure_dir

RECORD_FORMAT = 1
LABEL = "io.selfhost-rollback.drill"          # the drill id
LABEL_APP = "io.selfhost-rollback.drill.app"  # the app name
LABEL_LEDGER = "io.selfhost-rollback.drill.ledger"  # which ledger (store) the drill belongs to
PHASES = ("verify", "prepare", "restore", "boot", "healthy", "checks", "teardown")


class DrillFailed(Exception):
    """The drill found a problem; the message says which, for the record and the operator."""


# --------------------------------------------------------------------------- pure helpers


def new_drill_id() -> str:
    return f"d-{stamp()}-{_secrets.token_hex(2)}"


def ledger_tag(ledger_root: str) -> str:
    """A short, stable tag of the ledger directory: two stores with the same app name never sweep each other."""
    return hashlib.sha256(os.path.abspath(ledger_root).encode()).hexdigest()[:12]


def project_name_for(app_name: str, drill_id: str) -> str:
    """The copy's Compose project: d-20261122T020705Z-3fa1 -> notes-drill-20261122t020705z-3fa1."""
    return f"{app_name}-drill-{drill_id[2:].lower()}"


def labels_for(app_name: str, drill_id: str, tag: str) -> dict[str, str]:
    return {LABEL: drill_id, LABEL_APP: app_name, LABEL_LEDGER: tag}


def url_port(url: str) -> tuple[str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80 if parts.scheme == "http" else None)
    return parts.hostname or "", port


def published_ports(service: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """The published ports of a service in ``docker compose config --format json`` form."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict) and port.get("published") not in (None, ""):
            out.append({"published": int(str(port["published"]).split("-", maxsplit=1)[0]), "target": int(port["target"]),
                        "host_ip": port.get("host_ip") or "", "protocol": port.get("protocol") or "tcp"})
    return out


def map_urls(urls: list[str], services: dict[str, t.Any], pick_port: t.Callable[[], int]) -> tuple[dict[str, str], dict[str, dict[int, int]], list[str]]:
    """Point each production URL at the drill copy.

    Returns url → drill url, service → {container port: loopback port}, and problems (URLs whose
    port no service publishes; they cannot be probed in the copy).
    """
    mapped: dict[str, str] = {}
    publish: dict[str, dict[int, int]] = {}
    problems: list[str] = []
    for url in urls:
        host, port = url_port(url)
        owner = None
        for name, service in sorted(services.items()):
            for entry in published_ports(service):
                if entry["published"] == port and entry["protocol"] == "tcp":
                    owner = (name, entry["target"])
                    break
            if owner:
                break
        if owner is None:
            problems.append(f"no service publishes port {port} of {url}, so the copy cannot be probed there")
            continue
        name, target = owner
        loopback = publish.setdefault(name, {}).get(target)
        if loopback is None:
            loopback = pick_port()
            publish[name][target] = loopback
        parts = urllib.parse.urlsplit(url)
        netloc = f"127.0.0.1:{loopback}"
        if parts.username:
            netloc = parts.username + (":" + parts.password if parts.password else "") + "@" + netloc
        mapped[url] = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        del host
    return mapped, publish, problems


def isolation_problems(config: dict[str, t.Any], workdir: str, allowed_host_paths: list[str]) -> list[str]:
    """What would make the copy share something with production."""
    problems = []
    for name, volume in sorted((config.get("volumes") or {}).items()):
        if (volume or {}).get("external"):
            problems.append(f"volume {name} is external (shared by name), so the copy would use production's data")
    for name, network in sorted((config.get("networks") or {}).items()):
        if (network or {}).get("external"):
            problems.append(f"network {name} is external, so the copy would join production's network")
    allowed = [os.path.abspath(p) for p in allowed_host_paths]
    root = os.path.abspath(workdir)
    for service_name, service in sorted((config.get("services") or {}).items()):
        if service.get("network_mode") == "host":
            problems.append(f"service {service_name} uses the host's network, so the copy would take production's ports")
        for mount in service.get("volumes") or []:
            if not isinstance(mount, dict) or mount.get("type") != "bind":
                continue
            source = os.path.abspath(mount.get("source") or "")
            inside = source == root or source.startswith(root + os.sep)
            if not inside and not any(source == a or source.startswith(a + os.sep) for a in allowed):
                problems.append(f"service {service_name} bind-mounts {source}, which lies outside the project, so the copy "
                                "would share it with production (list it in allow_host_paths if sharing it is harmless)")
    return problems


def build_override(config: dict[str, t.Any], images: dict[str, str], publish: dict[str, dict[int, int]],
                   env: dict[str, dict[str, str]], labels: dict[str, str]) -> str:
    """The override file of a drill copy, as YAML text (JSON-style flow values are valid YAML)."""
    lines = ["# written by selfhost.rollback.drill: an isolated copy; removed when the drill ends", "services:"]
    for name, service in sorted((config.get("services") or {}).items()):
        lines.append(f"  {json.dumps(name)}:")
        if name in images:
            lines.append(f"    image: {json.dumps(images[name])}")
        if service.get("container_name"):
            lines.append("    container_name: !reset null")
        lines.append('    restart: "no"')
        ports = [f"127.0.0.1:{loopback}:{target}" for target, loopback in sorted((publish.get(name) or {}).items())]
        if service.get("ports") or ports:
            lines.append(f"    ports: !override {json.dumps(ports)}")
        lines.append(f"    labels: {json.dumps(labels, sort_keys=True)}")
        if env.get(name):
            lines.append(f"    environment: {json.dumps({k: str(v) for k, v in env[name].items()}, sort_keys=True)}")
    volumes = sorted(config.get("volumes") or {})
    if volumes:
        lines.append("volumes:")
        lines += [f"  {json.dumps(v)}:\n    labels: {json.dumps(labels, sort_keys=True)}" for v in volumes]
    networks = sorted(set(config.get("networks") or {}) | {"default"})
    lines.append("networks:")
    lines += [f"  {json.dumps(n)}:\n    labels: {json.dumps(labels, sort_keys=True)}" for n in networks]
    return "\n".join(lines) + "\n"


def compare_counts(expected: dict[str, int], found: dict[str, int], ignore: list[str]) -> list[str]:
    """Row count differences, one sentence each; tables in ``ignore`` are left out (by full or bare name)."""
    def ignored(table: str) -> bool:
        return table in ignore or table.split(".", 1)[-1] in ignore

    problems = []
    for table in sorted(set(expected) | set(found)):
        if ignored(table):
            continue
        if table not in found:
            problems.append(f"table {table} is missing (the manifest has {expected[table]} rows)")
        elif table not in expected:
            problems.append(f"table {table} ({found[table]} rows) is not in the manifest")
        elif expected[table] != found[table]:
            problems.append(f"table {table} has {found[table]} rows, the manifest {expected[table]}")
    return problems


def summary_timings(timings: dict[str, float | None]) -> dict[str, float | None]:
    """The three figures a rollback cares about, and their sum: time until the old release serves again."""
    parts = [timings.get(k) for k in ("restore_s", "boot_s", "healthy_s")]
    total = round(sum(p for p in parts if p is not None), 3) if all(p is not None for p in parts) else None
    return {"restore_s": parts[0], "boot_s": parts[1], "healthy_s": parts[2], "time_to_healthy_s": total}


def seconds(value: t.Any) -> str:
    return "–" if value is None else f"{float(value):.1f} s"


def record_markdown(record: dict[str, t.Any]) -> str:
    """The drill record for people."""
    timings = record.get("timings") or {}
    target = record.get("target") or {}
    backup = record.get("backup_set") or {}
    verdict = "PASSED" if record.get("passed") else "FAILED"
    lines = [
        f"# Drill {record['drill_id']} of {record['app']}: {verdict}",
        "",
        f"- host: {record.get('host')}",
        f"- started: {record.get('started_at')}, finished: {record.get('finished_at')}",
        f"- target release: {target.get('release_id') or '–'} (chosen as {target.get('selected_by')}; "
        f"schema {target.get('schema_version') or '–'})",
        f"- backup set: {backup.get('set_id') or '–'} (taken {backup.get('created_at') or '–'})",
        f"- production release during the drill: {record.get('current_release') or '–'}",
        f"- isolated copy: Compose project {record.get('project')}",
        "",
        "## Timings",
        "",
        "| phase | seconds |",
        "|---|---|",
    ]
    for phase in PHASES:
        lines.append(f"| {phase} | {seconds(timings.get(phase + '_s'))} |")
    lines += [f"| **time to healthy** (restore + boot + healthy) | {seconds(timings.get('time_to_healthy_s'))} |",
              f"| total | {seconds(timings.get('total_s'))} |", "", "## Checks", "", "| check | result | detail |", "|---|---|---|"]
    for check in record.get("checks") or []:
        detail = "; ".join(check.get("failures") or []) or check.get("detail") or ""
        lines.append(f"| {check['name']} | {'pass' if check['passed'] else 'FAIL'} | {detail.replace('|', '/')} |")
    if record.get("failures"):
        lines += ["", "## Why it failed", ""] + [f"- {f}" for f in record["failures"]]
    if record.get("swept"):
        lines += ["", "## Left by an earlier drill, removed first", ""] + [f"- {s}" for s in record["swept"]]
    return "\n".join(lines) + "\n"


def choose_set(sets: list[dict[str, t.Any]], target: dict[str, t.Any], releases: list[dict[str, t.Any]],
               additive: list[str]) -> dict[str, t.Any] | None:
    """The newest verified set taken under the target release; else the newest verified set its code runs on."""
    verified = [s for s in sets if _sets.is_verified(s)]
    own = [s for s in verified if (s.get("manifest") or {}).get("release_id") == target.get("release_id")]
    if own:
        return sorted(own, key=lambda s: s["manifest"].get("created_at") or "")[-1]
    compatible = _gate.restore_candidates(verified, target, releases, additive)
    return compatible[0] if compatible else None


# --------------------------------------------------------------------------- docker side


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def labelled(client: t.Any, app_name: str, tag: str, drill_id: str | None = None) -> dict[str, list[t.Any]]:
    filters = {"label": [f"{LABEL_APP}={app_name}", f"{LABEL_LEDGER}={tag}"] + ([f"{LABEL}={drill_id}"] if drill_id else [])}
    return {"containers": client.containers.list(all=True, filters=filters),
            "volumes": client.volumes.list(filters=filters),
            "networks": client.networks.list(filters=filters)}


def sweep(client: t.Any, app: dict[str, t.Any], ledger: Ledger, keep_project: str | None = None) -> list[str]:
    """Remove every drill resource of this app and ledger; never anything of the app's own project."""
    tag = ledger_tag(ledger.root)
    removed: list[str] = []
    found = labelled(client, app["name"], tag)
    for container in found["containers"]:
        project = container.labels.get("com.docker.compose.project")
        if project == app["project_name"] or project == keep_project:
            continue
        container.remove(force=True, v=True)
        removed.append(f"container {container.name}")
    for network in found["networks"]:
        if (network.attrs.get("Labels") or {}).get("com.docker.compose.project") == app["project_name"]:
            continue
        with contextlib.suppress(Exception):  # a network still in use by a foreign container: left, reported below
            network.remove()
            removed.append(f"network {network.name}")
    for volume in found["volumes"]:
        if (volume.attrs.get("Labels") or {}).get("com.docker.compose.project") == app["project_name"]:
            continue
        volume.remove(force=True)
        removed.append(f"volume {volume.name}")
    work = ledger.path("drills", "work")
    if os.path.isdir(work):
        for name in sorted(os.listdir(work)):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
            removed.append(f"work directory {name}")
    for name in ledger.list("restores"):
        if name.startswith(f"{app['name']}-drill-"):
            with contextlib.suppress(OSError):
                os.unlink(ledger.path("restores", name))
    return removed


def production_state(client: t.Any, app: dict[str, t.Any]) -> dict[str, dict[str, t.Any]]:
    out = {}
    for container in project_containers(client, app["project_name"]):
        state = container.attrs.get("State") or {}
        out[container.name] = {"id": container.id[:12], "status": state.get("Status"),
                               "health": (state.get("Health") or {}).get("Status"), "image": container.attrs.get("Image"),
                               "started_at": state.get("StartedAt")}
    return out


def copy_states(client: t.Any, project: str) -> dict[str, dict[str, t.Any]]:
    found: dict[str, dict[str, t.Any]] = {}
    for container in project_containers(client, project):
        service = container.labels.get("com.docker.compose.service") or container.name
        state = container.attrs.get("State") or {}
        if service not in found or found[service]["state"] != "running":
            found[service] = {"state": state.get("Status"), "health": (state.get("Health") or {}).get("Status")}
    return found


# --------------------------------------------------------------------------- the drill


class Drill:
    """One drill run; ``run()`` always tears down and always leaves a record."""

    def __init__(self, app: dict[str, t.Any], ledger: Ledger, client: t.Any, options: dict[str, t.Any],
                 restic: t.Any = None, warn: t.Callable[[str], None] | None = None) -> None:
        self.app = app
        self.ledger = ledger
        self.client = client
        self.options = options
        self.restic = restic
        self.warn = warn or (lambda _msg: None)
        self.drill_id = new_drill_id()
        self.project = project_name_for(app["name"], self.drill_id)
        self.workdir = ledger.path("drills", "work", self.drill_id)
        self.tag = ledger_tag(ledger.root)
        self.labels = labels_for(app["name"], self.drill_id, self.tag)
        self.timings: dict[str, float | None] = {f"{p}_s": None for p in PHASES}
        self.checks: list[dict[str, t.Any]] = []
        self.failures: list[str] = []
        self.target_app: dict[str, t.Any] | None = None
        self.urls: dict[str, str] = {}
        self.publish: dict[str, dict[int, int]] = {}

    # ----------------------------------------------------------------- bookkeeping

    def check(self, name: str, kind: str, failures: list[str], detail: str = "", **figures: t.Any) -> bool:
        entry = {"name": name, "kind": kind, "passed": not failures, "failures": failures[:20]}
        if detail:
            entry["detail"] = detail
        entry.update(figures)
        self.checks.append(entry)
        if failures:
            self.failures.append(f"{name}: {failures[0]}" + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
        return not failures

    @contextlib.contextmanager
    def phase(self, name: str) -> t.Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.timings[f"{name}_s"] = round(time.monotonic() - began, 3)

    # ----------------------------------------------------------------- selection

    def select(self) -> tuple[dict[str, t.Any], dict[str, t.Any], str | None]:
        releases = _release.releases(self.ledger)
        current_id = _release.current_release_id(self.ledger)
        wanted = self.options["target"]
        if not releases:
            raise OperatorError(f"app {self.app['name']}: the ledger has no release; run selfhost.rollback.pre_upgrade first")
        if wanted == "current":
            target = next((r for r in releases if r.get("release_id") == current_id), None)
        elif wanted == "previous":
            target = _gate.pick_target(releases, _operation.previous_release(self.ledger, current_id))
        else:
            target = _gate.pick_target(releases, wanted)
        if target is None:
            known = ", ".join(r["release_id"] for r in releases[-5:])
            raise OperatorError(f"app {self.app['name']}: there is no {wanted!r} release to drill (recorded: {known}); "
                                "drill target=current, or record a release first")
        additive = [str(a) for a in ((self.app.get("schema_probe") or {}).get("additive") or [])]
        if self.options.get("set_id"):
            entry = _sets.load_set(self.ledger, self.options["set_id"])
        else:
            entry = choose_set(_sets.list_sets(self.ledger), target, releases, additive)
            if entry is None:
                raise OperatorError(f"app {self.app['name']}: no verified backup set can restore release {target['release_id']}; "
                                    "run selfhost.rollback.pre_upgrade (or backup and backup_verify) under that release")
        return target, entry, current_id

    # ----------------------------------------------------------------- phases

    def prepare(self, release: dict[str, t.Any]) -> None:
        files = _project.saved_files(self.ledger, release["release_id"])
        if files is None:
            files = {f["path"]: f["content"].encode() for f in release["compose"]["files"] if not os.path.isabs(f["path"])}
            env_rel = os.path.relpath(self.app["env_file"], self.app["project_dir"])
            if os.path.isfile(self.app["env_file"]) and not env_rel.startswith(".."):
                with open(self.app["env_file"], "rb") as handle:
                    files[env_rel] = handle.read()
            self.warn(f"app {self.app['name']}: release {release['release_id']} has no saved project files; the drill uses "
                      "its recorded compose files and today's env file")
        ensure_dir(self.workdir)
        for rel, data in files.items():
            path = os.path.join(self.workdir, rel)
            ensure_dir(os.path.dirname(path))
            atomic_write_bytes(path, data)
        rel_compose = [os.path.relpath(p, self.app["project_dir"]) for p in self.app["compose_files"]]
        # the copy runs the release's exact images from its own override, never the live app's pins
        target = dict(self.app, project_name=self.project, project_dir=self.workdir, pins_file=None, extra_files=[],
                      compose_files=[os.path.join(self.workdir, r) for r in rel_compose if os.path.isfile(os.path.join(self.workdir, r))],
                      env_file=os.path.join(self.workdir, os.path.relpath(self.app["env_file"], self.app["project_dir"])))
        if not target["compose_files"]:
            raise OperatorError(f"app {self.app['name']}: the saved files of release {release['release_id']} hold none of "
                                f"the app's compose files ({', '.join(rel_compose)})")
        for path in self.app.get("paths") or []:
            if not os.path.isabs(path):
                ensure_dir(os.path.join(self.workdir, path))  # restored later; bind mounts need the directory first
        config = Compose(target).config()
        problems = isolation_problems(config, self.workdir, self.options.get("allow_host_paths") or [])
        health = self.app.get("health") or {}
        urls = [u for u in [health.get("url")] + list(health.get("urls") or []) if u]
        self.urls, self.publish, url_problems = map_urls(urls, config.get("services") or {}, free_loopback_port)
        if url_problems:
            problems += url_problems
        if self.smoke_requests() and not self.urls:
            problems.append("smoke requests need a health URL on a published port to know where the copy answers")
        unknown_env = sorted(set(self.options.get("env") or {}) - set(config.get("services") or {}))
        if unknown_env:
            problems.append(f"env names services the release does not have: {', '.join(unknown_env)}")
        published = ", ".join(f"{s} on 127.0.0.1:{p}" for s, m in sorted(self.publish.items()) for p in m.values())
        self.check("isolation", "isolation", problems, detail=f"project {self.project}; {published or 'no port published'}")
        if problems:
            raise DrillFailed(problems[0])
        rows = plan_load(self.client, self.ledger, release, allow_pull=True)
        missing = [r for r in rows if r["source"] in ("missing", "unknown")]
        self.check("images", "images", [f"image of service {r['service']} ({r['ref']}) is not available anywhere" for r in missing],
                   detail=", ".join(f"{r['service']}: {r['source']}" for r in rows))
        if missing:
            raise DrillFailed(f"the images of release {release['release_id']} are not all available")
        load(self.client, docker_cli(), self.ledger, release, rows)
        images = {name: s["image_id"] for name, s in (release.get("services") or {}).items() if s.get("image_id")}
        override = os.path.join(self.workdir, "drill-override.yml")
        atomic_write_bytes(override, build_override(config, images, self.publish, self.options.get("env") or {},
                                                    self.labels).encode())
        target["compose_files"] = target["compose_files"] + [override]
        self.target_app = target

    def restore(self, entry: dict[str, t.Any]) -> None:
        target = t.cast(dict, self.target_app)
        plan = _restore.plan_restore(self.app, target, self.client, entry)
        outcome = _restore.run_restore(self.app, target, self.client, self.ledger, entry, plan, self.restic, "none", 60)
        self.check("restore", "restore", [], detail="; ".join(outcome["actions"]))
        problems: list[str] = []
        for step in plan["steps"]:
            item = step["item"]
            if step["kind"] == "volume":
                root = self.client.volumes.get(step["volume"]).attrs["Mountpoint"]
            elif step["kind"] == "path":
                root = step["path"]
            else:
                continue
            found = _tree.scan_tree(root)
            refused = [e for e in outcome["not_restored"] if e["item"] == f"{step['kind']} {item['name']}"]
            failures = _archive.compare_trees(item.get("files") or {}, found, not_restored=refused)
            problems += failures
            self.check(f"checksums {step['kind']} {item['name']}", "checksums",
                       [f"{step['kind']} {item['name']}: {f}" for f in failures],
                       detail=f"{len(item.get('files') or {})} entries match the manifest" if not failures else "")
        if problems:
            raise DrillFailed("the restored files differ from the manifest")

    def boot(self) -> None:
        target = t.cast(dict, self.target_app)
        Compose(target).run("up", "-d", "--pull", "never", timeout=self.options["boot_timeout"],
                            what="starting the target release in the drill copy")

    def wait_healthy(self) -> dict[str, t.Any]:
        url = next(iter(self.urls.values()), None)
        deadline = time.monotonic() + self.options["health_wait"]
        states: dict[str, dict[str, t.Any]] = {}
        timeout = float((self.app.get("health") or {}).get("timeout") or 3.0)
        while True:
            states = copy_states(self.client, self.project)
            settled = bool(states) and all(s["state"] == "running" and s["health"] in (None, "healthy") for s in states.values())
            if settled and (url is None or probe_once(url, timeout)["ok"]):
                return states
            if time.monotonic() >= deadline:
                break
            if any(s["state"] in ("exited", "dead") or s["health"] == "unhealthy" for s in states.values()) \
                    and time.monotonic() > deadline - self.options["health_wait"] + 15:
                break
            time.sleep(0.25)
        bad = ", ".join(f"{n} {s['state']}" + (f" ({s['health']})" if s.get("health") else "")
                        for n, s in sorted(states.items())) or "no container"
        raise DrillFailed(f"the copy did not become healthy within {self.options['health_wait']:g} s ({bad}"
                          + (f"; {url} does not answer 2xx" if url else "") + ")")

    def health_gate(self, release_id: str) -> None:
        timeout = float((self.app.get("health") or {}).get("timeout") or 3.0)
        samples = []
        for index in range(self.options["probes"]):
            for url in self.urls.values():
                samples.append(probe_once(url, timeout))
            if index + 1 < self.options["probes"]:
                time.sleep(0.05)
        figures = summarize(samples)
        baseline = (self.ledger.read(os.path.join("baselines", release_id + ".json")) or {}).get("figures")
        passed, reasons = judge(figures, baseline, copy_states(self.client, self.project), self.options["max_error_rate"],
                                self.options["max_p99_ratio"], self.options["p99_floor_ms"])
        self.check("health gate", "health", reasons, detail=f"{figures['requests']} probes, {figures['errors']} errors, "
                   f"p99 {figures['p99_ms']} ms" + (f" (baseline p99 {baseline.get('p99_ms')} ms)" if baseline else ""),
                   figures=figures)

    def data_checks(self, entry: dict[str, t.Any]) -> None:
        target = t.cast(dict, self.target_app)
        ignore = list(self.options.get("ignore_tables") or [])
        for item in entry["manifest"].get("items", []):
            if item["kind"] != "database":
                continue
            container = next((c for c in sorted(project_containers(self.client, self.project), key=lambda c: c.name)
                              if _sources.container_service(c) == item["service"] and c.status == "running"), None)
            if container is None:
                self.check(f"rows {item['name']}", "rows", [f"database service {item['service']} is not running in the copy"])
                continue
            host = None
            if item["engine"] == "sqlite":
                host = _dumps.host_path_in_container(container.attrs, _dumps.sqlite_path(item))
            found = _dumps.count_rows(container.id, item, f"app {self.app['name']} (drill copy)", host)
            expected = item.get("tables") or {}
            problems = compare_counts(expected, found, ignore)
            self.check(f"rows {item['name']}", "rows", problems,
                       detail=f"{len(expected)} tables, {sum(expected.values())} rows as in the manifest" if not problems else "",
                       tables=found)
        del target

    def smoke_requests(self) -> list[dict[str, t.Any]]:
        """The app's own smoke requests, then the drill's."""
        return list(self.app.get("smoke") or []) + list(self.options.get("smoke") or [])

    def smoke(self) -> None:
        base = next(iter(self.urls.values()), None)
        if not base:
            return
        for outcome in run_smoke(base, self.smoke_requests()):
            self.check(f"smoke {outcome['request']}", "smoke", outcome["problems"], detail=f"answered {outcome['status']}")

    def teardown(self) -> list[str]:
        problems: list[str] = []
        if self.target_app is not None:
            proc = Compose(self.target_app).run("down", "-v", "--remove-orphans", "--timeout", "5", check=False, timeout=180)
            if proc.returncode != 0:
                problems.append(f"docker compose down failed ({proc.stderr.strip()[-200:]}); removed by label instead")
        sweep(self.client, self.app, self.ledger)
        # only this drill's own resources count: a killed drill's orphaned 'docker compose' may still be
        # creating things of its project; the next drill sweeps those
        left = labelled(self.client, self.app["name"], self.tag, self.drill_id)
        problems += [f"{kind[:-1]} {r.name} is still there" for kind, rows in left.items() for r in rows]
        if os.path.exists(self.workdir):
            problems.append(f"{self.workdir} is still there")
        return problems

    def run(self) -> dict[str, t.Any]:
        began = time.monotonic()
        started_at = iso()
        swept = sweep(self.client, self.app, self.ledger)
        interrupted = self.ledger.read("drills/running.json")
        if interrupted:
            swept.insert(0, f"drill {interrupted.get('drill_id')} started {interrupted.get('started_at')} was interrupted")
        target, entry, current_id = self.select()
        self.ledger.write("drills/running.json", {"drill_id": self.drill_id, "project": self.project, "started_at": started_at,
                                                  "pid": os.getpid()})
        before = production_state(self.client, self.app)
        try:
            try:
                with self.phase("verify"):
                    if self.options["verify"] == "deep":
                        run = _verify.verify_set(self.ledger, entry, ["deep"], self.client, self.restic, record=True)[0]
                    else:
                        run = _sets.last_verification(entry.get("verification") or []) or {"passed": False, "failures": ["never verified"]}
                    if not self.check("backup set verification", "verify", list(run.get("failures") or ([] if run["passed"] else ["failed"])),
                                      detail=f"{self.options['verify']} check of {entry['set_id']}"):
                        raise DrillFailed(f"backup set {entry['set_id']} fails verification")
                with self.phase("prepare"):
                    self.prepare(target)
                with self.phase("restore"):
                    self.restore(entry)
                with self.phase("boot"):
                    self.boot()
                with self.phase("healthy"):
                    self.wait_healthy()
                with self.phase("checks"):
                    if self.urls:
                        self.health_gate(target["release_id"])
                    self.data_checks(entry)
                    self.smoke()
            except DrillFailed:
                pass
            except OperatorError as exc:
                self.failures.append(str(exc))
        finally:
            with self.phase("teardown"):
                leftovers = self.teardown()
            self.check("teardown", "teardown", leftovers, detail="every container, volume, network and file of the copy removed")
            after = production_state(self.client, self.app)
            changes = [f"{name}: {before[name]} became {after.get(name)}" for name in sorted(before) if before[name] != after.get(name)]
            changes += [f"{name} appeared" for name in sorted(set(after) - set(before))]
            self.check("production untouched", "production", changes,
                       detail=f"{len(before)} containers with the same IDs, state and start time before and after")
            self.timings.update(summary_timings(self.timings))
            self.timings["total_s"] = round(time.monotonic() - began, 3)
            record = self.record(target, entry, current_id, started_at, swept, before)
            self.ledger.write(f"drills/{self.drill_id}.json", record)
            atomic_write_bytes(self.ledger.path("drills", f"{self.drill_id}.md"), record_markdown(record).encode())
            with contextlib.suppress(OSError):
                os.unlink(self.ledger.path("drills", "running.json"))
        return record

    def record(self, target: dict[str, t.Any], entry: dict[str, t.Any], current_id: str | None, started_at: str,
               swept: list[str], before: dict[str, t.Any]) -> dict[str, t.Any]:
        manifest = entry.get("manifest") or {}
        return {
            "format": RECORD_FORMAT,
            "drill_id": self.drill_id,
            "app": self.app["name"],
            "host": socket.gethostname(),
            "started_at": started_at,
            "finished_at": iso(),
            "passed": not self.failures and all(c["passed"] for c in self.checks),
            "target": {"release_id": target.get("release_id"), "selected_by": self.options["target"],
                       "recorded_at": target.get("recorded_at"), "schema_version": target.get("schema_version"),
                       "images": {n: s.get("pinned_ref") or s.get("image_ref") for n, s in (target.get("services") or {}).items()}},
            "backup_set": {"set_id": entry["set_id"], "created_at": manifest.get("created_at"),
                           "release_id": manifest.get("release_id"), "schema_version": manifest.get("schema_version")},
            "current_release": current_id,
            "project": self.project,
            "ports": {s: [f"127.0.0.1:{p}" for p in m.values()] for s, m in sorted(self.publish.items())},
            "muted_env": {s: sorted(v) for s, v in sorted((self.options.get("env") or {}).items())},
            "timings": self.timings,
            "checks": self.checks,
            "failures": self.failures,
            "swept": swept,
            "production": {"containers": sorted(before)},
        }


def drill_records(ledger: Ledger) -> list[dict[str, t.Any]]:
    """Every drill record of an app, oldest first."""
    out = []
    for name in ledger.list("drills"):
        if name.startswith("d-"):
            record = ledger.read(f"drills/{name}")
            if record:
                out.append(record)
    return sorted(out, key=lambda r: (r.get("started_at") or "", r.get("drill_id") or ""))
