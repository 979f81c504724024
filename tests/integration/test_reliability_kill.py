"""Reliability: kill -9 of a backup (ansible-playbook, its workers, the module and its children).

A killed backup must leave the previous set restorable byte for byte, never a partial set
that looks complete, containers it quiesced running again after the next run, and a next
run that succeeds without manual repair. (A rollback killed in its switch: test_reliability_cycle.py.)
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from reliability import (
    Background,
    complete_sets,
    files_in,
    inventory_for,
    ledger,
    module_play,
    newest_partial,
    set_dirs,
    states,
    tree,
)

BACKUP = "selfhost.rollback.backup"
VERIFY = "selfhost.rollback.backup_verify"
RESTORE = "selfhost.rollback.restore"


def params(demo, **extra):
    return {"app": demo.definition(), "store": str(demo.store), **extra}


def test_killed_backups_keep_the_previous_set_and_the_next_run_repairs(demo_app, module_playbook, docker_client, tmp_path):
    demo = demo_app
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"random kill points seeded with {seed}")
    demo.add_note("kept", "in the first set")
    uploads = docker_client.volumes.get(f"{demo.name}_uploads").attrs["Mountpoint"]
    # enough incompressible data that reading the volume takes a measurable while
    with open(os.path.join(uploads, "big.bin"), "wb") as handle:
        handle.write(os.urandom(24 * 1024 * 1024))
    with open(os.path.join(uploads, "small.txt"), "wb") as handle:
        handle.write(b"first set\n")
    uploads_then = tree(Path(uploads))

    run, first = module_playbook(BACKUP, params(demo))
    assert run.rc == 0, run.stdout[-3000:]
    first_id = first["set_id"]
    first_dir = ledger(demo) / "backups" / first_id
    first_files = tree(first_dir)
    demo.add_note("lost", "written after the first set")

    inventory = inventory_for(demo, tmp_path)
    backups = ledger(demo) / "backups"
    kill_points = [
        # (what was interrupted, file that shows the run reached it, extra delay, consistency)
        ("the database dump", "database-", 0.0, {}),
        ("the last archive and the manifest write", "path-config", rng.uniform(0, 0.03), {}),
        # last: the demo app does not reconnect to a restarted database; the restore below restarts it
        ("a volume archive (database stopped for it)", "volume-dbdata", rng.uniform(0, 0.05), {"dbdata": "stop"}),
    ]
    for what, marker, delay, consistency in kill_points:
        before_states = states(docker_client, demo.name)
        playbook = module_play(tmp_path / "backup.yml", BACKUP, params(demo, consistency=consistency))
        run_bg = Background(tmp_path, inventory, playbook)
        reached: dict[str, Path] = {}

        def got_there(marker: str = marker) -> bool:
            partial = newest_partial(demo)
            if partial is not None and files_in(partial, marker):
                reached["set"] = partial
            return "set" in reached

        run_bg.wait_for(got_there, what=f"the backup reaching {what}")
        time.sleep(delay)
        alive = bool(run_bg.module_pids())
        # around the manifest the run may just have ended: then its set must be whole (checked below)
        assert alive or "manifest" in what, f"no backup module runs under ansible-playbook during {what}"
        killed = reached["set"]
        run_bg.kill()
        seen = states(docker_client, demo.name)
        # no partial set is marked complete: the killed set has a manifest only if it is whole
        if (killed / "manifest.json").exists():
            run, verified = module_playbook(VERIFY, params(demo, set_id=killed.name, checks=["deep"]))
            assert run.rc == 0 and verified["passed"], (what, verified)
        assert first_id in complete_sets(demo)
        assert tree(first_dir) == first_files, f"the first set changed when {what} was killed"

        # the next run needs no repair: it clears the partial set and puts containers back
        run, after = module_playbook(BACKUP, params(demo))
        assert run.rc == 0, (what, run.stdout[-3000:])
        assert set(states(docker_client, demo.name).values()) == {"running"}, (what, seen, states(docker_client, demo.name))
        assert before_states == states(docker_client, demo.name)
        assert all((backups / s / "manifest.json").exists() for s in set_dirs(demo)), (what, set_dirs(demo))
        if not consistency:
            demo.wait_healthy(timeout=30)
        print(f"killed during {what} (module alive: {alive}): containers were {seen}; next run: {after['actions']}")

    # the previous set still restores byte for byte
    run, restored = module_playbook(RESTORE, params(demo, set_id=first_id, force=True))
    assert run.rc == 0, run.stdout[-3000:]
    demo.wait_healthy()
    assert tree(Path(uploads)) == uploads_then
    assert [n["title"] for n in demo.notes()] == ["kept"]
