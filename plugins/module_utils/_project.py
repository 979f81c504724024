# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A release's project files (compose files and env file) kept restorable.

A release record holds fingerprints, never values; switching back to a release needs
the files themselves. They are copied into ``<store>/<app>/projects/<release_id>/``
(0600 files in 0700 directories). Secret values never enter the ledger: in the env
file's copy every secret-looking value is replaced by a placeholder, and a switch back
takes that value from the live env file (the release's fingerprint says whether it
changed since).
"""

from __future__ import annotations

import json
import os
import re
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._digest import sha256_bytes
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._secrets import is_secret
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger, atomic_write_bytes

try:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    HAS_RUAMEL = True
except ImportError:  # without it only the compose files and the env file are kept
    HAS_RUAMEL = False

    class YAMLError(Exception):  # type: ignore[no-redef]
        """Stand-in so that except clauses work without ruamel.yaml."""

KEEP_LIVE = "__selfhost_rollback_keeps_the_live_value__"
ENV_LINE = re.compile(r"^(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=")


def project_files(app: dict[str, t.Any]) -> dict[str, str]:
    """relative name → absolute path of the files that define the app.

    The compose files, the project's env file, and what the compose files pull in themselves:
    files named by ``include:``, by a service's ``extends: {file: ...}`` and by a service's
    ``env_file:`` (followed through included and extended files too). A reference built from a
    variable, or one outside the project directory, is not followed.
    """
    files = {}
    for path in list(app["compose_files"]) + [app["env_file"]] + referenced_files(app):
        if os.path.isfile(path):
            rel = os.path.relpath(path, app["project_dir"])
            if rel.startswith(".."):
                raise OperatorError(f"app {app['name']}: {path} lies outside project_dir; keep compose and env files in the project directory")
            files[rel] = path
    return files


def env_files(app: dict[str, t.Any]) -> set[str]:
    """The relative names of the project's env files (the app's own and the services' env_file:), kept redacted."""
    names = {os.path.relpath(app["env_file"], app["project_dir"])}
    names.update(os.path.relpath(p, app["project_dir"]) for p in referenced_files(app, kinds=("env_file",)))
    return names


def referenced_files(app: dict[str, t.Any], kinds: tuple[str, ...] = ("include", "extends", "env_file")) -> list[str]:
    """Absolute paths of the files the compose files name (see :func:`project_files`), inside the project."""
    if not HAS_RUAMEL:
        return []
    root = os.path.realpath(app["project_dir"]) + os.sep
    found: list[str] = []
    queue = list(app["compose_files"])
    seen: set[str] = set()
    while queue:
        path = os.path.realpath(queue.pop(0))
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        try:
            with open(path, encoding="utf-8") as handle:
                data = YAML(typ="safe", pure=True).load(handle) or {}
        except (OSError, UnicodeDecodeError, YAMLError):
            continue  # Compose itself reports a file it cannot read
        if not isinstance(data, dict):
            continue
        here = os.path.dirname(path)
        named: list[tuple[str, str]] = []
        for entry in data.get("include") or []:
            paths = entry.get("path") if isinstance(entry, dict) else entry
            named += [("include", p) for p in (paths if isinstance(paths, list) else [paths])]
            if isinstance(entry, dict):
                extra = entry.get("env_file")
                named += [("env_file", p) for p in (extra if isinstance(extra, list) else [extra])]
        for service in (data.get("services") or {}).values():
            if not isinstance(service, dict):
                continue
            extends = service.get("extends")
            if isinstance(extends, dict) and extends.get("file"):
                named.append(("extends", extends["file"]))
            envs = service.get("env_file")
            for item in envs if isinstance(envs, list) else [envs]:
                named.append(("env_file", item.get("path") if isinstance(item, dict) else item))
        for kind, ref in named:
            if not isinstance(ref, str) or not ref or "$" in ref:
                continue
            target = os.path.realpath(os.path.join(here, ref))
            if not target.startswith(root):
                continue
            if kind in ("include", "extends"):
                queue.append(target)
            if kind in kinds and target not in found:
                found.append(target)
    return found


def images_file(comment: str, images: dict[str, str]) -> bytes:
    """A compose file of the collection's own that sets each service's image (a switch's override, the pins file)."""
    lines = [f"# {comment}", "services:"] + [f"  {name}:\n    image: {json.dumps(ref)}" for name, ref in sorted(images.items())]
    return ("\n".join(lines) + "\n").encode()


def images_in_file(data: bytes) -> dict[str, str]:
    """service → image of a file :func:`images_file` wrote."""
    found = re.findall(r'^  ([^\s:]+):\n    image: (".*")$', data.decode(errors="replace"), flags=re.M)
    return {name: json.loads(ref) for name, ref in found}


def read_files(files: dict[str, str]) -> dict[str, bytes]:
    out = {}
    for rel, path in files.items():
        with open(path, "rb") as handle:
            out[rel] = handle.read()
    return out


def saved_dir(ledger: Ledger, release_id: str) -> str:
    return ledger.path("projects", release_id)


def saved_files(ledger: Ledger, release_id: str) -> dict[str, bytes] | None:
    """The files saved for a release, or None when none were saved."""
    index = ledger.read(os.path.join("projects", release_id, "index.json"))
    if not index:
        return None
    out = {}
    for rel, entry in index["files"].items():
        with open(ledger.path("projects", release_id, entry["stored"]), "rb") as handle:
            data = handle.read()
        if sha256_bytes(data) != entry["sha256"]:
            raise OperatorError(f"app {ledger.app}: the saved copy of {rel} for release {release_id} is damaged "
                                "(checksum mismatch); restore it from a backup of the ledger")
        out[rel] = data
    return out


def save_files(ledger: Ledger, release_id: str, contents: dict[str, bytes], env_rel: str | None = None,
               env_rels: t.Iterable[str] = ()) -> bool:
    """Save the files for a release once (env files redacted); True when they were written now."""
    if ledger.read(os.path.join("projects", release_id, "index.json")):
        return False
    redacted = {env_rel, *env_rels} - {None}
    index = {"format": 1, "release_id": release_id, "env_file": env_rel, "env_files": sorted(redacted), "files": {}}
    for number, (rel, data) in enumerate(sorted(contents.items())):
        if rel in redacted:
            data = redact_env(data.decode(errors="surrogateescape")).encode(errors="surrogateescape")
        stored = f"file-{number}"
        atomic_write_bytes(ledger.path("projects", release_id, stored), data)
        index["files"][rel] = {"stored": stored, "sha256": sha256_bytes(data), "size": len(data)}
    ledger.write(os.path.join("projects", release_id, "index.json"), index)
    return True


def release_files(ledger: Ledger, app: dict[str, t.Any], record: dict[str, t.Any]) -> tuple[dict[str, bytes], str | None]:
    """The project files of a release as a switch back writes them, and a warning when only its compose files are known.

    Secret values come from the live env files (the saved copies hold placeholders); a key the
    live file lacks stops here with the sentence that says which.
    """
    release_id = record["release_id"]
    warning = None
    wanted = saved_files(ledger, release_id)
    if wanted is None:
        wanted = {f["path"]: f["content"].encode() for f in record["compose"]["files"] if not os.path.isabs(f["path"])}
        warning = (f"app {app['name']}: release {release_id} has no saved project files; its compose files come from the "
                   "release record and the env file stays as it is (check the config drift rollback_check reports)")
    for env_rel in sorted(env_files(app)):
        if env_rel not in wanted:
            continue
        live_path = os.path.join(app["project_dir"], env_rel)
        live_env = read_files({env_rel: live_path})[env_rel].decode(errors="surrogateescape") if os.path.isfile(live_path) else ""
        merged, missing_keys = merge_env(wanted[env_rel].decode(errors="surrogateescape"), live_env)
        if missing_keys:
            raise OperatorError(f"app {app['name']}: release {release_id} needs {', '.join(missing_keys)} in {live_path}, "
                                "which the file lacks now (their values are never kept in the ledger); add them and run again")
        wanted[env_rel] = merged.encode(errors="surrogateescape")
    return wanted, warning


def redact_env(text: str) -> str:
    """The env file with every secret-looking value replaced by KEEP_LIVE."""
    out = []
    for line in text.splitlines(keepends=True):
        match = ENV_LINE.match(line.strip())
        if match:
            key = match.group("key")
            value = parse_env_text(line).get(key, "")
            if is_secret(key, value):
                out.append(f"{key}={KEEP_LIVE}\n")
                continue
        out.append(line)
    return "".join(out)


def merge_env(saved: str, live: str) -> tuple[str, list[str]]:
    """The saved env file with its placeholders filled from the live one; keys the live file lacks."""
    live_lines = {}
    for line in live.splitlines():
        match = ENV_LINE.match(line.strip())
        if match:
            live_lines[match.group("key")] = line.strip()
    out, missing = [], []
    for line in saved.splitlines(keepends=True):
        match = ENV_LINE.match(line.strip())
        if match and KEEP_LIVE in line:
            key = match.group("key")
            if key in live_lines:
                out.append(live_lines[key] + "\n")
            else:
                missing.append(key)
            continue
        out.append(line)
    return "".join(out), missing


def set_env(text: str, updates: dict[str, str]) -> str:
    """Set KEY=value lines in an env file's text, keeping every other line and comment."""
    remaining = dict(updates)
    lines = text.splitlines(keepends=True)
    out = []
    for line in lines:
        match = ENV_LINE.match(line.strip())
        if match and match.group("key") in remaining:
            key = match.group("key")
            out.append(f"{key}={remaining.pop(key)}\n")
        else:
            out.append(line)
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    out.extend(f"{key}={value}\n" for key, value in remaining.items())
    return "".join(out)


def take_keys(live: str, target: str, keys: list[str]) -> str:
    """The live env file with the lines of ``keys`` as the target file writes them (added, replaced or removed)."""
    wanted = {}
    for line in target.splitlines():
        match = ENV_LINE.match(line.strip())
        if match:
            wanted[match.group("key")] = line.strip()  # the last one wins, as it does for Compose
    out, seen = [], set()
    for line in live.splitlines(keepends=True):
        match = ENV_LINE.match(line.strip())
        key = match.group("key") if match else None
        if key in keys:
            if key in wanted and key not in seen:
                out.append(wanted[key] + "\n")
            seen.add(key)
            continue
        out.append(line)
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    out.extend(wanted[k] + "\n" for k in keys if k in wanted and k not in seen)
    return "".join(out)


def write_project_file(path: str, data: bytes) -> None:
    """Replace a project file atomically, keeping its mode (an env file stays private)."""
    existing = os.stat(path) if os.path.exists(path) else None
    mode = existing.st_mode & 0o777 if existing else 0o600
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.selfhost-tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    if existing is not None:
        os.chown(tmp, existing.st_uid, existing.st_gid)
    os.replace(tmp, path)


def read_env_file(path: str) -> dict[str, str]:
    """Parse a Compose ``.env`` file by Compose's rules (see :func:`parse_env_text`)."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return parse_env_text(handle.read())


ENV_KEY = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*[=:]\s*")


ENV_REF = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


DQ_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "$": "\0"}


def parse_env_text(text: str, environ: t.Mapping[str, str] | None = None) -> dict[str, str]:
    """KEY=VALUE lines the way Compose reads an env file.

    ``export`` prefixes and ``KEY: value`` lines are accepted; a single-quoted value is literal;
    a double-quoted one may span lines and knows the escapes ``\\n \\r \\t \\\\ \\" \\$``;
    after a closing quote, and after whitespace plus ``#`` in an unquoted value, the rest of
    the line is a comment. ``${VAR}``, ``$VAR`` and ``${VAR:-default}`` in unquoted and
    double-quoted values expand from the keys above and then the environment. The
    integration suite checks these rules against Compose's own reading of the same file.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = ENV_KEY.match(line)
        if not match:
            continue
        key, rest = match.group(1), line[match.end():]
        if rest.startswith("'"):
            body, index = _quoted(rest[1:], "'", lines, index)
            values[key] = body
        elif rest.startswith('"'):
            body, index = _quoted(rest[1:], '"', lines, index)
            body = re.sub(r"\\(.)", lambda m: DQ_ESCAPES.get(m.group(1), "\\" + m.group(1)), body)
            values[key] = _expand(body, values, environ).replace("\0", "$")
        else:
            body = re.split(r"\s#", rest, maxsplit=1)[0].strip()
            values[key] = _expand(body, values, environ)
    return values


def _quoted(rest: str, quote: str, lines: list[str], index: int) -> tuple[str, int]:
    """The text up to the closing quote (a double quote may be escaped), continuing on the next lines."""
    pattern = re.compile(r"^((?:[^\\\"]|\\.)*)\"" if quote == '"' else r"^([^']*)'")
    text = rest
    while True:
        found = pattern.match(text)
        if found:
            return found.group(1), index
        if index >= len(lines):
            return text, index  # unterminated: Compose refuses the file, and so does 'docker compose config'
        text += "\n" + lines[index]
        index += 1


def _expand(value: str, known: dict[str, str], environ: t.Mapping[str, str]) -> str:
    def lookup(name: str) -> str | None:
        return known[name] if name in known else environ.get(name)

    def one(match: re.Match) -> str:
        name = match.group("braced") or match.group("bare")
        found, op, arg = lookup(name), match.group("op"), match.group("arg") or ""
        if op in (":-", ":?"):
            return found if found else (arg if op == ":-" else "")
        if op in ("-", "?"):
            return found if found is not None else (arg if op == "-" else "")
        if op == ":+":
            return arg if found else ""
        if op == "+":
            return arg if found is not None else ""
        return found or ""

    return ENV_REF.sub(one, value)


def secret_values(app: dict[str, t.Any], extra: t.Iterable[str] = ()) -> list[str]:
    """Values a result or record must never contain: everything in the env file that looks secret."""
    found = [v for k, v in read_env_file(app["env_file"]).items() if v and is_secret(k, v)]
    return [v for v in list(found) + list(extra) if v and len(v) >= 4]
