"""Reliability: a deleted archive and a flipped bit. Verification fails naming the item,
restore refuses and changes nothing, and the other sets still restore."""

from __future__ import annotations

import json

from reliability import ledger

BACKUP = "selfhost.rollback.backup"
VERIFY = "selfhost.rollback.backup_verify"
RESTORE = "selfhost.rollback.restore"


def test_damaged_sets_are_named_and_refused_and_others_restore(demo_app, module_playbook):
    demo = demo_app
    params = {"app": demo.definition(), "store": str(demo.store)}
    taken = []
    for title in ("in every set", "in the second and third", "in the third"):
        demo.add_note(title)
        run, result = module_playbook(BACKUP, params)
        assert run.rc == 0, run.stdout[-3000:]
        taken.append(result["set_id"])
    good, deleted, flipped = taken

    def item_archive(set_id: str, kind: str) -> str:
        manifest = json.loads((ledger(demo) / "backups" / set_id / "manifest.json").read_text())
        return next(i["archive"] for i in manifest["items"] if i["kind"] == kind)

    (ledger(demo) / "backups" / deleted / item_archive(deleted, "database")).unlink()
    archive = ledger(demo) / "backups" / flipped / item_archive(flipped, "volume")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))

    for set_id, named in ((deleted, "database db-notes:"), (flipped, "volume uploads:")):
        run, verified = module_playbook(VERIFY, {**params, "set_id": set_id, "checks": ["deep"]})
        assert run.rc != 0 and verified["passed"] is False
        assert any(f.startswith(named) for f in verified["failures"]), verified["failures"]
        ids = demo.container_ids()
        run, refused = module_playbook(RESTORE, {**params, "set_id": set_id, "force": True})
        assert run.rc != 0 and "restore refused" in refused["msg"] and named in refused["msg"], refused["msg"]
        assert demo.container_ids() == ids
        assert [n["title"] for n in demo.notes()] == ["in every set", "in the second and third", "in the third"]

    run, restored = module_playbook(RESTORE, {**params, "set_id": good})
    assert run.rc == 0, run.stdout[-3000:]
    demo.wait_healthy()
    assert [n["title"] for n in demo.notes()] == ["in every set"]
