#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: migration_note
short_description: Write down what changed between two releases and how to reverse it
version_added: 0.1.0
description:
  - Compares two recorded releases and writes a migration note into the ledger, as JSON
    and as Markdown, attached to the backup set taken before the change.
  - "The note holds: the schema version before and after and whether the old code still
    runs on the new schema; configuration keys added, removed and changed (keys only,
    values are never recorded); image changes per service; volumes added or removed;
    runtime changes; how to reverse the change; and the operator's own text."
  - Writing the same note again changes nothing.
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
extends_documentation_fragment:
  - selfhost.rollback.app
attributes:
  check_mode:
    support: full
    description: Computes the note and reports whether it would be written.
  diff_mode:
    support: full
    description: Shows the Markdown note before and after.
  idempotent:
    support: full
    description: The same releases, set and text give the same note and no change.
options:
  from_release:
    description:
      - The release before the change. Defaults to the release O(backup_set) was taken under,
        else the newest release before O(to_release).
    type: str
  to_release:
    description: The release after the change. Defaults to the release the ledger says runs now.
    type: str
  backup_set:
    description:
      - The backup set the note is attached to. Defaults to the newest complete set taken under O(from_release).
    type: str
  text:
    description:
      - The operator's own words (for example C(-e note="moved uploads to S3")).
      - When not given, the text of an existing note between the same releases is kept.
    type: str
  data_loss:
    description:
      - What a rollback across this change lost, written by the rollback flow.
      - When not given, the value of an existing note between the same releases is kept.
    type: str
requirements:
  - Docker SDK for Python 7.0 or newer
seealso:
  - module: selfhost.rollback.rollback_check
"""

EXAMPLES = r"""
- name: Note what the upgrade changed, with the operator's words
  selfhost.rollback.migration_note:
    app: "{{ app }}"
    from_release: "{{ before.release_id }}"
    to_release: "{{ after.release_id }}"
    text: "{{ note | default(omit) }}"
"""

RETURN = r"""
note:
  description: The note as written (see the module description for its parts).
  returned: success
  type: dict
  contains:
    format:
      description: Note format version.
      type: int
    app:
      description: The app's name.
      type: str
    from_release:
      description: The release before the change.
      type: str
    to_release:
      description: The release after the change.
      type: str
    backup_set:
      description: The backup set the note is attached to (V(null) when there is none).
      type: str
    written_at:
      description: When the note was written (UTC); unchanged when writing it again changes nothing.
      type: str
    schema:
      description:
        - C(before) and C(after), the schema versions; C(reversible_without_data), whether the old code runs on the new schema;
          C(why), the sentence that says so.
      type: dict
    config:
      description: Configuration keys C(added), C(removed) and C(changed), each a list of names (values are never recorded).
      type: dict
    images:
      description:
        - One entry per service whose image changed, with C(service), C(change) (V(added), V(removed) or V(changed)),
          C(before) and C(after) (the references), and for a changed image C(before_version) and C(after_version).
      type: list
      elements: dict
    volumes:
      description: Volumes C(added) and C(removed), each a list of names.
      type: dict
    runtime:
      description: Per runtime figure that changed (C(engine_version), C(api_version), C(compose_version)), its C(before) and C(after).
      type: dict
    how_to_reverse:
      description: How to reverse the change.
      type: str
    text:
      description: The operator's own words (V(null) when none were given).
      type: str
    data_loss:
      description: What a rollback across this change lost (V(null) until a rollback writes it).
      type: str
path:
  description: The JSON note in the ledger; the Markdown note sits beside it with the suffix C(.md).
  returned: success
  type: str
  sample: /var/lib/selfhost-rollback/notes/notes/r-20261122T020500Z-9f8e7d6c__r-20261122T021200Z-11aa22bb.json
markdown:
  description: The note in Markdown.
  returned: success
  type: str
outcome:
  description:
    - V(changed) when something was (or, in check mode, would be) changed, V(unchanged) when everything was already in place.
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

import os
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _gate
from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger, atomic_write_bytes
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule
from ansible_collections.selfhost.rollback.plugins.module_utils._release import current_release_id, releases
from ansible_collections.selfhost.rollback.plugins.module_utils._sets import list_sets


def choose(app: dict[str, t.Any], ledger: Ledger, params: dict[str, t.Any]) -> tuple[dict, dict, str | None]:
    history = releases(ledger)
    by_id = {r["release_id"]: r for r in history}
    sets = {e["set_id"]: e for e in list_sets(ledger)}

    def release(release_id: str, role: str) -> dict[str, t.Any]:
        if release_id not in by_id:
            raise OperatorError(f"app {app['name']}: {role} release {release_id} is not in the ledger; "
                                f"recorded: {', '.join(list(by_id)[-5:]) or 'none'}")
        return by_id[release_id]

    to_id = params["to_release"] or current_release_id(ledger)
    if not to_id:
        raise OperatorError(f"app {app['name']}: no current release is recorded; record one (selfhost.rollback.release) or set to_release")
    after = release(to_id, "to_release")
    set_id = params["backup_set"]
    if set_id and set_id not in sets:
        raise OperatorError(f"app {app['name']}: backup set {set_id} is not complete or does not exist in {ledger.root}")
    from_id = params["from_release"] or (sets[set_id]["manifest"].get("release_id") if set_id else None)
    if not from_id:
        older = [r for r in history if r["recorded_at"] <= after["recorded_at"] and r["release_id"] != to_id]
        if not older:
            raise OperatorError(f"app {app['name']}: there is no release before {to_id} to compare with; set from_release")
        from_id = older[-1]["release_id"]
    before = release(from_id, "from_release")
    if not set_id:
        under = [e for e in sets.values() if e["manifest"].get("release_id") == from_id]
        set_id = max(under, key=lambda e: e["manifest"].get("created_at", ""))["set_id"] if under else None
    return before, after, set_id


def write_note(module: AppModule) -> dict[str, t.Any]:
    params = module.params
    name = module.name
    app = module.app
    ledger = module.ledger
    before, after, set_id = choose(app, ledger, params)
    additive = (app.get("schema_probe") or {}).get("additive") or []
    relpath = os.path.join("notes", f"{before['release_id']}__{after['release_id']}.json")
    existing = ledger.read(relpath)
    note = _gate.note_between(before, after, additive)
    # a later writer (the rollback adding what was lost) keeps what an earlier one said
    kept = existing or {}
    note.update(app=name, backup_set=set_id or kept.get("backup_set"), format=1,
                text=params["text"] if params["text"] is not None else kept.get("text"),
                data_loss=params["data_loss"] if params["data_loss"] is not None else kept.get("data_loss"))
    note = module.scrub(note)
    comparable = {k: v for k, v in (existing or {}).items() if k != "written_at"}
    changed = comparable != note
    note["written_at"] = iso() if changed or existing is None else existing.get("written_at")
    markdown = _gate.note_markdown(note)
    if changed and not module.check_mode:
        with module.lock("migration note", timeout=60):
            ledger.write(relpath, note)
            atomic_write_bytes(ledger.path(relpath[: -len(".json")] + ".md"), markdown.encode())
    result: dict[str, t.Any] = {"changed": changed, "note": note, "path": ledger.path(relpath), "markdown": markdown}
    if module.diff_mode:
        result["diff"] = {"before": _gate.note_markdown(existing) if existing else "", "after": markdown,
                          "before_header": relpath[: -len(".json")] + ".md", "after_header": relpath[: -len(".json")] + ".md"}
    return result


def main() -> None:
    module = AppModule(
        {
            "from_release": {"type": "str"},
            "to_release": {"type": "str"},
            "backup_set": {"type": "str"},
            "text": {"type": "str"},
            "data_loss": {"type": "str"},
        },
        docker=False,
    )
    module.run(write_note)


if __name__ == "__main__":
    main()
