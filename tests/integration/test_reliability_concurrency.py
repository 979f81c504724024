"""Reliability: two runs on one app. The second waits up to its lock timeout, then fails
naming the run that holds the lock, and writes nothing; a lock whose owner was killed is
taken over at once, because an flock(2) lock goes away only with its owner."""

from __future__ import annotations

import json
import signal
import time

from reliability import Background, files_in, inventory_for, ledger, module_play, newest_partial, set_dirs, states

BACKUP = "selfhost.rollback.backup"


def test_second_run_fails_clearly_and_a_killed_owner_frees_the_lock(demo_app, module_playbook, docker_client, tmp_path):
    demo = demo_app
    params = {"app": demo.definition(), "store": str(demo.store)}
    inventory = inventory_for(demo, tmp_path)
    first = Background(tmp_path, inventory, module_play(tmp_path / "backup.yml", BACKUP, params))
    first.wait_for(lambda: (p := newest_partial(demo)) is not None and files_in(p, "database-"),
                   what="the first backup holding the lock")
    first.signal(signal.SIGSTOP)  # the owner is alive, only slow: its lock must hold
    owner = first.module_pids()
    assert owner, "no backup module under the first run"
    holder = json.loads((ledger(demo) / "lock").read_text())
    assert holder["pid"] in owner and holder["purpose"] == "backup"
    before = set_dirs(demo), sorted(p.name for p in ledger(demo).iterdir())

    began = time.monotonic()
    run, result = module_playbook(BACKUP, {**params, "lock_timeout": 3})
    waited = time.monotonic() - began
    assert run.rc != 0
    assert f"app {demo.name} is busy: another run (pid {holder['pid']} on " in result["msg"], result["msg"]
    assert "backup since" in result["msg"] and "\n" not in result["msg"]
    assert waited >= 3, waited
    assert (set_dirs(demo), sorted(p.name for p in ledger(demo).iterdir())) == before  # wrote nothing

    # kill -9 of the owner: the lock file still names it, but the lock went with it
    first.kill()
    assert json.loads((ledger(demo) / "lock").read_text())["pid"] == holder["pid"]
    began = time.monotonic()
    run, result = module_playbook(BACKUP, {**params, "lock_timeout": 0})
    assert run.rc == 0, run.stdout[-3000:]
    assert any(a.startswith("removed partial set") for a in result["actions"]), result["actions"]
    assert set(states(docker_client, demo.name).values()) == {"running"}
    assert len(set_dirs(demo)) == 1
    demo.wait_healthy(timeout=30)


def test_a_second_playbook_leaves_an_operation_under_way_alone(demo_app, run_playbook, docker_client, tmp_path):
    """An upgrade's journal is open (its health gate is still probing the new version) when a rollback
    starts on the same app: the rollback must not take the journal for an interrupted run and revert under it."""
    demo = demo_app
    inventory = inventory_for(demo, tmp_path)
    journal = ledger(demo) / "journal.json"
    # 600 probes keep the gate judging for half a minute or more: the window the second run falls in
    first = Background(tmp_path, inventory, "selfhost.rollback.upgrade",
                       extra={"upgrade_env": {"NOTES_VERSION": "1.1"}, "upgrade_max_p99_ratio": 0,
                              "upgrade_health_probes": 600})
    first.wait_for(lambda: _phase(journal) == "judging" and _version(demo) == "1.1", timeout=300,
                   what="the upgrade judging 1.1 with its journal open")
    owner = json.loads(journal.read_text())["owner"]
    assert owner["pid"] == first.proc.pid, (owner, first.proc.pid)
    before = demo.container_ids(), journal.read_text(), (demo.project_dir / ".env").read_text()

    run = run_playbook("selfhost.rollback.rollback", inventory=inventory)
    assert run.rc != 0
    refusal = run.task("Leave an operation that another run is still doing alone")["result"]
    assert refusal["outcome"] == "busy"
    assert (f"The upgrade of {demo.name} started " in refusal["msg"] and f"(ansible-playbook pid {first.proc.pid}) is still "
            "under way (phase 'judging'); this run changed nothing" in refusal["msg"]), refusal["msg"]
    assert (demo.container_ids(), journal.read_text(), (demo.project_dir / ".env").read_text()) == before
    assert first.wait(300) == 0, first.log()[-3000:]
    assert not journal.exists()
    assert demo.wait_healthy(timeout=5)["version"] == "1.1"
    outcomes = [json.loads(p.read_text())["outcome"] for p in (ledger(demo) / "operations").glob("*.json")]
    assert outcomes == ["upgraded"], outcomes


def _phase(journal) -> str | None:
    try:
        return json.loads(journal.read_text())["phase"]
    except (OSError, ValueError, KeyError):
        return None


def _version(demo) -> str | None:
    time.sleep(0.1)
    status, body = demo.health()
    return body.get("version") if status == 200 else None
