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
