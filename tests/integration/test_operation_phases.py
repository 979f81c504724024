"""Every phase of an upgrade that fails or is killed ends in a named state, and the next run converges.

The broken version 2.1 migrates the schema (3), so each way back needs the data too.
"""

from __future__ import annotations

import json

import time

from reliability import Background, inventory_for, ledger, newest_partial, states

TO_2_1 = {"upgrade_env": {"NOTES_VERSION": "2.1"}, "upgrade_max_backup_age": 0}


def journal_phase(demo) -> str | None:
    try:
        return json.loads((ledger(demo) / "journal.json").read_text())["phase"]
    except (OSError, ValueError, KeyError):
        return None


def outcomes(demo) -> list[str]:
    records = [json.loads(p.read_text()) for p in (ledger(demo) / "operations").glob("*.json")]
    return [r["outcome"] for r in sorted(records, key=lambda r: r["op_id"])]


def test_a_revert_whose_gate_refuses_closes_as_revert_failed_and_the_next_run_converges(demo_app, run_playbook, tmp_path):
    demo = demo_app
    inventory = inventory_for(demo, tmp_path)
    demo.add_note("order #1042", "2 x oat milk, paid")
    backups, aside = ledger(demo) / "backups", tmp_path / "backups-aside"
    # the backup the upgrade takes disappears before the switch, and no cutover set replaces it:
    # the revert's own gate must refuse
    hook = tmp_path / "lose-the-backups.yml"
    hook.write_text(f"- name: Lose the backups\n  ansible.builtin.command: mv {backups} {aside}\n  changed_when: true\n")
    run = run_playbook("selfhost.rollback.upgrade", dict(TO_2_1, upgrade_before_tasks=str(hook), upgrade_cutover=False),
                       inventory=inventory)
    assert run.rc != 0
    failure = run.task("Report the failed upgrade and the failed revert")["result"]
    assert failure["outcome"] == "revert_failed"
    assert failure["msg"].startswith(f"The upgrade of {demo.name} failed: app {demo.name} failed its health gate: "), failure["msg"]
    assert "The automatic revert to release r-" in failure["msg"] and "failed too: Going back to r-" in failure["msg"]
    assert "Choose one: fix what the message names and run selfhost.rollback.rollback -e rollback_target=r-" in failure["msg"]
    assert not (ledger(demo) / "journal.json").exists()
    last = json.loads((ledger(demo) / "last_operation.json").read_text())
    assert (last["kind"], last["outcome"], last["phase"]) == ("upgrade", "revert_failed", "done")

    # the operator puts the backups back and runs the rollback the sentence names: it converges
    aside.rename(backups)
    run = run_playbook("selfhost.rollback.rollback", inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    assert demo.wait_healthy(timeout=5)["version"] == "1.0"
    assert [n["title"] for n in demo.notes()] == ["order #1042"]
    assert outcomes(demo) == ["revert_failed", "rolled_back"]
    assert json.loads((ledger(demo) / "last_operation.json").read_text())["release_after"] == last["return_to"]


def test_an_upgrade_killed_in_each_phase_is_finished_by_the_next_run(demo_app, run_playbook, docker_client, tmp_path):
    """Killed during the cutover (the app's writers stopped for it), while judging, then while reverting:
    each time the next run (here an upgrade that has nothing to do once the app is back on 1.0)
    finishes the operation first."""
    demo = demo_app
    inventory = inventory_for(demo, tmp_path)
    demo.add_note("order #1043", "1 x rye bread")
    reached = {
        # the cutover set is being written: the writers are stopped until Compose brings 2.1 up
        "switching": lambda: journal_phase(demo) == "switching" and newest_partial(demo) is not None,
        "judging": lambda: journal_phase(demo) == "judging",
        "reverting": lambda: journal_phase(demo) == "reverting",
    }
    for number, phase in enumerate(reached, start=1):
        upgrade = Background(tmp_path, inventory, "selfhost.rollback.upgrade", extra=TO_2_1)
        upgrade.wait_for(reached[phase], timeout=400, what=f"the upgrade reaching '{phase}'")
        upgrade.kill()
        assert journal_phase(demo) == phase
        if phase == "switching":  # the quiesce guard starts the stopped writers, with no run at all
            deadline = time.monotonic() + 15
            while set(states(docker_client, demo.name).values()) != {"running"}:
                assert time.monotonic() < deadline, states(docker_client, demo.name)
                time.sleep(0.1)

        run = run_playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "1.0"}}, inventory=inventory)
        assert run.rc == 0, run.stdout[-3000:]
        said = run.task("Report the interrupted operation")["result"]["msg"]
        assert f"stopped during '{phase}'" in said, said
        assert demo.wait_healthy(timeout=5)["version"] == "1.0"
        assert [n["title"] for n in demo.notes()] == ["order #1043"]
        assert outcomes(demo) == ["recovered"] * number
        record = json.loads((ledger(demo) / "last_operation.json").read_text())
        # killed before 2.1 ran, the data is still 1.0's; later, it comes back with the code
        assert record["interrupted_in"] == phase
        assert (record.get("data_restored") or "").startswith("b-") == (phase != "switching"), record
        assert not (ledger(demo) / "journal.json").exists()
