"""backup_prune as a quartet: check mode, real run, idempotent check, idempotent run."""

from __future__ import annotations

import datetime
import json
import os

PRUNE = "selfhost.rollback.backup_prune"


def fake_set(store, app: str, days_ago: int, release: str | None, verified: bool | None, partial: bool = False) -> str:
    created = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days_ago)
    set_id = f"b-{created.strftime('%Y%m%dT%H%M%SZ')}-{days_ago:04x}"
    directory = store / app / "backups" / set_id
    directory.mkdir(parents=True)
    (directory / "volume-uploads.tar.zst").write_bytes(b"x")
    if not partial:
        (directory / "manifest.json").write_text(json.dumps({
            "format": 1, "set_id": set_id, "app": app, "release_id": release, "backend": "local", "items": [],
            "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    if verified is not None:
        (directory / "verification.json").write_text(json.dumps([{"kind": "deep", "passed": verified}]))
    return set_id


def test_prune_quartet(demo_project, module_playbook):
    store, app = demo_project.store, demo_project.name
    (store / app / "releases").mkdir(parents=True)
    (store / app / "releases" / "r-1.json").write_text(json.dumps({"release_id": "r-1"}))
    needed = fake_set(store, app, 40, "r-1", True)          # newest (verified) set of a retained release
    old = fake_set(store, app, 30, "r-gone", None)
    verified = fake_set(store, app, 20, None, True)         # newest verified set
    failed = fake_set(store, app, 10, None, False)
    partial = fake_set(store, app, 9, None, None, partial=True)
    recent = [fake_set(store, app, d, None, None) for d in (2, 1)]
    params = {"app": demo_project.definition(), "store": str(store), "keep_last": 2, "keep_within": "3d"}

    run, result = module_playbook(PRUNE, params, check=True)
    assert run.rc == 0, run.stdout
    assert result["changed"] is True and result["removed"] == [old, failed] and result["partial_removed"] == [partial]
    assert os.path.isdir(store / app / "backups" / old)

    run, result = module_playbook(PRUNE, params)
    assert run.rc == 0 and result["changed"] is True
    left = sorted(os.listdir(store / app / "backups"))
    assert left == sorted([needed, verified] + recent)
    reasons = {k["set_id"]: k["reasons"] for k in result["kept"]}
    assert "needed by retained release r-1" in reasons[needed] and "newest verified set" in reasons[verified]

    for check in (True, False):
        run, result = module_playbook(PRUNE, params, check=check)
        assert run.rc == 0 and result["changed"] is False and result["removed"] == []


def test_thirty_daily_sets_under_keep_last_7_through_the_prune_playbook(demo_project, run_playbook, tmp_path):
    """The shipped playbook, as a schedule would run it: seven sets stay, plus what a retained release needs."""
    from conftest import write_inventory

    store, app = demo_project.store, demo_project.name
    (store / app / "releases").mkdir(parents=True)
    (store / app / "releases" / "r-old.json").write_text(json.dumps({"release_id": "r-old"}))
    needed = fake_set(store, app, 45, "r-old", True)
    daily = [fake_set(store, app, days, None, True) for days in range(30, 0, -1)]
    inventory = write_inventory(tmp_path / "inventory.json", group_vars={
        "rollback_apps": [demo_project.definition()], "rollback_store": str(store)})
    run = run_playbook("selfhost.rollback.prune", {"keep_last": 7}, inventory=inventory)
    assert run.rc == 0, run.stdout[-2000:]
    assert sorted(os.listdir(store / app / "backups")) == sorted([needed] + daily[-7:])
    again = run_playbook("selfhost.rollback.prune", {"keep_last": 7}, inventory=inventory)
    assert again.rc == 0 and again.task("Prune")["result"]["changed"] is False
