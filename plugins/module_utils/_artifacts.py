# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An app's declared artifacts: recorded by digest, kept, and put back (private to the collection).

An artifact is a model file or directory (``path``) or a command's output such as a model
list (``command``). A release records each one by digest (:func:`digest_of`). Unless the
artifact says ``keep: false``, recording a release also keeps a copy in the ledger, once per
digest::

    artifacts/<hex>        a file's bytes, or a directory's tree (0600 files, 0700 directories)
    artifacts/<hex>.out    a command's output (it may hold anything, so it stays private)

A rollback of scope ``artifacts`` puts a path artifact back from its copy, by digest
(:func:`put_back`); a command's output cannot be put back by the collection, so the plan
says which lines the command printed then and prints no more, or prints now and did not
(:func:`plan`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._digest import sha256_bytes, sha256_file
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError, last_lines
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import DIR_MODE, FILE_MODE, Ledger, ensure_dir, replace_file

DIR = "artifacts"


def tree_digest(path: str) -> tuple[str, int, int]:
    """Digest of a directory: every file's relative path and content, in a stable order."""
    lines = []
    size = 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            if os.path.islink(full):
                lines.append(f"{os.path.relpath(full, path)} -> {os.readlink(full)}")
                continue
            size += os.path.getsize(full)
            lines.append(f"{os.path.relpath(full, path)} {sha256_file(full)}")
    return sha256_bytes("\n".join(lines).encode()), len(lines), size


def location(app: dict[str, t.Any], artifact: dict[str, t.Any]) -> str:
    path = artifact["path"]
    return path if os.path.isabs(path) else os.path.join(app["project_dir"], path)


def digest_of(app: dict[str, t.Any], artifact: dict[str, t.Any], outputs: dict[str, bytes] | None = None) -> dict[str, t.Any]:
    """What a release records of one artifact; a command's output goes into ``outputs`` (by name), never the record."""
    name = artifact["name"]
    if bool(artifact.get("path")) == bool(artifact.get("command")):
        raise OperatorError(f"app {app['name']}: artifact {name!r} needs exactly one of path or command")
    if artifact.get("path"):
        path = location(app, artifact)
        if os.path.isdir(path):
            digest, files, size = tree_digest(path)
            return {"kind": "dir", "path": artifact["path"], "digest": digest, "files": files, "size": size}
        if os.path.isfile(path):
            return {"kind": "file", "path": artifact["path"], "digest": sha256_file(path), "size": os.path.getsize(path)}
        raise OperatorError(f"app {app['name']}: artifact {name!r}: {path} does not exist; fix its path or remove it from artifacts")
    argv = [str(a) for a in artifact["command"]]
    try:
        proc = subprocess.run(argv, cwd=app["project_dir"], capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperatorError(f"app {app['name']}: artifact {name!r}: the command could not run ({exc})") from exc
    if proc.returncode != 0:
        raise OperatorError(f"app {app['name']}: artifact {name!r}: the command failed (rc {proc.returncode}): "
                            f"{last_lines(proc.stderr.decode(errors='replace'))}")
    if outputs is not None:
        outputs[name] = proc.stdout
    return {"kind": "command", "command": argv, "digest": sha256_bytes(proc.stdout), "size": len(proc.stdout)}


def _copy_name(entry: dict[str, t.Any]) -> str:
    hexdigest = str(entry["digest"]).split(":", 1)[-1]
    return hexdigest + (".out" if entry["kind"] == "command" else "")


def copy_path(ledger: Ledger, entry: dict[str, t.Any]) -> str:
    return ledger.path(DIR, _copy_name(entry))


def is_kept(ledger: Ledger, entry: dict[str, t.Any]) -> bool:
    return os.path.lexists(copy_path(ledger, entry))


def to_keep(app: dict[str, t.Any], ledger: Ledger, recorded: dict[str, dict[str, t.Any]]) -> list[str]:
    """Names of the recorded artifacts whose copy is not in the ledger yet (those with ``keep: false`` left out)."""
    declared = {a["name"]: a for a in app.get("artifacts") or []}
    return sorted(n for n, e in recorded.items()
                  if n in declared and declared[n].get("keep", True) and not is_kept(ledger, e))


def keep(app: dict[str, t.Any], ledger: Ledger, recorded: dict[str, dict[str, t.Any]], outputs: dict[str, bytes],
         names: list[str]) -> list[str]:
    """Copy the named artifacts into the ledger (the caller holds the lock); returns what was kept.

    The copy is checked against the digest the release records: an artifact that changed while
    the release was read is not kept, and says so.
    """
    kept = []
    ensure_dir(ledger.path(DIR))
    declared = {a["name"]: a for a in app.get("artifacts") or []}
    for name in names:
        entry = recorded[name]
        final = copy_path(ledger, entry)
        if entry["kind"] == "command":
            if name in outputs:
                replace_file(final, outputs[name], FILE_MODE)
                kept.append(name)
            continue
        source = location(app, declared[name])
        tmp = final + ".selfhost-tmp"
        _remove(tmp)
        if entry["kind"] == "dir":
            shutil.copytree(source, tmp, symlinks=True, copy_function=shutil.copyfile)
            _private(tmp)
            same = tree_digest(tmp)[0] == entry["digest"]
        else:
            shutil.copyfile(source, tmp)
            os.chmod(tmp, FILE_MODE)
            same = sha256_file(tmp) == entry["digest"]
        if not same:
            _remove(tmp)
            raise OperatorError(f"app {app['name']}: artifact {name!r} changed while the release was recorded; "
                                "record the release again once it is written")
        os.rename(tmp, final)
        kept.append(name)
    return kept


def _private(root: str) -> None:
    os.chmod(root, DIR_MODE)
    for here, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(here, name), DIR_MODE)
        for name in files:
            if not os.path.islink(os.path.join(here, name)):
                os.chmod(os.path.join(here, name), FILE_MODE)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _lines(data: bytes) -> list[str]:
    return [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]


def plan(app: dict[str, t.Any], ledger: Ledger, target: dict[str, t.Any], live: dict[str, dict[str, t.Any]],
         outputs: dict[str, bytes]) -> dict[str, t.Any]:
    """What putting the target release's artifacts back means.

    ``put_back``: path artifacts that differ and have a copy; ``by_hand``: command artifacts that
    differ, with the lines to add and to remove (from the kept output of the release); ``blocking``:
    sentences for what cannot come back (no copy was kept, or it is no longer there).
    """
    out: dict[str, t.Any] = {"put_back": [], "by_hand": [], "same": [], "blocking": []}
    recorded = target.get("artifacts") or {}
    declared = {a["name"]: a for a in app.get("artifacts") or []}
    for name, entry in sorted(recorded.items()):
        now = live.get(name) or {}
        if now.get("digest") == entry.get("digest"):
            out["same"].append(name)
            continue
        if name not in declared:
            out["blocking"].append(f"artifact {name!r} of release {target['release_id']} is no longer declared in app.artifacts; "
                                   "declare it again to put it back")
            continue
        if not is_kept(ledger, entry):
            out["blocking"].append(
                f"artifact {name!r}: release {target['release_id']} recorded it as {entry['digest']}, but no copy was kept "
                f"({copy_path(ledger, entry)} is missing"
                + ("; the artifact says keep: false" if declared[name].get("keep") is False else "")
                + "); put it back by hand, or leave rollback_scope=artifacts out")
            continue
        if entry["kind"] == "command":
            with open(copy_path(ledger, entry), "rb") as handle:
                then = _lines(handle.read())
            current = _lines(outputs.get(name, b""))
            out["by_hand"].append({"name": name, "command": entry.get("command"), "digest": entry["digest"],
                                   "add": [line for line in then if line not in current],
                                   "remove": [line for line in current if line not in then]})
        else:
            out["put_back"].append({"name": name, "path": entry["path"], "kind": entry["kind"], "digest": entry["digest"],
                                    "now": now.get("digest")})
    return out


def plan_now(app: dict[str, t.Any], ledger: Ledger, target: dict[str, t.Any]) -> dict[str, t.Any]:
    """:func:`plan` against the artifacts as they are on the host now."""
    outputs: dict[str, bytes] = {}
    live = {a["name"]: digest_of(app, a, outputs) for a in app.get("artifacts") or []}
    found = plan(app, ledger, target, live, outputs)
    if not target.get("artifacts"):
        found["blocking"].append(f"release {target['release_id']} records no artifacts; declare them in app.artifacts and record "
                                 "releases, or leave rollback_scope=artifacts out")
    return found


def by_hand_sentence(item: dict[str, t.Any]) -> str:
    command = " ".join(item.get("command") or [])
    parts = []
    if item["add"]:
        parts.append("it printed " + "; ".join(repr(line) for line in item["add"]) + " then (pull or load these)")
    if item["remove"]:
        parts.append("it prints " + "; ".join(repr(line) for line in item["remove"]) + " now, which it did not then")
    return (f"artifact {item['name']!r} ({command}) is not what the release recorded: " + ", and ".join(parts or ["its output differs"])
            + "; the collection cannot change it, do it by hand and record the release")


def put_back(app: dict[str, t.Any], ledger: Ledger, items: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """Replace each path artifact with the ledger's copy, checked by digest; the caller holds the lock.

    The copy goes next to the artifact first and is renamed into place, so the app never sees
    half a model; a directory's old tree is removed only after the new one is in place.
    """
    declared = {a["name"]: a for a in app.get("artifacts") or []}
    done = []
    for item in items:
        final = location(app, declared[item["name"]])
        source = copy_path(ledger, item)
        tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.selfhost-tmp")
        _remove(tmp)
        if item["kind"] == "dir":
            shutil.copytree(source, tmp, symlinks=True, copy_function=shutil.copyfile)
            got = tree_digest(tmp)[0]
        else:
            shutil.copyfile(source, tmp)
            if os.path.isfile(final):
                os.chmod(tmp, os.stat(final).st_mode & 0o777)
            got = sha256_file(tmp)
        if got != item["digest"]:
            _remove(tmp)
            raise OperatorError(f"app {app['name']}: the kept copy of artifact {item['name']!r} ({source}) does not match "
                                f"its digest {item['digest']} any more; it was not put back")
        if item["kind"] == "dir" and os.path.isdir(final):
            old = final + ".selfhost-old"
            _remove(old)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        done.append({"name": item["name"], "path": item["path"], "digest": item["digest"]})
    return done
