#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: restore_points_report
short_description: Write the restore-points report (one self-contained HTML page and its JSON)
version_added: 0.1.0
description:
  - Takes what M(selfhost.rollback.ledger_info) returned for each host and writes, in O(dest), C(restore-points.html)
    (inline CSS, no external assets, opens from a file) and C(restore-points.json) (the same figures).
  - Per host and app, every release is a restore point with red/amber/green marks for its images (on this host,
    only in a registry, missing), its backup (a verified set or none) and its drills (passed recently, stale - no
    passing drill within O(stale_days) days - or failed), the last drill's timings (restore, boot, healthy), the
    age of the evidence, when the window closes, and a timeline of releases, backup sets and drills.
  - Meant to run on the controller (C(delegate_to) V(localhost), C(run_once)).
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
attributes:
  check_mode:
    support: full
    description: Says whether the files would change; writes nothing.
  diff_mode:
    support: none
    description: The page is generated; compare the JSON files instead.
  idempotent:
    support: partial
    description: With the same ledgers and the same O(now) the files are not rewritten; by default O(now) is the current time, so ages move.
options:
  hosts:
    description: One entry per host, as M(selfhost.rollback.ledger_info) returns it (its C(host) may be replaced by the inventory name).
    type: list
    elements: dict
    required: true
  missing_hosts:
    description: Hosts whose ledger could not be read; they are shown red.
    type: list
    elements: str
    default: []
  dest:
    description: The directory to write the two files to; created (0700) when missing.
    type: path
    required: true
  stale_days:
    description: A restore point without a passing drill within this many days is amber.
    type: float
    default: 7
  keep_releases:
    description: How many releases the image archive keeps (as set when recording releases), to say when a window closes.
    type: int
    default: 3
  title:
    description: The page's title.
    type: str
    default: Restore points
  now:
    description: The report's time (C(YYYY-MM-DDTHH:MM:SSZ)); by default the current time.
    type: str
  textfile:
    description:
      - Also write the report's figures as a node exporter textfile (Prometheus text format) at this path, for example
        V(/var/lib/prometheus/node-exporter/selfhost_rollback.prom) (the directory C(--collector.textfile.directory) reads).
      - "Per host and app, all gauges: C(selfhost_rollback_app_mark) and per release C(selfhost_rollback_restore_point_mark)
        (0 green, 1 amber, 2 red; a declared app with nothing recorded is red), C(selfhost_rollback_backup_age_seconds) and
        C(selfhost_rollback_backup_bytes) (the newest verified set), C(selfhost_rollback_drill_passed),
        C(selfhost_rollback_drill_age_seconds) and C(selfhost_rollback_drill_time_to_healthy_seconds) (the last drill),
        C(selfhost_rollback_window_releases_left) (of the rollback target), and C(selfhost_rollback_report_timestamp_seconds)."
      - Written atomically (0644, it holds no secret), so the exporter never reads half a file.
    type: path
seealso:
  - module: selfhost.rollback.ledger_info
  - module: selfhost.rollback.drill
"""

EXAMPLES = r"""
- name: Write the report on the controller
  selfhost.rollback.restore_points_report:
    hosts: "{{ ansible_play_hosts | map('extract', hostvars, 'ledger') | list }}"
    dest: /srv/reports/restore-points
    stale_days: 7
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
html:
  description: The HTML page.
  returned: always
  type: str
  sample: /srv/reports/restore-points/restore-points.html
json:
  description: The JSON file with the same figures.
  returned: always
  type: str
textfile:
  description: The node exporter textfile written (V(null) without O(textfile)).
  returned: always
  type: str
  sample: /var/lib/prometheus/node-exporter/selfhost_rollback.prom
mark:
  description: The worst mark of the report (V(green), V(amber) or V(red)).
  returned: always
  type: str
counts:
  description: Restore points per mark.
  returned: always
  type: dict
  sample: {green: 3, amber: 1, red: 0}
  contains:
    green:
      description: Restore points marked V(green) (ready).
      type: int
    amber:
      description: Restore points marked V(amber) (attention).
      type: int
    red:
      description: Restore points marked V(red) (not restorable).
      type: int
rows:
  description: One line per host, app and restore point, for a play to print.
  returned: always
  type: list
  elements: str
  sample: ["host1 notes r-20261122T021836Z-d1cd5945 green: drill passed 3 h ago; restore 4.2 s, boot 2.9 s, healthy 1.1 s"]
outcome:
  description:
    - V(changed) when something was (or, in check mode, would be) changed, V(unchanged) when everything was already in place.
    - The report's own verdict is RV(mark).
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

import datetime
import json
import os
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _report
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import LedgerError, atomic_write_bytes, ensure_dir, replace_file
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule


def rows_of(model: dict[str, t.Any]) -> list[str]:
    rows = []
    for host in model["hosts"]:
        if not host["apps"]:
            rows.append(f"{host['host']} {host['mark']}: {host['note']}")
        for app in host["apps"]:
            for point in app["restore_points"]:
                timings = ((point.get("last_drill") or {}).get("timings")) or {}
                figures = ", ".join(f"{k} {_report._secs(timings.get(k + '_s'))}" for k in ("restore", "boot", "healthy"))
                rows.append(f"{host['host']} {app['name']} {point['release_id']}{' (current)' if point['current'] else ''} "
                            f"{point['mark']}: {point['why']['drill']}; {figures}")
    return rows


def write_textfile(path: str, content: bytes) -> None:
    """Replace ``path`` atomically with a world-readable file (the exporter runs as its own user); the
    directory is the exporter's and is left as it is."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise OSError(f"{directory} does not exist (the node exporter's --collector.textfile.directory)")
    replace_file(path, content, mode=0o644)


def write_report(module: AppModule) -> dict[str, t.Any]:
    params = module.params
    if params["now"]:
        now = _report.parse_time(params["now"])
        if now is None:
            raise OperatorError(f"now {params['now']!r} is not a UTC time like 2026-11-22T03:00:00Z; fix the value or leave it out")
    else:
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    model = _report.restore_points(params["hosts"], now, params["stale_days"], params["keep_releases"], params["missing_hosts"])
    page = _report.render_html(model, params["title"]).encode()
    data = (json.dumps(model, indent=2, sort_keys=True) + "\n").encode()
    paths = {"html": os.path.join(params["dest"], "restore-points.html"), "json": os.path.join(params["dest"], "restore-points.json")}
    files = [("html", page), ("json", data)]
    if params["textfile"]:
        paths["textfile"] = params["textfile"]
        files.append(("textfile", _report.render_metrics(model).encode()))
    changed = False
    for key, content in files:
        existing = None
        if os.path.isfile(paths[key]):
            with open(paths[key], "rb") as handle:
                existing = handle.read()
        if existing != content:
            changed = True
            if not module.check_mode:
                try:
                    if key == "textfile":
                        write_textfile(paths[key], content)
                    else:
                        ensure_dir(params["dest"])
                        atomic_write_bytes(paths[key], content)
                except (OSError, LedgerError) as exc:
                    raise OperatorError(f"the report could not be written to {paths[key]} ({exc}); choose a writable dest") from exc
    return {"changed": changed, "html": paths["html"], "json": paths["json"], "textfile": paths.get("textfile"),
            "mark": model["mark"], "counts": model["counts"], "rows": rows_of(model)}


def main() -> None:
    module = AppModule(
        {
            "hosts": {"type": "list", "elements": "dict", "required": True},
            "missing_hosts": {"type": "list", "elements": "str", "default": []},
            "dest": {"type": "path", "required": True},
            "stale_days": {"type": "float", "default": 7},
            "keep_releases": {"type": "int", "default": 3},
            "title": {"type": "str", "default": "Restore points"},
            "now": {"type": "str"},
            "textfile": {"type": "path"},
        },
        app=False, docker=False,
        os_failure="reading or writing the report failed ({exc}); choose a dest that this user may read and write",
    )
    module.run(write_report)


if __name__ == "__main__":
    main()
