# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pinning compose files by digest without disturbing anything else (private to the collection).

ruamel.yaml only *locates* the image scalars (their byte offsets in the source);
the rewrite inserts ``@sha256:…`` (and ``:latest`` where no tag is given) into the
original text, so comments, ordering, anchors, quoting and interpolation outside
the image scalars stay byte-for-byte as the user wrote them. An anchored image is
pinned once, at its definition; every alias follows.
"""

from __future__ import annotations

import re
import typing as t
from dataclasses import dataclass, field

try:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    HAS_RUAMEL = True
except ImportError:  # the module reports it with missing_required_lib
    HAS_RUAMEL = False

    class YAMLError(Exception):  # type: ignore[no-redef]
        """Stand-in so that except clauses work without ruamel.yaml."""

from ansible_collections.selfhost.rollback.plugins.module_utils._images import split_reference

DIGEST_IN_REF = re.compile(r"@sha256:[0-9a-f]{64}$")
WHOLE_VARIABLE = re.compile(r"^\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)$")
ANCHOR_OR_TAG = re.compile(r"^(?:[&!][^\s]*\s+)+")


class PinError(Exception):
    """A compose file that cannot be pinned; the message is for the operator."""


# --------------------------------------------------------------------------- interpolation


def interpolate(value: str, env: t.Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``, ``${VAR:+alt}``, ``$VAR``, ``$$``."""
    out: list[str] = []
    i = 0
    while i < len(value):
        char = value[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        nxt = value[i + 1:i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(value, i + 2)
            out.append(_expand(value[i + 2:end], env))
            i = end + 1
        else:
            match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", value[i + 1:])
            if not match:
                out.append("$")
                i += 1
                continue
            out.append(env.get(match.group(0), ""))
            i += 1 + len(match.group(0))
    return "".join(out)


def _closing_brace(value: str, start: int) -> int:
    depth = 1
    i = start
    while i < len(value):
        if value.startswith("${", i):
            depth += 1
            i += 2
            continue
        if value[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise PinError(f"unterminated ${{...}} in {value!r}")


def _expand(expr: str, env: t.Mapping[str, str]) -> str:
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?(.*)$", expr, re.S)
    if not match:
        raise PinError(f"invalid interpolation ${{{expr}}}")
    name, op, rest = match.group(1), match.group(2), match.group(3)
    value = env.get(name)
    if op is None:
        if rest:
            raise PinError(f"invalid interpolation ${{{expr}}}")
        return value or ""
    unset = value is None or (op.startswith(":") and value == "")
    kind = op[-1]
    if kind == "-":
        return interpolate(rest, env) if unset else t.cast(str, value)
    if kind == "?":
        if unset:
            raise PinError(f"variable {name} is required: {interpolate(rest, env) or 'not set'}")
        return t.cast(str, value)
    return "" if unset else interpolate(rest, env)  # "+"


# --------------------------------------------------------------------------- locating image scalars


@dataclass
class ImageNode:
    """One ``image:`` scalar in the source, shared by every service that reaches it."""

    services: list[str]
    value: str
    start: int
    end: int
    line: int
    style: str | None
    anchored: bool = False


@dataclass
class ComposeShape:
    nodes: list[ImageNode] = field(default_factory=list)
    without_image: list[str] = field(default_factory=list)  # services with only build:
    has_build: list[str] = field(default_factory=list)


def _mapping_get(node: t.Any, key: str) -> t.Any:
    """``key`` of a mapping node, following ``<<`` merges as YAML does (own keys win, then merges in order)."""
    if not isinstance(node, MappingNode):
        return None
    merges = []
    for key_node, value_node in node.value:
        if key_node.value == key:
            return value_node
        if key_node.value == "<<":
            merges += value_node.value if isinstance(value_node, SequenceNode) else [value_node]
    for merged in merges:
        found = _mapping_get(merged, key)
        if found is not None:
            return found
    return None


def locate_images(text: str, filename: str = "compose file") -> ComposeShape:
    """Find the image scalars of every service in one compose file."""
    if not HAS_RUAMEL:
        raise PinError("ruamel.yaml is required")
    try:
        root = YAML(typ="rt").compose(text)
    except YAMLError as exc:
        raise PinError(f"{filename} is not valid YAML ({' '.join(str(exc).split())}); fix it and run again") from exc
    shape = ComposeShape()
    if root is None:
        return shape
    if not isinstance(root, MappingNode):
        raise PinError(f"{filename} is not a compose file: its top level is not a mapping")
    services = _mapping_get(root, "services")
    if services is None:
        return shape
    if not isinstance(services, MappingNode):
        raise PinError(f"{filename}: 'services' is not a mapping")
    by_id: dict[int, ImageNode] = {}
    for key_node, service_node in services.value:
        name = str(key_node.value)
        if _mapping_get(service_node, "build") is not None:
            shape.has_build.append(name)
        image = _mapping_get(service_node, "image")
        if image is None:
            shape.without_image.append(name)
            continue
        if not isinstance(image, ScalarNode):
            raise PinError(f"{filename}: the image of service {name} (line {image.start_mark.line + 1}) is not a string")
        known = by_id.get(id(image))
        if known is not None:
            known.services.append(name)
            continue
        start = image.start_mark.index
        prefix = ANCHOR_OR_TAG.match(text[start:image.end_mark.index])
        anchored = bool(prefix and "&" in prefix.group(0))
        if prefix:
            start += len(prefix.group(0))
        node = ImageNode(services=[name], value=str(image.value), start=start, end=image.end_mark.index,
                         line=image.start_mark.line + 1, style=image.style, anchored=anchored)
        by_id[id(image)] = node
        shape.nodes.append(node)
    shape.nodes.sort(key=lambda n: n.start)
    return shape


# --------------------------------------------------------------------------- planning and rewriting


@dataclass
class Edit:
    """Insert ``insert`` at byte ``offset`` of the source; the image goes from ``before`` to ``after``."""

    services: list[str]
    line: int
    offset: int
    insert: str
    before: str
    after: str


def insertion_point(text: str, node: ImageNode) -> int | None:
    """Where the pin goes: after a plain scalar, before a quoted scalar's closing quote. None: not textually safe."""
    source = text[node.start:node.end]
    if "\n" in source:
        return None
    if node.style is None:
        return node.end if source == node.value else None
    if node.style in ("'", '"') and len(source) >= 2 and source[0] == node.style and source[-1] == node.style:
        return node.end - 1
    return None


def pin_suffix(resolved_ref: str, digest: str) -> str:
    """What to append to an image so that it reads ``name:tag@digest`` once interpolated."""
    _name, tag, _digest = split_reference(resolved_ref)
    return ("" if tag else ":latest") + "@" + digest


def is_whole_variable(value: str) -> bool:
    return bool(WHOLE_VARIABLE.match(value.strip()))


def apply_edits(text: str, edits: list[Edit]) -> str:
    for edit in sorted(edits, key=lambda e: e.offset, reverse=True):
        text = text[:edit.offset] + edit.insert + text[edit.offset:]
    return text


def unpin_text(text: str, filename: str = "compose file") -> str:
    """The file with the digest removed from every image scalar (anchored ones too): what pinning added,
    taken away, so that a new tag or variable takes effect. Everything else stays byte for byte."""
    cuts = []
    for node in locate_images(text, filename).nodes:
        found = re.search(r"@sha256:[0-9a-f]{64}", text[node.start:node.end])
        if found:
            cuts.append((node.start + found.start(), node.start + found.end()))
    for start, end in sorted(cuts, reverse=True):
        text = text[:start] + text[end:]
    return text


def plan_file(text: str, filename: str, env: t.Mapping[str, str],
              resolve: t.Callable[[ImageNode, str], dict[str, t.Any]]) -> dict[str, t.Any]:
    """Decide every image of one file.

    ``resolve(node, ref)`` returns ``{"digest": str|None, "image_id": str|None, "skip": str|None}``
    or raises PinError when the image must be pinned and cannot be resolved.
    """
    shape = locate_images(text, filename)
    edits: list[Edit] = []
    images: list[dict[str, t.Any]] = []
    warnings: list[str] = []
    for node in shape.nodes:
        entry: dict[str, t.Any] = {"services": list(node.services), "line": node.line, "image": node.value}
        images.append(entry)
        try:
            ref = interpolate(node.value, env)
        except PinError as exc:
            raise PinError(f"{filename} line {node.line} (service {', '.join(node.services)}): {exc}") from exc
        entry["resolved"] = ref
        if DIGEST_IN_REF.search(node.value) or DIGEST_IN_REF.search(ref):
            entry["status"] = "already pinned"
            continue
        if is_whole_variable(node.value):
            entry["status"] = "not pinned: image comes from a variable"
            warnings.append(
                f"{filename} line {node.line}: the image of {', '.join(node.services)} comes entirely from {node.value.strip()}; "
                "it is recorded by digest in the release but not pinned in the file (a pin there would outlive a change "
                "of the variable); set the variable to name:tag@sha256:... to pin it"
            )
            continue
        found = resolve(node, ref)
        entry["image_id"] = found.get("image_id")
        if found.get("skip"):
            entry["status"] = "not pinned: " + found["skip"]
            continue
        digest = found.get("digest")
        if not digest:
            entry["status"] = "not pinned: no registry digest (built or loaded locally)"
            warnings.append(
                f"{filename} line {node.line}: {ref} (service {', '.join(node.services)}) has no registry digest, "
                f"so it stays unpinned in the file; the release records it by image ID {found.get('image_id')} "
                "and the image archive keeps it restorable (do not opt out of the archive for this app)"
            )
            continue
        offset = insertion_point(text, node)
        if offset is None:
            entry["status"] = "not pinned: the scalar's style cannot be rewritten in place"
            warnings.append(f"{filename} line {node.line}: the image of {', '.join(node.services)} is a multi-line or block scalar; "
                            f"write it on one line to have it pinned (digest {digest})")
            continue
        suffix = pin_suffix(ref, digest)
        entry["status"] = "pinned"
        entry["digest"] = digest
        entry["after"] = node.value + suffix
        edits.append(Edit(services=list(node.services), line=node.line, offset=offset, insert=suffix,
                          before=node.value, after=node.value + suffix))
    return {"file": filename, "before": text, "after": apply_edits(text, edits), "edits": edits,
            "images": images, "warnings": warnings, "without_image": shape.without_image, "has_build": shape.has_build}
