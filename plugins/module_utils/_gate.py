# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollback compatibility gate and migration notes: pure logic over ledger records.

Every function takes records (releases, backup sets, live state) and returns findings;
reading the host happens in the modules. Each finding is a sentence with its numbers.
"""

from __future__ import annotations

import datetime
import typing as t

READY = "ready"
NEEDS_DATA_RESTORE = "needs_data_restore"
BLOCKED = "blocked"


def as_number(value: t.Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def schema_relation(live: t.Any, target: t.Any, additive: list[str]) -> tuple[str, str]:
    """How the target's code relates to the live schema: same, compatible, older_code, newer_code, unknown."""
    if live is None or target is None:
        return "unknown", "no schema version recorded (declare schema_probe to compare schemas)"
    if str(live) == str(target):
        return "same", f"the live schema {live} is the one release was recorded on"
    live_n, target_n = as_number(live), as_number(target)
    if live_n is None or target_n is None:
        return "older_code", f"the live schema {live} differs from the target's {target}"
    if live_n < target_n:
        return "newer_code", f"the live schema {live} is older than the target's {target}; its migrations run forward on start"
    steps = [str(v) for v in range(target_n + 1, live_n + 1)]
    blocking = [s for s in steps if s not in {str(a) for a in additive}]
    if not blocking:
        return "compatible", (f"the live schema {live} is newer than the target's {target}, "
                              f"but every step ({', '.join(steps)}) is declared additive")
    return "older_code", (f"the live schema {live} is newer than the target's {target} and step "
                          f"{', '.join(blocking)} is not additive: the target's code cannot run on today's data")


def pick_target(releases: list[dict[str, t.Any]], release_id: str | None) -> dict[str, t.Any] | None:
    """The release record with ``release_id`` (resolve "previous" with ``_operation.resolve_target`` first)."""
    if release_id is None:
        return None
    return next((r for r in releases if r.get("release_id") == release_id), None)


def restore_candidates(sets: list[dict[str, t.Any]], target: dict[str, t.Any], releases: list[dict[str, t.Any]],
                       additive: list[str], under_target_only: bool = False) -> list[dict[str, t.Any]]:
    """Complete sets whose data the target's code can run on, newest first.

    A set qualifies when it was taken under the target, or (unless ``under_target_only``, for a
    target whose schema is unknown) under another release whose recorded schema the target can
    run on (same, or reached by additive steps only).
    """
    schema_of = {r.get("release_id"): r.get("schema_version") for r in releases}
    out = []
    for entry in sets:
        manifest = entry.get("manifest") or {}
        if manifest.get("release_id") == target.get("release_id"):
            out.append(entry)
            continue
        if under_target_only:
            continue
        schema = manifest.get("schema_version", schema_of.get(manifest.get("release_id")))
        relation, _why = schema_relation(schema, target.get("schema_version"), additive)
        if relation in ("same", "compatible"):
            out.append(entry)
    return sorted(out, key=lambda e: (e.get("manifest") or {}).get("created_at") or "", reverse=True)


def lock_violations(services: dict[str, dict[str, t.Any]], groups: list[list[str]]) -> list[str]:
    """Groups of services that must run the same version but would not in ``services``."""
    problems = []
    for group in groups:
        missing = [s for s in group if s not in services]
        if missing:
            problems.append(f"version lock {group}: the target release has no service {', '.join(missing)}")
            continue
        versions = {s: image_version(services[s]) for s in group}
        if len(set(versions.values())) > 1:
            shown = ", ".join(f"{s} {v}" for s, v in sorted(versions.items()))
            problems.append(f"version lock {group} is violated: {shown}; locked services must run the same version")
    return problems


def image_version(service: dict[str, t.Any]) -> str:
    """The tag of a service's image reference, else its image id (short)."""
    ref = str(service.get("image_ref") or "").split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        return last.split(":", 1)[1]
    return (service.get("image_id") or "untagged").replace("sha256:", "")[:12]


def config_drift(target: dict[str, str], live: dict[str, str]) -> dict[str, list[str]]:
    """Keys only in the target (missing now), only live (added since), and with other values."""
    return {
        "missing_now": sorted(set(target) - set(live)),
        "added_since": sorted(set(live) - set(target)),
        "changed": sorted(k for k in set(target) & set(live) if target[k] != live[k]),
    }


def runtime_findings(target: dict[str, t.Any], live: dict[str, t.Any]) -> list[tuple[str, str]]:
    """(level, sentence) for engine API and Compose versions; level is ok, warn or block."""
    findings = []
    t_api, l_api = _version_tuple(target.get("api_version")), _version_tuple(live.get("api_version"))
    if t_api and l_api and l_api < t_api:
        findings.append(("block", f"the engine API is {live.get('api_version')} but the target was recorded on "
                                  f"{target.get('api_version')}; upgrade the Docker Engine first"))
    elif t_api and l_api:
        findings.append(("ok", f"engine API {live.get('api_version')} (target recorded on {target.get('api_version')})"))
    t_compose, l_compose = _version_tuple(target.get("compose_version")), _version_tuple(live.get("compose_version"))
    if t_compose and l_compose and t_compose[0] != l_compose[0]:
        findings.append(("block", f"Compose is {live.get('compose_version')} but the target was recorded with "
                                  f"{target.get('compose_version')} (another major version)"))
    elif t_compose and l_compose and l_compose < t_compose:
        findings.append(("warn", f"Compose {live.get('compose_version')} is older than the "
                                 f"{target.get('compose_version')} the target was recorded with"))
    elif t_compose and l_compose:
        findings.append(("ok", f"Compose {live.get('compose_version')} (target recorded with {target.get('compose_version')})"))
    return findings


def _version_tuple(value: t.Any) -> tuple[int, ...] | None:
    if not value:
        return None
    parts = []
    for piece in str(value).lstrip("v").split("-", 1)[0].split("."):
        number = as_number(piece)
        if number is None:
            break
        parts.append(number)
    return tuple(parts) or None


def age_seconds(created_at: str | None, now: datetime.datetime) -> int | None:
    if not created_at:
        return None
    moment = datetime.datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return int((now - moment).total_seconds())


def human_age(seconds: int | None) -> str:
    if seconds is None:
        return "unknown age"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def window_closes(entry: dict[str, t.Any], sets: list[dict[str, t.Any]], keep_last: int | None,
                  keep_within_s: int | None) -> dict[str, t.Any]:
    """When retention will remove this restore point: after how many more sets, or at what time."""
    newer = [s for s in sets if (s.get("manifest") or {}).get("created_at", "") > (entry.get("manifest") or {}).get("created_at", "")]
    out: dict[str, t.Any] = {"sets_newer": len(newer)}
    if keep_last:
        out["removed_after_sets"] = max(keep_last - len(newer) - 1, 0) + 1
    if keep_within_s:
        created = datetime.datetime.strptime(entry["manifest"]["created_at"], "%Y-%m-%dT%H:%M:%SZ")
        out["removed_after"] = (created + datetime.timedelta(seconds=keep_within_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def decide(checks: list[dict[str, t.Any]]) -> str:
    levels = {c["level"] for c in checks}
    if "block" in levels:
        return BLOCKED
    if "restore" in levels:
        return NEEDS_DATA_RESTORE
    return READY


def render_table(checks: list[dict[str, t.Any]]) -> list[str]:
    """A short fixed-width table for the task output."""
    marks = {"ok": "ok", "warn": "WARN", "restore": "RESTORE", "block": "BLOCK"}
    width = max([len(c["check"]) for c in checks] + [5])
    lines = [f"{'check'.ljust(width)}  {'result'.ljust(7)}  detail"]
    for check in checks:
        lines.append(f"{check['check'].ljust(width)}  {marks[check['level']].ljust(7)}  {check['detail']}")
    return lines


# --------------------------------------------------------------------------- the gate's checks
#
# rollback_check gathers the facts (releases, live state, backup sets, what a restore would
# discard, free space) and each function below turns some of them into one check, ``check()``'s
# shape. Whether the data must come back is decided in two steps: ``schema_check`` says when no
# backup set has to be looked at (None when the data may have to come back), then, given the
# candidates, the chosen set and what restoring it would discard, ``restore_check`` says which.


def check(level: str, name: str, detail: str, **data: t.Any) -> dict[str, t.Any]:
    return {"check": name, "level": level, "detail": detail, **data}


def release_check(target_id: str, target_is_live: bool) -> dict[str, t.Any] | None:
    """The ``release`` check, only when the target is what runs now."""
    return check("ok", "release", f"{target_id} is what runs now; nothing to roll back") if target_is_live else None


def images_check(rows: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    """Where each image of the target is (``rows``, each with ``service``, ``ref`` and ``source``); a missing one blocks."""
    missing = [r for r in rows if r["source"] in ("missing", "unknown")]
    sources = ", ".join(f"{r['service']} {r['source']}" for r in rows)
    if missing:
        names = ", ".join(f"{r['service']} ({r['ref']})" for r in missing)
        return check("block", "images", f"not available anywhere: {names}; they are not on this engine, not in the image archive "
                                        "and not pullable", rows=rows)
    return check("ok", "images", f"all available: {sources}", rows=rows)


def part_check(partial: dict[str, t.Any], services: list[str]) -> dict[str, t.Any]:
    """A partial rollback's plan (``_partial.plan`` or ``_partial.artifacts_part``) as the ``part`` check."""
    what = f"scope {partial['scope']}" + (f", services {', '.join(partial['services'] or services)}" if services else "")
    if partial["blocking"]:
        return check("block", "part", f"{what}: " + "; ".join(partial["blocking"]))
    told = partial["partners"] + partial["actions"] + partial.get("by_hand", [])
    return check("ok" if not partial.get("by_hand") else "warn", "part", f"{what}: " + ("; ".join(told) or "nothing differs"))


def data_unknown(relation: str, target_is_live: bool) -> bool:
    """Whether the schemas cannot tell if the target's code reads today's data (and there is something to roll back).

    Unknown is not safe: data that changed since a set taken under the target comes back with
    the code, unless the operator keeps it (keep_data).
    """
    return relation == "unknown" and not target_is_live


def schema_check(relation: str, why: str, schema: dict[str, t.Any], target_id: str, unknown: bool, keep_data: bool,
                 scope: str = "all", back_images: list[str] | None = None) -> dict[str, t.Any] | None:
    """The ``schema`` check when no backup set has to be looked at; None when the data may have to come back.

    ``back_images`` is, for a partial rollback, the services whose images come back (None for a
    whole rollback): a partial rollback never restores data, so it blocks where the data may have
    to come back. ``schema`` is the check's data (``live`` and ``target`` schema versions).
    """
    may_need_data = relation == "older_code" or (unknown and not keep_data)
    if back_images is not None and (scope in ("config", "artifacts") or not back_images):
        return check("ok", "schema", f"the code stays as it runs ({'only ' + scope if scope != 'all' else 'no image'} "
                     "comes back), so the data stays too", **schema)
    if back_images is not None and may_need_data:
        return check("block", "schema", f"{why}; a partial rollback leaves the data as it is, so "
                     f"{', '.join(back_images)} cannot go back to code that may need older data: roll back the "
                     "whole app (without rollback_services and rollback_scope)"
                     + (", or keep today's data with -e rollback_keep_data=true" if unknown else ""), **schema)
    if may_need_data:
        return None
    if unknown:
        return check("warn", "schema", f"{why}; today's data is kept as asked (keep_data), although whether "
                     f"{target_id} can read it is unknown", keep_data=True, **schema)
    return check("ok" if relation != "unknown" else "warn", "schema", why, **schema)


def choose_set(candidates: list[dict[str, t.Any]], verified: t.Callable[[dict[str, t.Any]], bool]) -> dict[str, t.Any] | None:
    """The set that would bring the data back: the newest verified candidate (``restore_candidates``)."""
    return next((entry for entry in candidates if verified(entry)), None)


def restore_check(why: str, schema: dict[str, t.Any], target_id: str, unknown: bool, candidates: list[dict[str, t.Any]],
                  chosen: dict[str, t.Any] | None, loss: dict[str, t.Any] | None,
                  summary: dict[str, t.Any] | None) -> tuple[dict[str, t.Any], dict[str, t.Any] | None]:
    """The ``schema`` check when the data may have to come back, and the restore set (None when the data stays).

    ``chosen`` is ``choose_set``'s answer; ``loss`` what restoring it would discard (the restore
    module's ``lost``) and ``summary`` the set's summary (``_sets.summarize``), both None without a
    chosen set. With an unknown schema, data that did not change since the chosen set stays.
    """
    if chosen is None or loss is None or summary is None:
        if unknown:
            return check("warn", "schema", f"{why}, and no verified backup set was taken under {target_id}: "
                         "today's data stays, and whether that release can read it is unknown", **schema), None
        unverified = [e["set_id"] for e in candidates]
        return check("block", "schema", f"{why}, and no verified backup set taken under {target_id} (or on a schema it runs on) exists"
                     + (f"; {', '.join(unverified)} exist but did not pass verification" if unverified else "")
                     + "; the data cannot be brought back with the code", **schema), None
    taken = f"taken {human_age(loss['seconds'])} ago under {summary['release_id']}"
    if unknown and not loss["changed"]:
        return check("warn", "schema", f"{why}; the data has not changed since verified set "
                     f"{chosen['set_id']} ({taken}), so it stays", **schema), None
    lead = (f"{why}, so whether {target_id} can read today's data is unknown, and the data changed since "
            f"verified set {chosen['set_id']} ({taken}); it comes back with the code (keep today's data "
            "instead with keep_data, -e rollback_keep_data=true)") if unknown else \
        f"{why}; restore verified set {chosen['set_id']} ({taken})"
    restore_set = {"set_id": chosen["set_id"], "created_at": summary["created_at"], "age_s": loss["seconds"],
                   "release_id": summary["release_id"], "schema_version": summary["schema_version"], "bytes": summary["bytes"]}
    return check("restore", "schema", f"{lead}; lost: {loss['summary']}", **schema), restore_set


def window_check(entry: dict[str, t.Any], sets: list[dict[str, t.Any]], keep_last: int | None,
                 keep_within_s: int | None) -> dict[str, t.Any]:
    """When the retention rules will prune the restore point; warns when the next backup does."""
    window = window_closes(entry, sets, keep_last, keep_within_s)
    parts = []
    if "removed_after_sets" in window:
        parts.append(f"pruned after {window['removed_after_sets']} more backup(s)")
    if "removed_after" in window:
        parts.append(f"pruned after {window['removed_after']}")
    return check("warn" if window.get("removed_after_sets") == 1 else "ok", "window",
                 "restore point " + ("; ".join(parts) if parts else "kept until retention rules are given"), **window)


def runtime_check(target: dict[str, t.Any], live: dict[str, t.Any]) -> dict[str, t.Any]:
    """The ``runtime`` check: the worst of ``runtime_findings``."""
    findings = runtime_findings(target, live)
    worst = "block" if any(f[0] == "block" for f in findings) else "warn" if any(f[0] == "warn" for f in findings) else "ok"
    return check(worst, "runtime", "; ".join(f[1] for f in findings) or "no runtime recorded")


def locks_check(services: dict[str, dict[str, t.Any]], groups: list[list[str]], partial: bool = False) -> dict[str, t.Any] | None:
    """The ``version locks`` check (None without locks); a partial plan has already added the partners, so it is not judged again."""
    violations = [] if partial else lock_violations(services, groups)
    if violations:
        return check("block", "version locks", "; ".join(violations))
    if groups:
        return check("ok", "version locks", f"{len(groups)} group(s) run one version each in the target")
    return None


def drift_check(target: dict[str, str], live: dict[str, str]) -> dict[str, t.Any]:
    """The ``config drift`` check from the two config fingerprints (keys only in the sentences)."""
    drift = config_drift(target, live)
    if not any(drift.values()):
        return check("ok", "config drift", "same keys and values as the target", **drift)
    parts = []
    if drift["missing_now"]:
        parts.append(f"the target had {', '.join(drift['missing_now'])}, missing now: put them back in the env file or it may not boot")
    if drift["added_since"]:
        parts.append(f"added since: {', '.join(drift['added_since'])}")
    if drift["changed"]:
        parts.append(f"other values now: {', '.join(drift['changed'])}")
    return check("warn", "config drift", "; ".join(parts), **drift)


def restore_bytes(entry: dict[str, t.Any], margin: float) -> int:
    """Bytes a restore of ``entry`` needs: its unpacked size times ``margin``."""
    return int(sum(int(i.get("raw_bytes") or i.get("bytes") or 0) for i in entry["manifest"].get("items", [])) * margin)


def space_check(needed: int | None, path: str = "", free: int = 0) -> dict[str, t.Any]:
    """The ``space`` check: ``needed`` bytes (None when no data comes back) against ``free`` bytes under ``path``."""
    if needed is None:
        return check("ok", "space", "no data restore needed")
    detail = f"{free // 1048576} MB free under {path}, {needed // 1048576} MB needed to restore"
    if free < needed:
        return check("block", "space", f"not enough space: {detail}; free space before rolling back", free=free, needed=needed)
    return check("ok", "space", detail, free=free, needed=needed)


def verdict_of(checks: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    """The verdict of ``checks`` with the sentences that are not plain ok (``reasons``) and those that block."""
    verdict = decide(checks)
    return {"verdict": verdict, "outcome": verdict,
            "reasons": [f"{c['check']}: {c['detail']}" for c in checks if c["level"] != "ok"],
            "blocking": [f"{c['check']}: {c['detail']}" for c in checks if c["level"] == "block"]}


# --------------------------------------------------------------------------- migration notes


def image_changes(before: dict[str, t.Any], after: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        old_ref = (old or {}).get("pinned_ref") or (old or {}).get("image_ref")
        new_ref = (new or {}).get("pinned_ref") or (new or {}).get("image_ref")
        if old is None:
            changes.append({"service": name, "change": "added", "after": new_ref})
        elif new is None:
            changes.append({"service": name, "change": "removed", "before": old_ref})
        elif old.get("image_id") != new.get("image_id") or old_ref != new_ref:
            changes.append({"service": name, "change": "changed", "before": old_ref, "after": new_ref,
                            "before_version": image_version(old), "after_version": image_version(new)})
    return changes


def note_between(before: dict[str, t.Any], after: dict[str, t.Any], additive: list[str]) -> dict[str, t.Any]:
    """What changed from release ``before`` to release ``after``, and how to reverse it."""
    drift = config_drift(before.get("config_fingerprint") or {}, after.get("config_fingerprint") or {})
    relation, why = schema_relation(after.get("schema_version"), before.get("schema_version"), additive)
    volumes_before, volumes_after = set(before.get("volumes") or {}), set(after.get("volumes") or {})
    runtime_b, runtime_a = before.get("runtime") or {}, after.get("runtime") or {}
    if relation in ("same", "compatible", "newer_code", "unknown"):
        reverse = "roll back the images and compose files; the data can stay"
        if relation == "unknown":
            reverse = "roll back the images and compose files; no schema is declared, so check the data by hand"
    else:
        reverse = (f"restore the data from a backup set taken under {before.get('release_id')} together with the "
                   "code: its code cannot run on the new schema, and anything written since that set is lost")
    return {
        "from_release": before.get("release_id"),
        "to_release": after.get("release_id"),
        "schema": {"before": before.get("schema_version"), "after": after.get("schema_version"),
                   "reversible_without_data": relation in ("same", "compatible", "newer_code"), "why": why},
        "config": {"added": drift["added_since"], "removed": drift["missing_now"], "changed": drift["changed"]},
        "images": image_changes(before.get("services") or {}, after.get("services") or {}),
        "volumes": {"added": sorted(volumes_after - volumes_before), "removed": sorted(volumes_before - volumes_after)},
        "runtime": {k: {"before": runtime_b.get(k), "after": runtime_a.get(k)}
                    for k in sorted(set(runtime_b) | set(runtime_a)) if runtime_b.get(k) != runtime_a.get(k)},
        "how_to_reverse": reverse,
    }


def note_markdown(note: dict[str, t.Any]) -> str:
    schema = note["schema"]
    lines = [
        f"# Migration note: {note['from_release']} → {note['to_release']}",
        "",
        f"- App: {note.get('app')}",
        f"- Written: {note.get('written_at')}",
        f"- Backup set: {note.get('backup_set') or 'none'}",
        "",
        "## Schema",
        f"{schema['before']} → {schema['after']}: {schema['why']}.",
        "",
        "## How to reverse",
        note["how_to_reverse"] + ".",
        "",
        "## Images",
    ]
    lines += [f"- {c['service']}: {c['change']} {c.get('before') or ''} → {c.get('after') or ''}".rstrip()
              for c in note["images"]] or ["- no image changed"]
    lines += ["", "## Configuration keys (values are never recorded)"]
    config = note["config"]
    lines += [f"- added: {', '.join(config['added']) or 'none'}",
              f"- removed: {', '.join(config['removed']) or 'none'}",
              f"- changed: {', '.join(config['changed']) or 'none'}"]
    lines += ["", "## Volumes",
              f"- added: {', '.join(note['volumes']['added']) or 'none'}",
              f"- removed: {', '.join(note['volumes']['removed']) or 'none'}"]
    if note["runtime"]:
        lines += ["", "## Runtime"] + [f"- {k}: {v['before']} → {v['after']}" for k, v in note["runtime"].items()]
    if note.get("text"):
        lines += ["", "## Operator's note", note["text"]]
    if note.get("data_loss"):
        lines += ["", "## Data written after the backup", note["data_loss"]]
    return "\n".join(lines) + "\n"
