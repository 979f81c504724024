# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore-points report: marks from ledger summaries, and one self-contained HTML page (private).

Input is what ``selfhost.rollback.ledger_info`` returns per host. Everything here is pure
(no I/O), so the marks are unit-tested and the page is the same for the same input and time.

Marks per restore point (a release):

- image: green when every image is on the engine or in the ledger's image archive; amber when
  some can only come from a registry (by digest, not kept here); red when one is nowhere.
- backup: green with a verified set the release runs on; red without.
- drill: green when the last drill of the release passed within ``stale_days``; amber when it
  is older (stale) or there was none; red when the last drill failed.
- the restore point: the worst of the three.
"""

from __future__ import annotations

import datetime
import html
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _gate

RANK = {"green": 0, "amber": 1, "red": 2}
WORDS = {"green": "ready", "amber": "attention", "red": "not restorable"}


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def worst(marks: t.Iterable[str]) -> str:
    marks = list(marks)
    return max(marks, key=lambda m: RANK[m]) if marks else "amber"


def age_s(moment: str | None, now: datetime.datetime) -> int | None:
    parsed = parse_time(moment)
    return None if parsed is None else max(int((now - parsed).total_seconds()), 0)


def human_age(seconds: int | None) -> str:
    """An age for people; a dash where none is known (a table cell)."""
    return "–" if seconds is None else _gate.human_age(seconds)


def image_mark(sources: dict[str, str]) -> tuple[str, str]:
    values = set(sources.values())
    if not sources or values & {"missing", "unknown"}:
        missing = sorted(s for s, v in sources.items() if v in ("missing", "unknown"))
        return "red", ("images missing: " + ", ".join(missing)) if missing else "no image recorded"
    if "registry" in values:
        remote = sorted(s for s, v in sources.items() if v == "registry")
        return "amber", "only in the registry: " + ", ".join(remote)
    where = "archive" if values == {"archive"} else "engine" if values == {"local"} else "engine and archive"
    return "green", f"all images on this host ({where})"


def backup_mark(sets: list[dict[str, t.Any]]) -> tuple[str, str, dict[str, t.Any] | None]:
    verified = [s for s in sets if s.get("verified")]
    if not verified:
        return "red", "no verified backup set" + (f" ({len(sets)} unverified)" if sets else ""), None
    newest = sorted(verified, key=lambda s: s.get("created_at") or "")[-1]
    return "green", f"{newest['set_id']} verified", newest


def drill_mark(drills: list[dict[str, t.Any]], now: datetime.datetime, stale_days: float) -> tuple[str, str, dict[str, t.Any] | None]:
    """The mark from the release's drills (oldest first) and the one that decides it."""
    if not drills:
        return "amber", "never drilled", None
    last = drills[-1]
    if not last.get("passed"):
        why = (last.get("failures") or ["a check failed"])[0]
        return "red", f"last drill failed: {why}", last
    age = age_s(last.get("finished_at") or last.get("started_at"), now)
    if age is None or age > stale_days * 86400:
        return "amber", f"last passing drill is {human_age(age)} old (stale after {stale_days:g} days)", last
    return "green", f"drill passed {human_age(age)} ago", last


def releases_left(release: dict[str, t.Any], releases: list[dict[str, t.Any]], keep_releases: int) -> int | None:
    """How many more releases may be recorded before this one's window closes (None for the current release)."""
    if release.get("current"):
        return None
    newer = [r for r in releases if (r.get("recorded_at") or "") > (release.get("recorded_at") or "")]
    return max(keep_releases - len(newer), 0)


def window(release: dict[str, t.Any], releases: list[dict[str, t.Any]], keep_releases: int) -> str:
    left = releases_left(release, releases, keep_releases)
    if left is None:
        return "current release"
    if left <= 0:
        return "closed: its images are past the archive's retention"
    return f"closes after {left} more release{'s' if left != 1 else ''}"


def restore_points(hosts: list[dict[str, t.Any]], now: datetime.datetime, stale_days: float, keep_releases: int,
                   missing_hosts: t.Iterable[str] = ()) -> dict[str, t.Any]:
    """The report's model: hosts → apps → restore points with marks, evidence and timeline events."""
    out_hosts = []
    for host in sorted(hosts, key=lambda h: h.get("host") or ""):
        apps = []
        for app in sorted(host.get("apps") or [], key=lambda a: a.get("name") or ""):
            apps.append(_app_model(app, now, stale_days, keep_releases))
        recorded = {a["name"] for a in apps}
        for name in sorted(set(host.get("declared") or []) - recorded):  # in the inventory, nothing in the ledger
            apps.append({"name": name, "current_release": None, "mark": "red", "rollback_to": None,
                         "note": "declared in the inventory, but the ledger holds nothing for it: no release, no backup "
                                 "(run selfhost.rollback.pre_upgrade)",
                         "restore_points": [], "timeline": [], "interrupted_drill": None})
        apps.sort(key=lambda a: a["name"] or "")
        mark = worst(a["mark"] for a in apps) if apps else "amber"
        out_hosts.append({"host": host.get("host"), "mark": mark, "apps": apps, "collected_at": host.get("collected_at"),
                          "note": "" if apps else "no app in this host's ledger"})
    for name in sorted(set(missing_hosts)):
        out_hosts.append({"host": name, "mark": "red", "apps": [], "collected_at": None,
                          "note": "no ledger collected (host unreachable or the play failed there)"})
    counts = {m: sum(1 for h in out_hosts for a in h["apps"] for p in a["restore_points"] if p["mark"] == m) for m in RANK}
    return {"format": 1, "generated_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "stale_days": stale_days,
            "keep_releases": keep_releases, "hosts": out_hosts, "counts": counts,
            "missing": sum(1 for h in out_hosts if h["collected_at"] is None and not h["apps"] and h["mark"] == "red"),
            "mark": worst(h["mark"] for h in out_hosts) if out_hosts else "amber"}


def _app_model(app: dict[str, t.Any], now: datetime.datetime, stale_days: float, keep_releases: int) -> dict[str, t.Any]:
    releases = sorted(app.get("releases") or [], key=lambda r: (r.get("recorded_at") or "", r.get("release_id") or ""))
    drills = sorted(app.get("drills") or [], key=lambda d: d.get("started_at") or "")
    sets = app.get("sets") or []
    points = []
    for release in reversed(releases):
        rid = release.get("release_id")
        usable = [s for s in sets if s.get("release_id") == rid]
        own_drills = [d for d in drills if d.get("release_id") == rid]
        marks = {}
        marks["image"], image_text = image_mark(release.get("images") or {})
        marks["backup"], backup_text, newest = backup_mark(usable)
        marks["drill"], drill_text, last = drill_mark(own_drills, now, stale_days)
        passing = [d for d in own_drills if d.get("passed")]
        evidence = passing[-1] if passing else None
        points.append({
            "release_id": rid, "recorded_at": release.get("recorded_at"), "current": bool(release.get("current")),
            "schema_version": release.get("schema_version"), "version": release.get("version"),
            "images": release.get("images") or {}, "marks": marks, "mark": worst(marks.values()),
            "why": {"image": image_text, "backup": backup_text, "drill": drill_text},
            "backup_set": newest["set_id"] if newest else None,
            "backup_age_s": age_s(newest.get("created_at"), now) if newest else None,
            "last_drill": _drill_view(last) if last else None,
            "last_passing_drill": _drill_view(evidence) if evidence else None,
            "evidence_age_s": age_s(evidence.get("finished_at"), now) if evidence else None,
            "drills": len(own_drills),
            "window": window(release, releases, keep_releases),
            "releases_left": releases_left(release, releases, keep_releases),
        })
    # "previous" has one meaning, _operation's (ledger_info reports it as previous_release)
    previous = next((p for p in points if p["release_id"] == app.get("previous_release")), None)
    decisive = previous or (points[0] if points else None)
    events = ([{"kind": "release", "at": r.get("recorded_at"), "label": r.get("version") or r.get("release_id"),
                "current": bool(r.get("current"))} for r in releases]
              + [{"kind": "backup", "at": s.get("created_at"), "label": s.get("set_id"), "ok": bool(s.get("verified"))} for s in sets]
              + [{"kind": "drill", "at": d.get("started_at"), "label": d.get("drill_id"), "ok": bool(d.get("passed"))} for d in drills])
    verified = sorted((s for s in sets if s.get("verified")), key=lambda s: s.get("created_at") or "")
    newest = verified[-1] if verified else None
    return {"name": app.get("name"), "current_release": app.get("current_release"),
            "mark": decisive["mark"] if decisive else "red",
            "newest_verified": {"set_id": newest.get("set_id"), "age_s": age_s(newest.get("created_at"), now),
                                "bytes": newest.get("bytes")} if newest else None,
            "last_drill": _drill_view(drills[-1]) if drills else None,
            "last_drill_age_s": age_s(drills[-1].get("finished_at") or drills[-1].get("started_at"), now) if drills else None,
            "rollback_to": previous["release_id"] if previous else None,
            "note": "" if previous else "only one release recorded: nothing to roll back to yet",
            "restore_points": points, "timeline": sorted((e for e in events if e["at"]), key=lambda e: e["at"]),
            "interrupted_drill": app.get("interrupted_drill")}


def _drill_view(drill: dict[str, t.Any]) -> dict[str, t.Any]:
    timings = drill.get("timings") or {}
    return {"drill_id": drill.get("drill_id"), "passed": bool(drill.get("passed")), "finished_at": drill.get("finished_at"),
            "set_id": drill.get("set_id"),
            "timings": {k: timings.get(k) for k in ("restore_s", "boot_s", "healthy_s", "time_to_healthy_s", "total_s")}}


# --------------------------------------------------------------------------- HTML


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}h3{font-size:15px;margin:18px 0 6px}
.sub{color:#5b6475;margin-bottom:16px}.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:14px 16px;margin:12px 0}
table{border-collapse:collapse;width:100%;margin:6px 0}th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e6e9ef;vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#5b6475}
.mark{display:inline-block;min-width:64px;text-align:center;border-radius:10px;padding:1px 8px;font-size:12px;font-weight:600;color:#fff}
.green{background:#1e8e3e}.amber{background:#e8a317;color:#1d2330}.red{background:#d93025}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px;vertical-align:middle}
.small{font-size:12px;color:#5b6475}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.totals span{margin-right:14px}svg{display:block;margin:6px 0 2px}
"""


def _e(value: t.Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _mark(mark: str, text: str | None = None) -> str:
    return f'<span class="mark {_e(mark)}" title="{_e(WORDS.get(mark, mark))}">{_e(text or mark)}</span>'


def _secs(value: t.Any) -> str:
    return "–" if value is None else f"{float(value):.1f} s"


def timeline_svg(events: list[dict[str, t.Any]], now: datetime.datetime, width: int = 900) -> str:
    moments = [parse_time(e["at"]) for e in events]
    moments = [m for m in moments if m is not None]
    if not moments:
        return '<p class="small">no events yet</p>'
    start = min(moments)
    end = max(*moments, now)
    span = max((end - start).total_seconds(), 1.0)
    left, right, height = 20, width - 20, 70

    def x(at: str) -> float:
        moment = parse_time(at) or start
        return round(left + (right - left) * (moment - start).total_seconds() / span, 1)

    colors = {"green": "#1e8e3e", "red": "#d93025", "grey": "#8a93a5"}
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="timeline">',
             f'<line x1="{left}" y1="40" x2="{right}" y2="40" stroke="#aab2c0" stroke-width="2"/>']
    for event in events:
        pos = x(event["at"])
        title = f"{event['kind']} {event['label']} at {event['at']}"
        if event["kind"] == "release":
            stroke = "#1a73e8" if event.get("current") else "#5b6475"
            parts.append(f'<g><title>{_e(title)}</title><line x1="{pos}" y1="22" x2="{pos}" y2="58" stroke="{stroke}" stroke-width="3"/>'
                         f'<text x="{pos + 3}" y="18" font-size="11" fill="{stroke}">{_e(event["label"])}</text></g>')
        elif event["kind"] == "backup":
            fill = colors["green"] if event.get("ok") else colors["grey"]
            parts.append(f'<g><title>{_e(title)}</title><rect x="{pos - 5}" y="35" width="10" height="10" fill="{fill}"/></g>')
        else:
            fill = colors["green"] if event.get("ok") else colors["red"]
            parts.append(f'<g><title>{_e(title)}</title><circle cx="{pos}" cy="58" r="6" fill="{fill}" stroke="#fff"/></g>')
    parts.append(f'<text x="{left}" y="{height - 1}" font-size="10" fill="#5b6475">{_e(start.strftime("%Y-%m-%d %H:%M"))}</text>')
    parts.append(f'<text x="{right}" y="{height - 1}" font-size="10" fill="#5b6475" text-anchor="end">now {_e(now.strftime("%Y-%m-%d %H:%M"))} UTC</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(model: dict[str, t.Any], title: str = "Restore points") -> str:
    now = parse_time(model["generated_at"]) or datetime.datetime.now(datetime.timezone.utc)
    counts = model["counts"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{_e(title)} {_mark(model['mark'])}</h1>",
           f'<div class="sub">generated {_e(model["generated_at"])} · drills older than {_e(model["stale_days"])} days are stale · '
           f'the image archive keeps {_e(model["keep_releases"])} releases</div>',
           '<div class="totals" id="totals">'
           + "".join(f'<span><span class="dot {m}"></span>{_e(m)}: <b id="count-{m}">{counts[m]}</b></span>' for m in ("green", "amber", "red"))
           + (f'<span>hosts without a ledger: <b id="count-missing">{model["missing"]}</b></span>' if model["missing"] else "")
           + "</div>"]
    for host in model["hosts"]:
        out.append(f'<h2 id="host-{_e(host["host"])}">{_e(host["host"])} {_mark(host["mark"])}</h2>')
        if host.get("note"):
            out.append(f'<p class="small">{_e(host["note"])}</p>')
        for app in host["apps"]:
            out.append(f'<div class="card" data-host="{_e(host["host"])}" data-app="{_e(app["name"])}">')
            out.append(f'<h3>{_e(app["name"])} {_mark(app["mark"])} '
                       f'<span class="small">current {_e(app["current_release"] or "–")} · rollback goes to '
                       f'{_e(app["rollback_to"] or "–")}</span></h3>')
            if app.get("note"):
                out.append(f'<p class="small">{_e(app["note"])}</p>')
            if app.get("interrupted_drill"):
                out.append(f'<p class="small">a drill is running or was interrupted: {_e(app["interrupted_drill"])}</p>')
            out.append("<table><thead><tr><th>release</th><th>restore point</th><th>image</th><th>backup</th><th>last drill</th>"
                       "<th>restore</th><th>boot</th><th>healthy</th><th>evidence age</th><th>window</th></tr></thead><tbody>")
            for point in app["restore_points"]:
                drill = point["last_drill"] or {}
                timings = drill.get("timings") or {}
                label = point["release_id"] + (" (current)" if point["current"] else "")
                if point.get("version"):
                    label = f"{point['version']} · {label}"
                out.append(
                    f'<tr data-release="{_e(point["release_id"])}" data-mark="{_e(point["mark"])}">'
                    f'<td class="mono">{_e(label)}<div class="small">schema {_e(point["schema_version"] or "–")} · '
                    f'recorded {_e(point["recorded_at"])}</div></td>'
                    f"<td>{_mark(point['mark'])}</td>"
                    f'<td>{_mark(point["marks"]["image"])}<div class="small">{_e(point["why"]["image"])}</div></td>'
                    f'<td>{_mark(point["marks"]["backup"])}<div class="small">{_e(point["why"]["backup"])}'
                    f'{" · " + _e(human_age(point["backup_age_s"])) + " old" if point["backup_age_s"] is not None else ""}</div></td>'
                    f'<td>{_mark(point["marks"]["drill"])}<div class="small">{_e(point["why"]["drill"])}</div></td>'
                    f'<td class="t-restore">{_e(_secs(timings.get("restore_s")))}</td>'
                    f'<td class="t-boot">{_e(_secs(timings.get("boot_s")))}</td>'
                    f'<td class="t-healthy">{_e(_secs(timings.get("healthy_s")))}</td>'
                    f'<td>{_e(human_age(point["evidence_age_s"]))}</td>'
                    f'<td class="small">{_e(point["window"])}</td></tr>')
            out.append("</tbody></table>")
            out.append(timeline_svg(app["timeline"], now))
            out.append('<div class="small">timeline: <b>|</b> release (blue: current) · ■ backup set (green: verified) · '
                       "● drill (green: passed, red: failed)</div></div>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- metrics (node exporter textfile)


MARK_VALUE = {"green": 0, "amber": 1, "red": 2}
METRICS = (
    ("selfhost_rollback_app_mark", "The app's restore-point mark: 0 green, 1 amber, 2 red (a declared app with nothing recorded is red)."),
    ("selfhost_rollback_restore_point_mark", "Each recorded release's restore-point mark: 0 green, 1 amber, 2 red."),
    ("selfhost_rollback_backup_age_seconds", "Age of the app's newest verified backup set."),
    ("selfhost_rollback_backup_bytes", "Stored size of the app's newest verified backup set."),
    ("selfhost_rollback_drill_passed", "Whether the app's last drill passed (1) or failed (0)."),
    ("selfhost_rollback_drill_age_seconds", "Age of the app's last drill."),
    ("selfhost_rollback_drill_time_to_healthy_seconds", "Time to healthy measured by the app's last drill."),
    ("selfhost_rollback_window_releases_left", "Releases that may still be recorded before the rollback target's window closes."),
    ("selfhost_rollback_report_timestamp_seconds", "When the report was generated (Unix time)."),
)


def _label(value: t.Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(model: dict[str, t.Any]) -> str:
    """The report as a node exporter textfile (Prometheus text format): one series per host and app."""
    samples: dict[str, list[str]] = {name: [] for name, _help in METRICS}

    def add(name: str, labels: dict[str, t.Any], value: t.Any) -> None:
        if value is None:
            return
        shown = ",".join(f'{key}="{_label(labels[key])}"' for key in sorted(labels))
        samples[name].append(f"{name}{{{shown}}} {float(value):.17g}" if shown else f"{name} {float(value):.17g}")

    for host in model["hosts"]:
        for app in host["apps"]:
            labels = {"host": host["host"], "app": app["name"]}
            add("selfhost_rollback_app_mark", labels, MARK_VALUE[app["mark"]])
            for point in app["restore_points"]:
                add("selfhost_rollback_restore_point_mark", dict(labels, release=point["release_id"],
                                                                 current="true" if point["current"] else "false"),
                    MARK_VALUE[point["mark"]])
            newest = app.get("newest_verified") or {}
            add("selfhost_rollback_backup_age_seconds", labels, newest.get("age_s"))
            add("selfhost_rollback_backup_bytes", labels, newest.get("bytes"))
            drill = app.get("last_drill")
            if drill:
                add("selfhost_rollback_drill_passed", labels, 1 if drill["passed"] else 0)
                add("selfhost_rollback_drill_age_seconds", labels, app.get("last_drill_age_s"))
                add("selfhost_rollback_drill_time_to_healthy_seconds", labels, (drill.get("timings") or {}).get("time_to_healthy_s"))
            target = next((p for p in app["restore_points"] if p["release_id"] == app.get("rollback_to")), None)
            if target is not None:
                add("selfhost_rollback_window_releases_left", labels, target.get("releases_left"))
        if not host["apps"] and host["mark"] == "red":
            add("selfhost_rollback_app_mark", {"host": host["host"], "app": ""}, MARK_VALUE["red"])
    generated = parse_time(model["generated_at"])
    add("selfhost_rollback_report_timestamp_seconds", {}, generated.timestamp() if generated else None)
    lines = []
    for name, text in METRICS:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"] + samples[name]
    return "\n".join(lines) + "\n"
