"""The upgrade and rollback playbooks against the real demo app, run by FQCN."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from conftest import COLLECTIONS_PATH, DEMO_TEMPLATE, VENV_PYTHON, write_inventory

PLAYBOOK_BIN = str(Path(VENV_PYTHON).parent / "ansible-playbook")
# upgrades that must pass: judged on health and errors (the latency verdict is unit-tested)
TO_1_1 = {"upgrade_env": {"NOTES_VERSION": "1.1"}, "upgrade_max_p99_ratio": 0}


def inventory_for(demo, tmp_path: Path) -> Path:
    return write_inventory(tmp_path / f"inventory-{demo.name}.json",
                           group_vars={"rollback_apps": [demo.definition()], "rollback_store": str(demo.store)})


def ledger(demo) -> Path:
    return demo.store / demo.name


def last_operation(demo) -> dict:
    return json.loads((ledger(demo) / "last_operation.json").read_text())


def titles(demo) -> list[str]:
    return [n["title"] for n in demo.notes()]


def test_failed_upgrade_reverts_to_the_moment_of_the_switch(demo_app, run_playbook, tmp_path):
    """A revert brings back what the app held when the new version took over; without the cutover
    (a reused older set), the failure message and the record name what was lost."""
    inventory = inventory_for(demo_app, tmp_path)
    demo_app.add_note("before the upgrade", "must survive")
    run = run_playbook("selfhost.rollback.pre_upgrade", {}, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    demo_app.add_note("after the backup", "written after the verified set the upgrade reuses")

    proven = {"upgrade_env": {"NOTES_VERSION": "2.1"}, "upgrade_cutover_verify_checks": ["deep", "test_restore"]}
    run = run_playbook("selfhost.rollback.upgrade", proven, inventory=inventory)
    assert run.rc != 0
    verified = run.task("Verify the data captured at the switch")["result"]
    assert [r["kind"] for r in verified["runs"]] == ["deep", "test_restore"] and verified["passed"], verified
    assert not any(r["task"].startswith("Back up: ") and r["status"] != "skipped" for r in run.results), "the fresh set was not reused"
    failure = run.task("Report the failed upgrade and the revert")["result"]["msg"]
    assert failure.startswith(f"The upgrade of {demo_app.name} failed: app {demo_app.name} failed its health gate: ")
    op = last_operation(demo_app)
    assert (op["kind"], op["outcome"], op["phase"]) == ("upgrade", "reverted", "done")
    assert op["cutover_set"] and op["data_restored"] == op["cutover_set"], op
    assert "It was reverted automatically to release r-" in failure and f"data restored from {op['cutover_set']}" in failure
    # what the restore discards is what 2.1 made of the data after the cutover (its migration), named in one sentence
    assert f"Lost: {op['lost']}" in failure and "public.schema_migrations has 3 rows now, 1 in the set" in op["lost"], op
    # back on 1.0, healthy, with every row written before the upgrade began
    assert demo_app.wait_healthy(timeout=5) == {"status": "ok", "version": "1.0", "schema": 1, "code_schema": 1}
    assert titles(demo_app) == ["before the upgrade", "after the backup"]
    assert "NOTES_VERSION=1.0" in (demo_app.project_dir / ".env").read_text()
    assert op["figures"]["time_to_healthy_s"] is not None
    assert not (ledger(demo_app) / "journal.json").exists()
    assert demo_app.password not in run.stdout

    # without the cutover, the revert restores the reused set, and says what that cost
    demo_app.add_note("after the cutover set", "lost without a cutover")
    run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "2.1"}, "upgrade_cutover": False},
                       inventory=inventory)
    assert run.rc != 0
    failure = run.task("Report the failed upgrade and the revert")["result"]["msg"]
    op = last_operation(demo_app)
    assert op["outcome"] == "reverted" and op.get("cutover_set") is None and op["data_restored"] == op["backup_set"], op
    # named before the switch, and again in the failure message
    assert "public.notes has 3 rows now, 2 in the set" in op["at_risk"], op
    assert f"not in {op['backup_set']}, so lost too: {op['at_risk']}" in failure, failure
    assert titles(demo_app) == ["before the upgrade", "after the backup"]


def test_upgrade_then_rollback_with_data_and_notes(demo_app, run_playbook, tmp_path):
    inventory = inventory_for(demo_app, tmp_path)
    demo_app.add_note("kept", "written under 1.0")

    run = run_playbook("selfhost.rollback.upgrade", TO_1_1, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert demo_app.wait_healthy(timeout=5)["version"] == "1.1"
    assert last_operation(demo_app)["outcome"] == "upgraded"
    again = run_playbook("selfhost.rollback.upgrade", TO_1_1, inventory=inventory)
    assert again.rc == 0 and again.changed() == [], again.changed()

    run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "2.0"}, "upgrade_max_backup_age": 0,
                                                     "upgrade_max_p99_ratio": 0,
                                                     "upgrade_note": "2.0 renames notes to documents"}, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert demo_app.wait_healthy(timeout=5)["schema"] == 3
    demo_app.add_note("lost", "written under 2.0")

    plan = run_playbook("selfhost.rollback.rollback", inventory=inventory, check=True)
    assert plan.rc == 0, plan.stdout[-3000:]
    said = plan.task("Say the plan")["result"]["msg"]
    assert said[2].startswith("data: restored from b-") and "public.documents (2 rows now) did not exist then" in said[3]
    assert demo_app.wait_healthy(timeout=5)["version"] == "2.0"  # check mode changed nothing

    run = run_playbook("selfhost.rollback.rollback", inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert demo_app.wait_healthy(timeout=5)["version"] == "1.1"
    assert titles(demo_app) == ["kept"]
    op = last_operation(demo_app)
    assert (op["kind"], op["outcome"]) == ("rollback", "rolled_back") and op["data_restored"].startswith("b-")
    notes = list((ledger(demo_app) / "notes").glob("*.md"))
    assert len(notes) == 2  # 1.0 -> 1.1 and 1.1 -> 2.0
    upgrade_note = next(p.read_text() for p in notes if "2.0 renames notes" in p.read_text())
    assert "## Data written after the backup" in upgrade_note and "lost: everything written in the last" in upgrade_note

    second = run_playbook("selfhost.rollback.rollback", inventory=inventory)
    assert second.rc == 0 and second.changed() == [], second.changed()
    assert demo_app.wait_healthy(timeout=5)["version"] == "1.1"

    # rollback, drill and report agree on "previous" now: the release 1.0 ran as, before the first upgrade
    records = sorted((json.loads(p.read_text()) for p in (ledger(demo_app) / "operations").glob("*.json")),
                     key=lambda r: r["op_id"])
    previous = records[0]["release_before"]
    assert records[0]["kind"] == "upgrade" and previous
    assert f"to go further back, run with rollback_target={previous}" in second.task("Show the gate's table")["result"]["msg"][-1]
    drill = run_playbook("selfhost.rollback.drill", inventory=inventory, check=True)
    assert drill.rc == 0, drill.stdout[-3000:]
    planned = drill.task("Rehearse the rollback in an isolated copy")["result"]
    assert planned["release_id"] == previous and planned["passed"] is None  # nothing ran, so no verdict
    report = run_playbook("selfhost.rollback.report", {"report_dest": str(tmp_path / "report")}, inventory=inventory)
    assert report.rc == 0, report.stdout[-3000:]
    model = json.loads((tmp_path / "report" / "restore-points.json").read_text())
    assert model["hosts"][0]["apps"][0]["rollback_to"] == previous


def test_killed_upgrade_converges_and_blocked_rollback_refuses(demo_app, run_playbook, tmp_path):
    inventory = inventory_for(demo_app, tmp_path)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    extra = tmp_path / "to-1.1.json"
    extra.write_text(json.dumps({"upgrade_env": {"NOTES_VERSION": "1.1"}}))
    journal = ledger(demo_app) / "journal.json"
    proc = subprocess.Popen([PLAYBOOK_BIN, "-i", str(inventory), "selfhost.rollback.upgrade", "-e", f"@{extra}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not journal.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert journal.exists(), "the upgrade never opened its journal"
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 in the middle of the switch
    proc.wait(30)
    assert json.loads(journal.read_text())["phase"] == "switching"

    run = run_playbook("selfhost.rollback.upgrade", TO_1_1, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    reports = [r["result"]["msg"] for r in run.results if "Report the interrupted operation" in r["task"] and r["status"] == "ok"]
    assert len(reports) == 1 and "stopped during 'switching'" in reports[0], reports
    assert demo_app.wait_healthy(timeout=5)["version"] == "1.1"
    outcomes = sorted(json.loads(p.read_text())["outcome"] for p in (ledger(demo_app) / "operations").glob("*.json"))
    assert outcomes == ["recovered", "upgraded"]
    assert not journal.exists()

    # a rollback whose data cannot come back is refused before anything changes; the upgrade
    # pinned 1.1 by digest, so a by-hand move to 2.0 starts from the unpinned compose file
    shutil.copy(DEMO_TEMPLATE / "compose.yaml", demo_app.project_dir / "compose.yaml")
    assert demo_app.deploy("2.0").returncode == 0
    assert demo_app.wait_healthy(timeout=5)["schema"] == 3
    shutil.rmtree(ledger(demo_app) / "backups")
    before = demo_app.container_ids(), (demo_app.project_dir / ".env").read_text()
    run = run_playbook("selfhost.rollback.rollback", inventory=inventory)
    assert run.rc != 0
    refusal = run.task("Refuse a blocked target before changing anything")["result"]["msg"]
    assert "is blocked, nothing was changed: schema: the live schema 3 is newer than the target's 2" in refusal
    assert (demo_app.container_ids(), (demo_app.project_dir / ".env").read_text()) == before
    assert demo_app.wait_healthy(timeout=5)["version"] == "2.0"


def test_an_upgrade_that_degrades_only_quality_is_reverted_by_its_signals(demo_project, run_playbook, tmp_path):
    """2.2 answers 200 to every probe and smoke request, but its answers are worse and cost more.
    The signals (a JSON answer's quality score and its tokens) are recorded in the baseline, the
    upgrade gate fails on them with the numbers, and the revert's gate shows them recovered."""
    demo = demo_project
    assert demo.deploy("2.0").returncode == 0, demo.logs()
    demo.wait_healthy()
    demo.add_note("refund policy", "refunds are paid within 14 days of a return")
    question = "/answer?q=refund+policy+days"
    signals = [{"name": "quality", "path": question, "json": "quality", "min_ratio": 0.9},
               {"name": "tokens", "path": question, "json": "usage.tokens", "max_ratio": 1.5}]

    # a signal that cannot be read stops the upgrade before anything changes, naming the option to fix
    broken = write_inventory(tmp_path / "broken.json", group_vars={
        "rollback_apps": [demo.definition(signals=[dict(signals[0], path="/ask?q=refund")])],
        "rollback_store": str(demo.store)})
    run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "2.2"}}, inventory=broken)
    assert run.rc != 0
    failed = next(r for r in run.results if r["status"] == "failed")["result"]["msg"]
    assert "signal quality could not be read: GET /ask?q=refund -> quality answered 404" in failed, failed
    assert "fix app.signals[quality]" in failed, failed
    assert demo.wait_healthy(timeout=5)["version"] == "2.0"

    inventory = write_inventory(tmp_path / "inventory.json", group_vars={
        "rollback_apps": [demo.definition(signals=signals)], "rollback_store": str(demo.store)})
    run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "2.2"}}, inventory=inventory)
    assert run.rc != 0
    baseline = run.task("Record the health baseline")["result"]
    assert {s["name"]: s["value"] for s in baseline["signals"]} == {"quality": 1.0, "tokens": 12.0}, baseline["signals"]
    judged = run.task("Judge it against the baseline")["result"]
    assert judged["figures"]["errors"] == 0 and all(s["passed"] for s in judged["smoke"]), judged["figures"]
    failure = run.task("Report the failed upgrade and the revert")["result"]["msg"]
    assert "signal quality is 0, below 0.9x the baseline's 1 (at least 0.9 allowed)" in failure, failure
    assert "signal tokens is 31, above 1.5x the baseline's 12 (at most 18 allowed)" in failure, failure
    op = last_operation(demo)
    assert (op["kind"], op["outcome"]) == ("upgrade", "reverted"), op
    # back on 2.0, and the revert's own gate (against 2.0's baseline) shows the numbers recovered
    recovered = run.task("Check health against the release's baseline")["result"]
    assert [(s["name"], s["value"], s["baseline"], s["passed"]) for s in recovered["signals"]] == [
        ("quality", 1.0, 1.0, True), ("tokens", 12.0, 12.0, True)], recovered["signals"]
    assert demo.wait_healthy(timeout=5)["version"] == "2.0"
