# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Partial rollbacks: which part of a release comes back, and what stays as it runs (private to the collection).

A partial rollback returns a *part* of the target release:

- ``services``: only these services (and the partners a version lock ties to them) go back,
  their image and their configuration;
- ``scope``: ``config`` (env-file keys and compose settings, images stay), ``images`` (the
  reverse), ``artifacts`` (declared model files, see ``_artifacts``), or ``all``.

The part is written into the project files, never only into one ``docker compose up``, so a
plain ``docker compose up -d`` afterwards finds the same mixed state and changes nothing. A file
or an env key therefore comes back only when everything that reads it is in the part:

- an env key is read by the services whose definition (image line or settings) names it as
  ``${KEY}``; a key no service names (``COMPOSE_PROFILES``, a top-level ``name:``) belongs to
  the project as a whole;
- the compose files (and the files they pull in) come back together, when every difference
  between the release's merged project and today's lies inside the part.

What cannot come back alone is named: a setting stays as it is now, with the services that share
it. An image whose line other services share (a ``${VERSION}`` they read too, a YAML anchor) comes
back through the collection's own images file (``<store>/<app>/pins.yaml``, the file ``pins: own_file``
uses): the service's image by digest under ``services.<name>.image``, which every Compose call of
the collection adds after the project's files, while the user's files keep the shared line. The plan
says that a plain ``docker compose up -d`` without that file brings the service forward again, and
which ``COMPOSE_FILE`` keeps it. An upgrade, or a full rollback to a release that held nothing
there, takes the file away. What that file cannot hold (a ``build:`` service, an image without a
registry digest) blocks the rollback, with the sentence saying which service to add.
:func:`plan` is pure; the switch module applies its ``files``, ``images`` and ``images_file``, the
compatibility gate shows it.
"""

from __future__ import annotations

import json
import os
import re
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _project
from ansible_collections.selfhost.rollback.plugins.module_utils._artifacts import by_hand_sentence
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import Compose
from ansible_collections.selfhost.rollback.plugins.module_utils._project import parse_env_text
from ansible_collections.selfhost.rollback.plugins.module_utils._secrets import scrub
from ansible_collections.selfhost.rollback.plugins.module_utils._pin import ImageNode, PinError, interpolate, locate_images, unpin_text
from ansible_collections.selfhost.rollback.plugins.module_utils._release import _structure

SCOPES = ("all", "config", "images", "artifacts")
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
PROJECT = ("", "project")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}")

Aspect = t.Tuple[str, str]


def is_partial(services: list[str] | None, scope: str | None) -> bool:
    return bool(services) or (scope or "all") != "all"


def images_file_of(app: dict[str, t.Any], path: str) -> dict[str, t.Any] | None:
    """The collection's images file as a plan uses it: ``path`` and ``held`` (service → image it holds now).

    None with ``pins: own_file``: that file holds every service's digest pin (the pin module writes
    it, a partial rollback moves the pins of what comes back in it).
    """
    if app.get("pins") == "own_file":
        return None
    held: dict[str, str] = {}
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            held = _project.images_in_file(handle.read())
    return {"path": path, "held": held}


def project_structure(app: dict[str, t.Any], salt: bytes, secrets: list[str]) -> dict[str, t.Any]:
    """The merged project a plan reads image lines from, as a release records it (no interpolation, scrubbed).

    The project's own files, without the collection's images file (which overrides the lines of the
    services it holds); with ``pins: own_file``, merged with that file, whose lines are the pins.
    """
    compose = Compose(app if app.get("pins") == "own_file" else dict(app, pins_file=None))
    return t.cast(dict, scrub(_structure(compose, salt), secrets))


def compose_file_setting(app: dict[str, t.Any], path: str, values: t.Mapping[str, str]) -> str:
    """``COMPOSE_FILE=…`` that makes a plain ``docker compose`` in the project directory read ``path`` too."""
    separator = values.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
    files = [os.path.relpath(p, app["project_dir"]) for p in app.get("compose_files") or []] or ["compose.yaml"]
    return "COMPOSE_FILE=" + separator.join(files + [path])


def names_images_file(path: str, values: t.Mapping[str, str]) -> bool:
    """Whether ``COMPOSE_FILE`` (in ``values``) names the images file already."""
    setting = values.get("COMPOSE_FILE") or ""
    separator = values.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
    return any(os.path.realpath(f) == os.path.realpath(path) for f in setting.split(separator) if os.path.isabs(f))


def unpinned(ref: t.Any) -> t.Any:
    """An image reference without its digest pin (what the pin role adds and an upgrade takes away)."""
    return DIGEST.sub("", ref) if isinstance(ref, str) else ref


def _names(value: t.Any) -> set[str]:
    return set(VARIABLE.findall(json.dumps(value).replace("$$", "")))


def readers(structure: dict[str, t.Any], env_path: str | None = None) -> dict[str, set[Aspect]]:
    """env key → the aspects that read it: ``(service, "image")``, ``(service, "config")`` or the project.

    ``structure`` is the merged project without interpolation (what a release records as
    ``compose.config``). A service whose ``env_file`` is the project's env file reads every key of it
    (under the key ``*``).
    """
    out: dict[str, set[Aspect]] = {}
    for name, spec in sorted((structure.get("services") or {}).items()):
        for field, value in (spec or {}).items():
            aspect = (name, "image" if field == "image" else "config")
            for key in _names(value):
                out.setdefault(key, set()).add(aspect)
        env_files = spec.get("env_file") if isinstance(spec, dict) else None
        paths = [e.get("path") if isinstance(e, dict) else e for e in env_files or []] if isinstance(env_files, list) else [env_files]
        if env_path and any(p and os.path.basename(str(p)) == os.path.basename(env_path) for p in paths):
            out.setdefault("*", set()).add((name, "config"))
    for key in _names({k: v for k, v in structure.items() if k != "services"}):
        out.setdefault(key, set()).add(PROJECT)
    return out


def differences(target: dict[str, t.Any], live: dict[str, t.Any]) -> set[Aspect]:
    """The aspects in which two merged projects differ."""
    out: set[Aspect] = set()
    before, now = target.get("services") or {}, live.get("services") or {}
    for name in set(before) | set(now):
        a, b = before.get(name), now.get(name)
        if a is None or b is None:
            out.update({(name, "image"), (name, "config")})
            continue
        if unpinned(a.get("image")) != unpinned(b.get("image")):
            out.add((name, "image"))
        if {k: v for k, v in a.items() if k != "image"} != {k: v for k, v in b.items() if k != "image"}:
            out.add((name, "config"))
    if {k: v for k, v in target.items() if k not in ("services", "name")} != {k: v for k, v in live.items() if k not in ("services", "name")}:
        out.add(PROJECT)
    return out


def part_of(app: dict[str, t.Any], target: dict[str, t.Any], services: list[str], scope: str) -> tuple[list[str], list[str], list[str]]:
    """The services that go back, the sentences for the partners a version lock adds, and refusals."""
    known = sorted((target.get("services") or {}))
    if not services:
        return known, [], []
    unknown = [s for s in services if s not in known]
    if unknown:
        return [], [], [f"rollback_services names {', '.join(unknown)}, which release {target['release_id']} does not run "
                        f"(its services: {', '.join(known)}); fix rollback_services"]
    part = list(dict.fromkeys(services))
    partners = []
    if scope in ("all", "images"):
        for group in app.get("version_locks") or []:
            if set(group) & set(part):
                added = [s for s in group if s not in part and s in known]
                if added:
                    part += added
                    partners.append(f"{', '.join(added)} {'goes' if len(added) == 1 else 'go'} too: version lock {list(group)}")
    return sorted(part), partners, []


def wanted_aspects(part: list[str], services: list[str], scope: str) -> set[Aspect]:
    kinds = {"all": ("image", "config"), "config": ("config",), "images": ("image",)}.get(scope, ())
    out = {(s, k) for s in part for k in kinds}
    if not services and scope == "config":
        out.add(PROJECT)
    return out


def _who(aspects: t.Iterable[Aspect]) -> str:
    names = sorted({"the project" if a == PROJECT else (f"{a[0]}'s image" if a[1] == "image" else a[0]) for a in aspects})
    return ", ".join(names)


def plan(app: dict[str, t.Any], target: dict[str, t.Any], target_files: dict[str, bytes], live_files: dict[str, bytes],
         live_structure: dict[str, t.Any], live_images: dict[str, dict[str, t.Any]], services: list[str] | None,
         scope: str, environ: t.Mapping[str, str] | None = None, images_file: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
    """What a partial rollback to ``target`` changes, keeps and refuses.

    ``live_structure``: the merged project of the app's own files (:func:`project_structure`).
    ``live_images``: per service that runs now, ``image_ref`` (as Compose resolves its image line,
    the images file included) and ``image_id``. ``images_file``: :func:`images_file_of`, or None
    when the plan may not use that file (an image line others share then blocks).

    Returns ``services`` (the part), ``partners``, ``files`` (the project files to write, relative
    name → bytes), ``images`` (per service of the target, the image ID it must run), ``back`` /
    ``kept`` (what returns and what stays, with why), ``images_file`` (None, or ``path``,
    ``services``: what it holds after the switch, ``hold`` / ``release``: the services put in or
    taken out, ``write``: whether it changes), ``blocking`` and ``actions``.
    """
    services = list(services or [])
    part, partners, blocking = part_of(app, target, services, scope)
    result: dict[str, t.Any] = {"scope": scope, "services": part, "partners": partners, "files": {}, "images": {},
                                "back": {"images": [], "env": [], "files": []}, "kept": {"env": {}, "files": {}, "images": []},
                                "images_file": None, "blocking": blocking, "actions": []}
    if blocking or scope == "artifacts":
        return result
    want = wanted_aspects(part, services, scope)
    env_rel = os.path.relpath(app["env_file"], app["project_dir"])
    target_structure = (target.get("compose") or {}).get("config") or {}
    structures = (target_structure, live_structure)
    env_back, env_text, who_reads = _env_back(app, env_rel, live_files, target_files, structures, want, environ, result)

    # the compose files (and what they pull in) come back together, or not at all; digest pins alone are no change
    changed = sorted(rel for rel in target_files if rel != env_rel and live_files.get(rel) != target_files[rel])
    diff = differences(target_structure, live_structure)
    files_back = bool(changed) and bool(diff) and diff <= want
    if changed and not files_back:
        reason = ("only digest pins differ" if not diff else
                  f"{'they change' if len(changed) > 1 else 'it changes'} {_who(diff - want)} too" if diff & want
                  else "outside the part")
        for rel in changed:
            result["kept"]["files"][rel] = reason
    files = dict(live_files)
    compose_rels = [os.path.relpath(p, app["project_dir"]) for p in app.get("compose_files") or []]
    if files_back:
        # written without the release's pins: a pin would hold a service that stays on the release's digest
        files.update({rel: unpin_text(target_files[rel].decode(), rel).encode() if rel in compose_rels else target_files[rel]
                      for rel in changed})
    if env_back:
        files[env_rel] = env_text.encode(errors="surrogateescape")
    result["files"] = files
    result["back"]["env"] = env_back
    result["back"]["files"] = changed if files_back else []

    values = dict(parse_env_text(env_text, environ or {}))
    values.update(environ or {})
    images = _ImagePlan(app, target, result, want, live_images, live_files, compose_rels, values, images_file, who_reads,
                        changed, diff, services, scope)
    images.run(target_structure if files_back else live_structure)
    if result["blocking"]:
        return result
    result["back"]["files"] = sorted(rel for rel in files if rel != env_rel and files[rel] != live_files.get(rel))
    for rel in result["back"]["files"]:
        result["kept"]["files"].pop(rel, None)
    if images_file is not None and (images.held or images.entries):
        result["images_file"] = {"path": images_file["path"], "services": images.entries, "write": images.entries != images.held,
                                 "hold": sorted(n for n in images.entries if images.held.get(n) != images.entries[n]),
                                 "release": sorted(n for n in images.held if n not in images.entries)}
    result["actions"] = ([f"bring back {name}'s image {images.target_services[name]['image_ref']}" for name in result["back"]["images"]]
                         + [f"bring back {key} in {env_rel}" for key in env_back]
                         + [f"bring back {rel}" for rel in changed if files_back]
                         + [f"pin {name}'s image line to the release's digest" for name in images.repinned]
                         + images_file_actions(app, result["images_file"], images.routed, env_rel, values)
                         + [f"keep {key} as it is now ({why})" for key, why in sorted(result["kept"]["env"].items())
                            if why != "outside the part"]
                         + [f"keep {rel} as it is now ({why})" for rel, why in sorted(result["kept"]["files"].items())
                            if why not in ("outside the part", "only digest pins differ")])
    return result


def _env_back(app: dict[str, t.Any], env_rel: str, live_files: dict[str, bytes], target_files: dict[str, bytes],
              structures: tuple[dict[str, t.Any], dict[str, t.Any]], want: set[Aspect], environ: t.Mapping[str, str] | None,
              result: dict[str, t.Any]) -> tuple[list[str], str, dict[str, set[Aspect]]]:
    """The env keys that come back (every reader is in the part), the env file's text after, and who reads each key.

    A key that stays is named in ``result["kept"]["env"]`` with why.
    """
    live_env_text = live_files.get(env_rel, b"").decode(errors="surrogateescape")
    target_env_text = target_files.get(env_rel, b"").decode(errors="surrogateescape")
    live_env, target_env = parse_env_text(live_env_text, environ or {}), parse_env_text(target_env_text, environ or {})
    who_reads: dict[str, set[Aspect]] = {}
    for source in (readers(structures[0], app["env_file"]), readers(structures[1], app["env_file"])):
        for key, aspects in source.items():
            who_reads.setdefault(key, set()).update(aspects)
    everyone = who_reads.pop("*", set())
    env_back = []
    for key in sorted(set(live_env) | set(target_env)):
        if live_env.get(key) == target_env.get(key):
            continue
        aspects = set(who_reads.get(key, set())) | everyone
        if key.startswith("COMPOSE_") or not aspects:
            aspects.add(PROJECT)
        if aspects <= want:
            env_back.append(key)
        elif aspects & want:
            result["kept"]["env"][key] = f"also read by {_who(aspects - want)}"
        else:
            result["kept"]["env"][key] = "outside the part"
    env_text = _project.take_keys(live_env_text, target_env_text, env_back) if env_back else live_env_text
    return env_back, env_text, who_reads


class _ImagePlan:
    """Each service runs the target's image (its image is in the part) or today's; the files must say the same, or,
    for a service whose image line others share, the collection's images file does."""

    def __init__(self, app: dict[str, t.Any], target: dict[str, t.Any], result: dict[str, t.Any], want: set[Aspect],
                 live_images: dict[str, dict[str, t.Any]], live_files: dict[str, bytes], compose_rels: list[str],
                 values: dict[str, str], images_file: dict[str, t.Any] | None, who_reads: dict[str, set[Aspect]],
                 changed: list[str], diff: set[Aspect], services: list[str], scope: str) -> None:
        self.result, self.want, self.live_images, self.live_files = result, want, live_images, live_files
        self.compose_rels, self.values, self.images_file, self.who_reads = compose_rels, values, images_file, who_reads
        self.changed, self.diff, self.services, self.scope = changed, diff, services, scope
        self.target_services = target.get("services") or {}
        self.files = result["files"]
        self.kept_keys = set(result["kept"]["env"])
        self.staying = (set(self.target_services) | set(live_images)) - set(result["services"])
        self.held = dict((images_file or {}).get("held") or {})
        self.entries = dict(self.held)  # the images file after the switch
        self.routed: dict[str, str] = {}  # service → why its image comes back through the images file
        self.repinned: list[str] = []

    def run(self, structure: dict[str, t.Any]) -> None:
        for name, recorded in sorted(self.target_services.items()):
            line = ((structure.get("services") or {}).get(name) or {}).get("image")
            self.one(name, recorded, line)

    def one(self, name: str, recorded: dict[str, t.Any], line: t.Any) -> None:
        result, live = self.result, self.live_images.get(name)
        back = (name, "image") in self.want or live is None
        chosen = recorded if back else live
        result["images"][name] = chosen["image_id"]
        if back and (live or {}).get("image_id") != recorded["image_id"]:
            result["back"]["images"].append(name)
        elif not back:
            result["kept"]["images"].append(name)
        if not isinstance(line, str) or not chosen.get("image_ref"):
            return
        if not back and name in self.held:
            return  # the images file holds it, and goes on holding it
        trial, problem, moved = dict(self.files), None, False
        if back and DIGEST.search(line) and live is not None and recorded["image_id"] != live["image_id"]:
            # the pin in today's file holds today's image: it moves to the release's digest (or goes)
            found = DIGEST.search(str(recorded.get("image_ref")))
            problem = repin(trial, self.compose_rels, name, found.group(0) if found else "", self.staying)
            moved = problem is None
            line = DIGEST.sub(found.group(0) if found else "", line) if moved else line
        if problem is None:
            try:
                resolved = interpolate(line, self.values)
            except PinError as exc:
                result["blocking"].append(f"the image line of {name} ({line}) cannot be read: {exc}")
                return
            if resolved == (chosen["image_ref"] if DIGEST.search(resolved) else unpinned(chosen["image_ref"])):
                self.files.update(trial)
                self.repinned += [name] if moved else []
                if back:
                    self.entries.pop(name, None)  # its own line gives it: the images file need not hold it
                return
            if not back:
                result["blocking"].append(f"{name} would leave {live['image_ref']} for {resolved}, although its "
                                          f"image is outside the part (scope {self.scope}); roll back with rollback_scope=all")
                return
        self.alone(name, recorded, line, problem)

    def alone(self, name: str, recorded: dict[str, t.Any], line: str, problem: str | None) -> None:
        """Its image cannot come back through the project files alone: the images file holds it, or it is refused."""
        held_keys = sorted(_names(line) & self.kept_keys)
        node = image_node(self.live_files, self.compose_rels, name)
        anchored = sorted((set(node[1].services) - {name}) & self.staying) if node else []
        anchor_why = anchor_sentence(node[0], node[1], name, self.staying) if node else None
        if held_keys:
            others = set().union(*(self.who_reads.get(k, set()) for k in held_keys)) - self.want
            sharers = sorted({a[0] for a in others if a != PROJECT} | ({"the project"} if PROJECT in others else set()))
            why = (f"its image line {line} reads {', '.join(held_keys)}, which {', '.join(sharers)} also "
                   f"{'reads' if len(sharers) == 1 else 'read'}")
        elif problem or anchored:
            sharers = anchored
            why = str(problem or anchor_why)
        else:
            sharers = []
            why = (f"its image line is in {', '.join(self.changed)}, which {'change' if len(self.changed) > 1 else 'changes'} "
                   f"{_who(self.diff - self.want)} too")
        if self.images_file is not None and sharers:
            cannot = not_holdable(recorded)
            if not cannot:
                self.entries[name] = str(hold_reference(recorded))
                self.routed[name] = why
                return
            why += f"; the collection's images file {self.images_file['path']} cannot hold it either: {cannot}"
        if self.services and held_keys:
            why += f"; add {', '.join(sharers)} to rollback_services, or tie them together in app.version_locks"
        self.result["blocking"].append(f"{name} cannot go back to {recorded['image_ref']} alone: {why}")


def not_holdable(recorded: dict[str, t.Any]) -> str | None:
    """Why the images file cannot hold a release's image of a service (None: it can, by digest)."""
    if recorded.get("build"):
        return "the service is built here (build:), so there is no image to name by digest"
    if not hold_reference(recorded):
        return f"{recorded.get('image_ref')} has no registry digest"
    return None


def hold_reference(recorded: dict[str, t.Any]) -> str | None:
    """The release's image of a service by digest, as the images file names it."""
    ref = recorded.get("pinned_ref") or recorded.get("image_ref")
    return ref if isinstance(ref, str) and DIGEST.search(ref) else None


def images_file_actions(app: dict[str, t.Any], found: dict[str, t.Any] | None, routed: dict[str, str], env_rel: str,
                        values: t.Mapping[str, str]) -> list[str]:
    """The plan's sentences for the images file: what it holds and takes out, and what keeps it."""
    if not found or not found["write"]:
        return []
    path = found["path"]
    out = [f"hold {name} on {found['services'][name]} in {path}, the collection's images file, since {routed[name]} "
           "(the project files keep that line as it is)" for name in found["hold"]]
    out += [f"take {name} out of {path} (its own image line gives it again)" for name in found["release"]]
    if found["services"]:
        names = ", ".join(sorted(found["services"]))
        keep = (f"COMPOSE_FILE in {env_rel} names it, so a plain 'docker compose up -d' keeps it" if names_images_file(path, values)
                else f"{compose_file_setting(app, path, values)} in {env_rel} keeps it")
        out.append(f"every Compose call of the collection adds {path}; a plain 'docker compose up -d' without that file brings "
                   f"{names} forward again; {keep}")
    return out


def repin(files: dict[str, bytes], compose_rels: list[str], service: str, digest: str, staying: set[str]) -> str | None:
    """Set the digest pin of ``service``'s image line (in the last compose file that names its image) in ``files``.

    Returns why it cannot be done alone: the line is shared (a YAML anchor) with a service that stays.
    """
    found = image_node(files, compose_rels, service)
    if found is None:
        return None
    rel, node = found
    problem = anchor_sentence(rel, node, service, staying)
    if problem:
        return problem
    text = files[rel].decode()
    span = text[node.start:node.end]
    files[rel] = (text[:node.start] + DIGEST.sub(digest, span) + text[node.end:]).encode()
    return None


def image_node(files: dict[str, bytes], compose_rels: list[str], service: str) -> tuple[str, ImageNode] | None:
    """The image scalar of ``service`` in the last compose file that names its image, with that file's name."""
    for rel in reversed(compose_rels):
        if rel not in files:
            continue
        for node in locate_images(files[rel].decode(), rel).nodes:
            if service in node.services:
                return rel, node
    return None


def anchor_sentence(rel: str, node: ImageNode, service: str, staying: set[str]) -> str | None:
    shared = sorted((set(node.services) - {service}) & staying)
    if not shared:
        return None
    return f"its image line (line {node.line} of {rel}) is shared with {', '.join(shared)}, which {'stays' if len(shared) == 1 else 'stay'}"


def artifacts_part(target: dict[str, t.Any], found: dict[str, t.Any]) -> dict[str, t.Any]:
    """The plan of a rollback of scope artifacts (``found``: ``_artifacts.plan``), shaped as :func:`plan`'s."""
    return {"scope": "artifacts", "services": [], "partners": [], "back": {"images": [], "env": [], "files": []},
            "kept": {"env": {}, "files": {}, "images": sorted(target.get("services") or {})}, "artifacts": found,
            "blocking": list(found["blocking"]),
            "actions": [f"put back artifact {i['name']} ({i['path']}) as {i['digest']} from the copy kept" for i in found["put_back"]],
            "by_hand": [by_hand_sentence(i) for i in found["by_hand"]]}


def mixed(target_id: str, partial: dict[str, t.Any]) -> dict[str, t.Any]:
    """What the release recorded after a partial rollback says of itself (the caller adds ``from``, the release it left).

    ``images_file``: the services the collection's images file holds in that release (service → image), so that a
    switch back to it writes them again (:func:`held_by`).
    """
    out = {"target": target_id, "scope": partial["scope"], "services": partial["services"],
           "back": partial["back"], "kept": partial["kept"]}
    if (partial.get("images_file") or {}).get("services"):
        out["images_file"] = dict(partial["images_file"]["services"])
    return out


def held_by(record: dict[str, t.Any]) -> dict[str, str]:
    """What the collection's images file holds in a release (pins: compose_files): only a mixed release holds anything."""
    return dict((record.get("mixed") or {}).get("images_file") or {})


def changes(partial: dict[str, t.Any]) -> bool:
    back = partial.get("back") or {}
    return bool(back.get("images") or back.get("env") or back.get("files") or (partial.get("artifacts") or {}).get("put_back")
                or (partial.get("images_file") or {}).get("write"))
