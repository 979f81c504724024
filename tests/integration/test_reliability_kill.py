"""Reliability: kill -9 of a backup (ansible-playbook, its workers, the module and its children).

A killed backup must leave the previous set restorable byte for byte, never a partial set
that looks complete, containers it quiesced running again after the next run, and a next
run that succeeds without manual repair. (A rollback killed in its switch: test_reliability_cycle.py.)
"""

from __future__ import annotations

import os
import random
import time
import typing as t
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


GUARD_BOUND_S = 15


def wait_until_back(docker_client, project: str, wanted: dict[str, str], since: float,
                    record: Path | None = None) -> dict[str, str]:
    """Container states once they are ``wanted`` again (and the guard's ``record`` is written, when given);
    fails after GUARD_BOUND_S seconds from ``since``."""
    while True:
        seen = states(docker_client, project)
        if seen == wanted and (record is None or record.exists()):
            return seen
        assert time.monotonic() - since < GUARD_BOUND_S, f"containers still {seen} {GUARD_BOUND_S} s after the kill"
        time.sleep(0.1)


def quiesced_now(demo, docker_client) -> dict[str, t.Any]:
    """While the run is frozen: container states, and whether it holds any of them still."""
    seen = states(docker_client, demo.name)
    held = (ledger(demo) / "quiesced.json").exists() and set(seen.values()) != {"running"}
    return {"states": seen, "quiesced": held}


def params(demo, **extra):
    return {"app": demo.definition(), "store": str(demo.store), **extra}


def seeded(label: str) -> random.Random:
    """A random source whose seed is printed, so that a failing run can be replayed."""
    seed = random.Random().randrange(1 << 30)
    print(f"{label} seeded with {seed}")
    return random.Random(seed)


def fill_uploads(docker_client, demo) -> str:
    """Enough incompressible data in the uploads volume that reading it takes a measurable while."""
    uploads = docker_client.volumes.get(f"{demo.name}_uploads").attrs["Mountpoint"]
    with open(os.path.join(uploads, "big.bin"), "wb") as handle:
        handle.write(os.urandom(24 * 1024 * 1024))
    return uploads


def test_killed_backups_keep_the_previous_set_and_the_next_run_repairs(demo_app, module_playbook, docker_client, tmp_path):
    demo = demo_app
    rng = seeded("random kill points")
    demo.add_note("kept", "in the first set")
    uploads = fill_uploads(docker_client, demo)
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
        at_kill: dict[str, t.Any] = {}
        run_bg.kill(frozen=lambda: at_kill.update(quiesced_now(demo, docker_client)))
        killed_at = time.monotonic()
        quiesced = at_kill["quiesced"]
        # without any further run, the guard puts back what the killed run quiesced
        seen = wait_until_back(docker_client, demo.name, before_states, killed_at,
                               ledger(demo) / "guard.json" if quiesced else None)
        # no partial set is marked complete: the killed set has a manifest only if it is whole
        if (killed / "manifest.json").exists():
            run, verified = module_playbook(VERIFY, params(demo, set_id=killed.name, checks=["deep"]))
            assert run.rc == 0 and verified["passed"], (what, verified)
        assert first_id in complete_sets(demo)
        assert tree(first_dir) == first_files, f"the first set changed when {what} was killed"

        # the next run needs no repair: it clears the partial set and reports what the guard did
        run, after = module_playbook(BACKUP, params(demo))
        assert run.rc == 0, (what, run.stdout[-3000:])
        if quiesced:
            assert any(a.startswith("the guard of an interrupted backup") for a in after["actions"]), after["actions"]
        assert set(states(docker_client, demo.name).values()) == {"running"}, (what, seen, states(docker_client, demo.name))
        assert before_states == states(docker_client, demo.name)
        assert all((backups / s / "manifest.json").exists() for s in set_dirs(demo)), (what, set_dirs(demo))
        if not consistency:
            demo.wait_healthy(timeout=30)
        print(f"killed during {what} (module alive: {alive}): containers were {at_kill['states']}, then {seen}; next run: {after['actions']}")

    # the previous set still restores byte for byte
    run, restored = module_playbook(RESTORE, params(demo, set_id=first_id, force=True))
    assert run.rc == 0, run.stdout[-3000:]
    demo.wait_healthy()
    assert tree(Path(uploads)) == uploads_then
    assert [n["title"] for n in demo.notes()] == ["kept"]


def test_a_backup_killed_anywhere_never_leaves_the_app_frozen(demo_app, module_playbook, docker_client, tmp_path):
    """SIGKILL at ten random points: within 15 s, with no further run, every container that ran runs again."""
    demo = demo_app
    rng = seeded("kill points")
    fill_uploads(docker_client, demo)
    run, first = module_playbook(BACKUP, params(demo))
    assert run.rc == 0, run.stdout[-3000:]
    window = max(float(first["duration_s"]), 0.5)
    inventory = inventory_for(demo, tmp_path)
    before = states(docker_client, demo.name)
    assert set(before.values()) == {"running"}, before
    frozen_at_kill = 0
    for point in range(10):
        # half the points are anywhere in the module's run, half inside the time it holds containers still
        consistency = {"uploads": "stop"} if point % 3 == 2 else {}
        playbook = module_play(tmp_path / f"backup-{point}.yml", BACKUP, params(demo, consistency=consistency))
        (ledger(demo) / "guard.json").unlink(missing_ok=True)  # so that each kill shows its own guard's record
        run_bg = Background(tmp_path, inventory, playbook)
        if point % 2:
            run_bg.wait_for(lambda: bool(run_bg.module_pids()), what="the backup module starting")
            time.sleep(rng.uniform(0, window))
        else:
            run_bg.wait_for(lambda: set(states(docker_client, demo.name).values()) != {"running"},
                            what="the backup quiescing a container")
            time.sleep(rng.uniform(0, 0.25))  # the demo holds the app still for well under a second
        at_kill: dict[str, t.Any] = {}
        run_bg.kill(frozen=lambda: at_kill.update(quiesced_now(demo, docker_client)))
        killed_at = time.monotonic()
        frozen = at_kill["quiesced"]
        frozen_at_kill += frozen
        seen = wait_until_back(docker_client, demo.name, before, killed_at, ledger(demo) / "guard.json" if frozen else None)
        took = time.monotonic() - killed_at
        print(f"kill {point}: containers {at_kill['states']} at the kill, {seen} after {took:.1f} s")
    assert frozen_at_kill >= 4, f"only {frozen_at_kill} of 10 kills found the app quiesced; the test proved too little"
    # the next run converges: partial sets removed, the last guard's work reported
    guarded = (ledger(demo) / "guard.json").exists()
    run, after = module_playbook(BACKUP, params(demo))
    assert run.rc == 0, run.stdout[-3000:]
    assert set_dirs(demo) == complete_sets(demo), set_dirs(demo)
    assert guarded == any(a.startswith("the guard of an interrupted backup") for a in after["actions"]), after["actions"]
    demo.wait_healthy(timeout=30)
