# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Releases: the recorded known-good contract of an app (private to the collection).

A release's id is derived from its content (everything but timestamps and archive
bookkeeping), so recording the same running state twice finds the same release.
Secret values never enter a record: env values become salted hashes (the salt is
per app, ``<store>/<app>/salt``), compose files are stored without interpolation,
and everything stored is scrubbed of the env file's secret-looking values.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _artifacts, _images
from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso, stamp
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import Compose, check_live_project
from ansible_collections.selfhost.rollback.plugins.module_utils._database import schema_version
from ansible_collections.selfhost.rollback.plugins.module_utils._digest import canonical_json, salted_hash, sha256_bytes
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import DockerException, project_containers
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._project import read_env_file
from ansible_collections.selfhost.rollback.plugins.module_utils._secrets import scrub
from ansible_collections.selfhost.rollback.plugins.module_utils._images import (
    pinned_reference,
    read_index,
    release_images,
    resolve,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import (
    RECORD_FORMAT,
    Ledger,
    atomic_write_bytes,
)

# fields that are facts about the recording, not about the contract
NOT_CONTENT = ("format", "release_id", "app", "recorded_at", "content_digest", "images_archived", "mixed")
CURRENT = "current_release.json"


# --------------------------------------------------------------------------- salt and fingerprints


def read_salt(ledger: Ledger) -> bytes | None:
    path = ledger.path("salt")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        return handle.read().strip()


def new_salt() -> bytes:
    return os.urandom(32).hex().encode()


def write_salt(ledger: Ledger, salt: bytes) -> None:
    """Store the app's fingerprint salt (0600); it is written once, as changing it would make every release look drifted."""
    ledger.ensure()
    atomic_write_bytes(ledger.path("salt"), salt)


def ensure_salt(ledger: Ledger) -> bytes:
    """The app's fingerprint salt, created on first use."""
    salt = read_salt(ledger)
    if salt:
        return salt
    write_salt(ledger, new_salt())
    return t.cast(bytes, read_salt(ledger))


def fingerprint(values: t.Mapping[str, t.Any], salt: bytes) -> dict[str, str]:
    """Every key with a salted hash of its value (``None`` values, i.e. unset, recorded as such)."""
    return {key: ("unset" if value is None else salted_hash(str(value), salt)) for key, value in sorted(values.items())}


def content_digest(content: dict[str, t.Any]) -> str:
    return sha256_bytes(canonical_json({k: v for k, v in content.items() if k not in NOT_CONTENT}))


def release_id_for(digest: str, moment: str | None = None) -> str:
    return f"r-{moment or stamp()}-{digest.split(':', 1)[-1][:8]}"


# --------------------------------------------------------------------------- the running state


def _template_or_hash(value: t.Any, salt: bytes) -> t.Any:
    """Keep ``${VAR}`` templates (they show where a value comes from); hash literal values."""
    if isinstance(value, str) and "${" in value:
        return value
    return "unset" if value is None else salted_hash(str(value), salt)


def _structure(compose: Compose, salt: bytes) -> dict[str, t.Any]:
    """The merged project without interpolation; literal environment values (e.g. from env_file) hashed."""
    proc = compose.run("config", "--no-interpolate", "--format", "json", what="reading the compose files")
    try:
        config = json.loads(proc.stdout)
    except ValueError as exc:
        raise OperatorError(f"app {compose.app['name']}: 'docker compose config' returned no JSON: {exc}") from exc
    for service in (config.get("services") or {}).values():
        env = service.get("environment")
        if isinstance(env, dict):
            service["environment"] = {k: _template_or_hash(v, salt) for k, v in env.items()}
    config.pop("name", None)  # the project name is recorded separately
    return config


def _services(client: t.Any, app: dict[str, t.Any], config: dict[str, t.Any], containers: list[t.Any],
              salt: bytes) -> dict[str, dict[str, t.Any]]:
    """Each service's image (by ID and registry digest, as its container runs it) and environment fingerprint."""
    by_service: dict[str, t.Any] = {}
    for container in sorted(containers, key=lambda c: (c.status != "running", c.name)):
        by_service.setdefault(container.labels.get("com.docker.compose.service"), container)
    services: dict[str, dict[str, t.Any]] = {}
    for name, service in sorted((config.get("services") or {}).items()):
        ref = service.get("image") or f"{app['project_name']}-{name}"
        container = by_service.get(name)
        found = resolve(client, ref, container.attrs.get("Image") if container is not None else None)
        if found is None:
            raise OperatorError(
                f"app {app['name']}: service {name} has no container and its image {ref} is not on this engine; "
                "deploy the app (docker compose up -d) or pull the image, then record again"
            )
        env = service.get("environment") or {}
        services[name] = {
            "image_ref": ref,
            "image_id": found["image_id"],
            "repo_digest": found["repo_digest"],
            "pinned_ref": pinned_reference(ref, found["repo_digest"]) if found["repo_digest"] else None,
            "source": "registry" if found["repo_digest"] else "local",
            "build": "build" in service,
            "environment": fingerprint(env if isinstance(env, dict) else {}, salt),
        }
    return services


def _compose_files(app: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """The compose files as written (relative to the project directory when inside it), with their digests."""
    files = []
    for path in app["compose_files"]:
        with open(path, "rb") as handle:
            raw = handle.read()
        rel = os.path.relpath(path, app["project_dir"])
        files.append({"path": path if rel.startswith("..") else rel, "sha256": sha256_bytes(raw),
                      "content": raw.decode("utf-8", errors="replace")})
    return files


def running_state(client: t.Any, app: dict[str, t.Any], salt: bytes, secrets: list[str],
                  outputs: dict[str, bytes] | None = None) -> dict[str, t.Any]:
    """Everything a release holds, read from the host (no timestamps, no ids).

    The three Compose CLI calls (the project interpolated and not, the plugin's version) run
    side by side in threads while this thread asks the engine; failures are raised in the order
    the reads were made one after the other, so the operator sees the same first sentence.
    """
    compose = Compose(app)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        config_read = pool.submit(compose.config)  # validates and interpolates; values stay in memory only
        structure_read = pool.submit(_structure, compose, salt)
        version_read = pool.submit(compose.version)
        env_read = pool.submit(compose.env_values, read_env_file(app["env_file"]))  # the values as Compose reads them
        check_live_project(client, app)
        containers = project_containers(client, app["project_name"])
        config = config_read.result()
        if not any(c.status == "running" for c in containers):
            raise OperatorError(
                f"app {app['name']}: no container of Compose project {app['project_name']} is running; "
                "a release records the running state, so deploy the app (docker compose up -d) and record again"
            )
        services = _services(client, app, config, containers, salt)
        files = _compose_files(app)

        version = client.version()
        volumes = {key: (value or {}).get("name", key) for key, value in sorted((config.get("volumes") or {}).items())}
        schema_failure: Exception | None = None
        try:
            schema = schema_version(client, app)
        except (OperatorError, DockerException) as exc:  # raised after the Compose reads that came before it
            schema, schema_failure = None, exc
        structure = structure_read.result()
        compose_version = version_read.result()
        env_values = env_read.result()
    if schema_failure is not None:
        raise schema_failure
    state = {
        "compose": {
            "project_name": app["project_name"],
            "files": files,
            "env_file": os.path.basename(app["env_file"]) if os.path.isfile(app["env_file"]) else None,
            "config": structure,
        },
        "services": services,
        "config_fingerprint": fingerprint(env_values, salt),
        "runtime": {
            "engine_version": version.get("Version"),
            "api_version": version.get("ApiVersion"),
            "compose_version": compose_version,
        },
        "schema_version": schema,
        "artifacts": {a["name"]: _artifacts.digest_of(app, a, outputs) for a in app.get("artifacts") or []},
        "volumes": volumes,
    }
    return t.cast(dict, scrub(state, secrets))


# --------------------------------------------------------------------------- the ledger side


# ``releases/<id>.json`` is read and written here only.
RELEASES = "releases"


def record_path(ledger: Ledger, release_id: str) -> str:
    return ledger.path(RELEASES, f"{release_id}.json")


def read_release(ledger: Ledger, release_id: str) -> dict[str, t.Any] | None:
    return t.cast("dict[str, t.Any] | None", ledger.read(f"{RELEASES}/{release_id}.json"))


def has_release(ledger: Ledger, release_id: str) -> bool:
    return ledger.exists(RELEASES, f"{release_id}.json")


def write_release(ledger: Ledger, record: dict[str, t.Any]) -> None:
    ledger.write(f"{RELEASES}/{record['release_id']}.json", record)


def releases(ledger: Ledger) -> list[dict[str, t.Any]]:
    """Every release record, oldest first."""
    records = [ledger.read(f"{RELEASES}/{name}") for name in ledger.list(RELEASES)]
    return sorted((r for r in records if r), key=lambda r: (r.get("recorded_at", ""), r.get("release_id", "")))


def known_ids(ledger: Ledger, last: int = 5) -> str:
    """The newest recorded release ids, for a sentence saying a release is unknown."""
    return ", ".join(r["release_id"] for r in releases(ledger)[-last:] if r.get("release_id")) or "none"


def unknown_release(app_name: str, release_id: str, ledger: Ledger) -> OperatorError:
    return OperatorError(f"app {app_name}: release {release_id} is not in the ledger; recorded releases: {known_ids(ledger)}")


def refresh_archived(ledger: Ledger) -> None:
    """Keep each release's ``images_archived`` in step with the archive index."""
    for record in releases(ledger):
        archived = archived_images(ledger, record)
        if record.get("images_archived") != archived:
            record["images_archived"] = archived
            write_release(ledger, record)


def plan_archive(ledger: Ledger, keep: int, pending: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
    """What the image archive must hold for the newest ``keep`` releases and the current one.

    ``pending`` is a release about to be recorded (and made current); check mode plans with it too.
    """
    history = [r for r in releases(ledger) if not pending or r.get("release_id") != pending["release_id"]]
    current = current_release_id(ledger)
    if pending:
        history.append(pending)
        current = pending["release_id"]
    return _images.plan_archive(ledger, keep, history, current)


def find_by_digest(ledger: Ledger, digest: str) -> dict[str, t.Any] | None:
    matches = [r for r in releases(ledger) if r.get("content_digest") == digest]
    return matches[-1] if matches else None


def current_release_id(ledger: Ledger) -> str | None:
    record = ledger.read(CURRENT)
    return record.get("release_id") if isinstance(record, dict) else None


def build_record(app_name: str, state: dict[str, t.Any], existing: dict[str, t.Any] | None) -> dict[str, t.Any]:
    digest = content_digest(state)
    if existing is not None:
        return existing
    moment = stamp()
    record: dict[str, t.Any] = {"format": RECORD_FORMAT, "app": app_name, "content_digest": digest,
                                "release_id": release_id_for(digest, moment),
                                "recorded_at": iso(), "images_archived": {}}
    record.update(state)
    return record


def archived_images(ledger: Ledger, record: dict[str, t.Any]) -> dict[str, str]:
    """image ID → archive file (relative to the app's ledger) for the release's images that are archived."""
    index = read_index(ledger)
    out = {}
    for image_id in release_images(record):
        entry = index["archives"].get(image_id)
        if entry and os.path.isfile(ledger.path("images", entry["file"])):
            out[image_id] = "images/" + entry["file"]
    return out


def summary(record: dict[str, t.Any], current: str | None) -> dict[str, t.Any]:
    return {
        "release_id": record.get("release_id"),
        "recorded_at": record.get("recorded_at"),
        "content_digest": record.get("content_digest"),
        "current": record.get("release_id") == current,
        "schema_version": record.get("schema_version"),
        "images": {name: s.get("pinned_ref") or s.get("image_ref") for name, s in (record.get("services") or {}).items()},
        "images_archived": len(record.get("images_archived") or {}),
    }
