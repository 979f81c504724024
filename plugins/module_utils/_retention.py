# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention of backup sets: which sets a prune keeps, and why (private to the collection).

Never removed: the newest verified set, and for every retained release the newest set
taken under it (verified preferred), plus sets named by a release record.
"""

from __future__ import annotations

import datetime
import re
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._clock import parse_iso
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils import _release
from ansible_collections.selfhost.rollback.plugins.module_utils._sets import is_verified


def parse_duration(text: str) -> datetime.timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not match:
        raise OperatorError(f"keep_within {text!r} is not a duration like 36h, 7d or 4w")
    value, unit = int(match.group(1)), match.group(2)
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    return datetime.timedelta(seconds=value * seconds)


def prune_plan(sets: list[dict[str, t.Any]], releases: set[str], keep_last: int | None,
               keep_within: datetime.timedelta | None, now: datetime.datetime,
               pinned: set[str] | None = None) -> dict[str, t.Any]:
    """Which sets to keep and why; everything else goes. ``sets`` is oldest first.

    Never removed: the newest verified set, and for every retained release the newest
    set taken under it (verified preferred), plus sets named by a release record.
    """
    reasons: dict[str, list[str]] = {entry["set_id"]: [] for entry in sets}
    newest_first = list(reversed(sets))
    if keep_last:
        for entry in newest_first[:keep_last]:
            reasons[entry["set_id"]].append(f"among the last {keep_last}")
    if keep_within is not None:
        for entry in sets:
            created = parse_iso(entry["manifest"]["created_at"])
            if now - created <= keep_within:
                reasons[entry["set_id"]].append("within keep_within")
    verified = [e for e in newest_first if is_verified(e)]
    if verified:
        reasons[verified[0]["set_id"]].append("newest verified set")
    for release in sorted(releases):
        under = [e for e in newest_first if e["manifest"].get("release_id") == release]
        if under:
            chosen = next((e for e in under if is_verified(e)), under[0])
            reasons[chosen["set_id"]].append(f"needed by retained release {release}")
    for set_id in sorted(pinned or ()):
        if set_id in reasons:
            reasons[set_id].append("named by a release record")
    keep = [{"set_id": s, "reasons": r} for s, r in reasons.items() if r]
    remove = [s for s, r in reasons.items() if not r]
    return {"keep": keep, "remove": remove}


def retained_releases(ledger: Ledger) -> tuple[set[str], set[str]]:
    """Release ids that still have a record, and set ids any release record names."""
    releases, pinned = set(), set()
    for record in _release.releases(ledger):
        releases.add(record["release_id"])
        for key in ("backup_set", "backup_sets"):
            value = record.get(key)
            for set_id in ([value] if isinstance(value, str) else value or []):
                pinned.add(set_id)
    current = _release.current_release_id(ledger)
    if current:
        releases.add(current)
    return releases, pinned
