# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image references, digest resolution and the image archive (private to the collection).

The archive keeps the images of retained releases restorable when the registry no
longer has them: one compressed ``docker save`` per image ID under
``<store>/<app>/images/``, and ``images/index.json`` saying which releases need
which archive. A loaded image has no registry digest (the engine only learns one by
pulling), so a digest-pinned reference does not resolve after a load; callers run
such services by image ID (see ``compose_override``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso
from ansible_collections.selfhost.rollback.plugins.module_utils._digest import sha256_file
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError, last_lines
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import (
    FILE_MODE,
    RECORD_FORMAT,
    Ledger,
    fsync_dir,
)

DEFAULT_KEEP_RELEASES = 3
INDEX = "images/index.json"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


# --------------------------------------------------------------------------- references


def split_reference(ref: str) -> tuple[str, str | None, str | None]:
    """``[registry[:port]/]path[:tag][@digest]`` → (name, tag, digest).

    The colon of a registry port is not a tag: a tag is only looked for after the
    last ``/``.
    """
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    name, tag = ref, None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    return name, tag, digest


def familiar_name(name: str) -> str:
    """The repository name as the engine shows it (Docker Hub prefixes dropped)."""
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name.startswith("library/") and name.count("/") == 1:
        name = name[len("library/"):]
    return name


def same_repository(a: str, b: str) -> bool:
    return familiar_name(a) == familiar_name(b)


def pinned_reference(ref: str, digest: str) -> str:
    """``name:tag@digest`` for ``ref`` (``latest`` made explicit when no tag is given)."""
    name, tag, _old = split_reference(ref)
    return f"{name}:{tag or 'latest'}@{digest}"


def repo_digest_for(image_attrs: dict[str, t.Any], name: str) -> str | None:
    """The registry digest of ``image_attrs`` in repository ``name`` (None: built or loaded locally)."""
    for entry in image_attrs.get("RepoDigests") or []:
        repo, _sep, digest = entry.partition("@")
        if same_repository(repo, name) and DIGEST_RE.match(digest):
            return digest
    return None


# --------------------------------------------------------------------------- the local engine


def get_image(client: t.Any, ref: str) -> t.Any | None:
    from ansible_collections.selfhost.rollback.plugins.module_utils._docker import DockerException

    try:
        return client.images.get(ref)
    except DockerException:
        return None


def resolve(client: t.Any, ref: str, image_id: str | None = None) -> dict[str, t.Any] | None:
    """What ``ref`` is on this engine: image ID and the registry digest of its repository.

    ``image_id`` (the image a container runs) wins over what the tag points at now,
    so a tag moved since the deploy does not change what is recorded.
    """
    image = get_image(client, image_id) if image_id else None
    if image is None:
        image = get_image(client, ref)
    if image is None:
        return None
    name, _tag, pinned = split_reference(ref)
    digest = repo_digest_for(image.attrs, name)
    if pinned and digest != pinned and pinned in [d.partition("@")[2] for d in image.attrs.get("RepoDigests") or []]:
        digest = pinned
    return {"image_id": image.id, "repo_digest": digest, "repo_tags": list(image.attrs.get("RepoTags") or [])}


def pull(client: t.Any, ref: str) -> bool:
    """Pull ``ref``; True when the registry had it."""
    from ansible_collections.selfhost.rollback.plugins.module_utils._docker import DockerException

    name, tag, digest = split_reference(ref)
    try:
        if digest:
            client.api.pull(f"{name}@{digest}")
        else:
            client.api.pull(name, tag=tag or "latest")
        return True
    except DockerException:
        return False


# --------------------------------------------------------------------------- archive files


def compressor() -> tuple[str, list[str], list[str]]:
    """(suffix, compress argv, decompress argv): zstd when installed, else gzip."""
    zstd = shutil.which("zstd")
    if zstd:
        return ".tar.zst", [zstd, "-q", "-T0", "-3", "-c"], [zstd, "-q", "-d", "-c"]
    gzip = shutil.which("gzip")
    if gzip:
        return ".tar.gz", [gzip, "-1", "-c"], [gzip, "-d", "-c"]
    raise OperatorError("neither zstd nor gzip is installed on this host; install zstd to keep image archives")


def decompressor_for(path: str) -> list[str]:
    tool = "zstd" if path.endswith(".zst") else "gzip"
    exe = shutil.which(tool)
    if not exe:
        raise OperatorError(f"{path} needs {tool} to be read, and {tool} is not installed; install it and run again")
    return [exe, "-q", "-d", "-c"] if tool == "zstd" else [exe, "-d", "-c"]


def archive_name(image_id: str, suffix: str) -> str:
    return image_id.split(":", 1)[-1] + suffix


def _pipe(first: list[str], second: list[str], stdout: t.Any = None, what: str = "") -> None:
    """``first | second``; raise OperatorError with the failing side's stderr."""
    with tempfile.TemporaryFile() as err1, tempfile.TemporaryFile() as err2:
        producer = subprocess.Popen(first, stdout=subprocess.PIPE, stderr=err1)
        consumer = subprocess.Popen(second, stdin=producer.stdout, stdout=stdout or subprocess.DEVNULL, stderr=err2)
        if producer.stdout is not None:
            producer.stdout.close()  # the consumer owns the read end now
        rc2 = consumer.wait()
        rc1 = producer.wait()
        if rc1 or rc2:
            err1.seek(0)
            err2.seek(0)
            message = last_lines(err1.read().decode(errors="replace") or err2.read().decode(errors="replace"))
            raise OperatorError(f"{what} failed: {message}")


def save_image(docker_cli: str, image_id: str, directory: str) -> dict[str, t.Any]:
    """``docker save`` one image (by ID, so a moved tag cannot change it) into ``directory``."""
    suffix, compress, _decompress = compressor()
    final = os.path.join(directory, archive_name(image_id, suffix))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            _pipe([docker_cli, "save", image_id], compress, stdout=handle, what=f"exporting image {image_id}")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return {"file": os.path.basename(final), "size": os.path.getsize(final), "sha256": sha256_file(final)}


def load_image(docker_cli: str, path: str) -> None:
    _pipe(decompressor_for(path) + [path], [docker_cli, "load", "-q"], what=f"loading {path}")


# --------------------------------------------------------------------------- the index and retention


def read_index(ledger: Ledger) -> dict[str, t.Any]:
    index = ledger.read(INDEX) or {}
    index.setdefault("format", RECORD_FORMAT)
    index.setdefault("archives", {})
    return index


def release_images(release: dict[str, t.Any]) -> dict[str, list[str]]:
    """image ID → references the release runs it under (services without an image ID are skipped)."""
    images: dict[str, list[str]] = {}
    for service in (release.get("services") or {}).values():
        image_id = service.get("image_id")
        if not image_id:
            continue
        refs = images.setdefault(image_id, [])
        for ref in (service.get("pinned_ref"), service.get("image_ref")):
            if ref and ref not in refs:
                refs.append(ref)
    return images


def retained_releases(history: list[dict[str, t.Any]], keep: int, current: str | None) -> list[str]:
    """The newest ``keep`` of ``history`` (release records) plus the current one: what retention never touches."""
    recorded = {r["release_id"]: r.get("recorded_at", "") for r in history if r.get("release_id")}
    ids = sorted(recorded, key=lambda rid: (recorded[rid], rid))
    kept = ids[-keep:] if keep > 0 else []
    if current and current in recorded and current not in kept:
        kept.append(current)
    return kept


def plan_archive(ledger: Ledger, keep: int, history: list[dict[str, t.Any]], current: str | None) -> dict[str, t.Any]:
    """What the archive must hold for the retained releases of ``history``: images to export, archives to drop."""
    index = read_index(ledger)
    retained = retained_releases(history, keep, current)
    by_id = {r["release_id"]: r for r in history if r.get("release_id")}
    needed: dict[str, dict[str, t.Any]] = {}
    for release_id in retained:
        for image_id, refs in release_images(by_id[release_id]).items():
            entry = needed.setdefault(image_id, {"releases": [], "refs": []})
            entry["releases"].append(release_id)
            entry["refs"] += [r for r in refs if r not in entry["refs"]]
    to_export = []
    for image_id in sorted(needed):
        known = index["archives"].get(image_id)
        if not known or not os.path.isfile(ledger.path("images", known["file"])):
            to_export.append(image_id)
    to_remove = sorted(image_id for image_id in index["archives"] if image_id not in needed)
    stray = []
    if os.path.isdir(ledger.path("images")):
        listed = {entry["file"] for entry in index["archives"].values()}
        stray = sorted(name for name in os.listdir(ledger.path("images"))
                       if (name.endswith(".tar.zst") or name.endswith(".tar.gz")) and name not in listed)
    return {"retained": retained, "needed": needed, "export": to_export, "remove": to_remove,
            "stray": stray, "index": index}


def apply_archive(client: t.Any, docker_cli: str, ledger: Ledger, plan: dict[str, t.Any]) -> dict[str, t.Any]:
    """Export what ``plan`` says is missing, drop what no retained release needs, rewrite the index."""
    directory = ledger.ensure("images")
    index = plan["index"]
    exported = []
    for image_id in plan["export"]:
        if get_image(client, image_id) is None:
            raise OperatorError(
                f"image {image_id} of release(s) {', '.join(plan['needed'][image_id]['releases'])} is neither in the "
                "archive nor on this engine, so it cannot be archived; pull it (or set archive_images to false)"
            )
        index["archives"][image_id] = dict(save_image(docker_cli, image_id, directory), archived_at=iso())
        exported.append(image_id)
    for image_id in plan["remove"]:
        entry = index["archives"].pop(image_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, entry["file"]))
    for name in plan["stray"]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    for image_id, entry in index["archives"].items():
        needed = plan["needed"].get(image_id, {})
        entry["releases"] = sorted(needed.get("releases", []))
        entry["refs"] = needed.get("refs", [])
    ledger.write(INDEX, index)
    return {"exported": exported, "removed": plan["remove"] + plan["stray"]}


def archive_changes(plan: dict[str, t.Any]) -> bool:
    """Whether applying ``plan`` changes anything on disk (including the index's release lists)."""
    if plan["export"] or plan["remove"] or plan["stray"]:
        return True
    for image_id, entry in plan["index"]["archives"].items():
        needed = plan["needed"].get(image_id, {})
        if entry.get("releases") != sorted(needed.get("releases", [])) or entry.get("refs") != needed.get("refs", []):
            return True
    return False


# --------------------------------------------------------------------------- making a release's images present


def plan_load(client: t.Any, ledger: Ledger, release: dict[str, t.Any], allow_pull: bool) -> list[dict[str, t.Any]]:
    """Per service: is its image here, pullable, or only in the archive?"""
    index = read_index(ledger)
    rows = []
    for service_name, service in sorted((release.get("services") or {}).items()):
        image_id = service.get("image_id")
        pinned = service.get("pinned_ref") or service.get("image_ref")
        row = {"service": service_name, "image_id": image_id, "ref": pinned, "source": None, "run_ref": pinned}
        if not image_id:
            row["source"] = "unknown"
            rows.append(row)
            continue
        local = get_image(client, image_id)
        archive = index["archives"].get(image_id)
        if local is not None:
            row["source"] = "local"
        elif allow_pull and service.get("repo_digest"):
            row["source"] = "registry"
        elif archive and os.path.isfile(ledger.path("images", archive["file"])):
            row["source"] = "archive"
            row["archive"] = archive["file"]
        else:
            row["source"] = "missing"
        rows.append(row)
    return rows


def run_reference(client: t.Any, row: dict[str, t.Any]) -> str:
    """A reference this engine resolves to exactly the row's image, without a pull."""
    ref = row.get("ref")
    if ref:
        image = get_image(client, ref)
        if image is not None and image.id == row["image_id"]:
            return ref
    return row["image_id"]


def load(client: t.Any, docker_cli: str, ledger: Ledger, release: dict[str, t.Any], rows: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """Carry out ``plan_load``: pull or load what is missing; registry failures fall back to the archive."""
    index = read_index(ledger)
    services = release.get("services") or {}
    loaded_ids: set[str] = set()
    for row in rows:
        if row["source"] in ("local", "unknown") or row["image_id"] in loaded_ids:
            continue
        if row["source"] == "registry":
            service = services[row["service"]]
            if pull(client, service.get("pinned_ref") or service["image_ref"]) and get_image(client, row["image_id"]) is not None:
                row["action"] = "pulled"
                loaded_ids.add(row["image_id"])
                continue
            archive = index["archives"].get(row["image_id"])
            if archive and os.path.isfile(ledger.path("images", archive["file"])):
                row["source"] = "archive"
                row["archive"] = archive["file"]
            else:
                row["source"] = "missing"
        if row["source"] == "archive":
            load_image(docker_cli, ledger.path("images", row["archive"]))
            if get_image(client, row["image_id"]) is None:
                raise OperatorError(f"the archive {row['archive']} loaded, but image {row['image_id']} is still missing; the archive may be damaged")
            row["action"] = "loaded"
            loaded_ids.add(row["image_id"])
            _retag(client, row["image_id"], services[row["service"]].get("image_ref"))
    return rows


def _retag(client: t.Any, image_id: str, ref: str | None) -> None:
    """Give a loaded image back its tag, unless the tag now names another image (never move a user's tag)."""
    if not ref:
        return
    name, tag, _digest = split_reference(ref)
    if get_image(client, f"{name}:{tag or 'latest'}") is None:
        image = get_image(client, image_id)
        if image is not None:
            image.tag(name, tag or "latest")
