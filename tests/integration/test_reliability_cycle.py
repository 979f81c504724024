"""Reliability through one whole cycle of the playbooks, run as an operator debugging would
run them: -vvvv, --diff, a log file (ANSIBLE_LOG_PATH), and umask 000.

- check mode (case 7): --check --diff of every playbook changes nothing (containers, images
  they run, project files, ledger) and still says what would change;
- an interrupted rollback (case 10): kill -9 in the middle of its switch, the next run converges;
- secrets (case 5): the demo's password appears in no output, log, ledger file, note, report,
  nor in any process command line sampled (/proc/*/cmdline) while the playbooks run;
- modes (case 6): under umask 000 every file the runs wrote is 0600, every directory 0700.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from conftest import REPO
from reliability import Background, CmdlineSampler, inventory_for, ledger, playbook_env, project_state

ARGS = dict(verbosity=4, diff=True)


def test_full_cycle_keeps_secrets_modes_and_check_mode_promises(demo_app, run_playbook, docker_client, tmp_path):
    demo = demo_app
    reports = tmp_path / "reports"
    # latency is not what this test judges, and -vvvv with a /proc sampler slows the machine
    inventory = inventory_for(demo, tmp_path, report_dest=str(reports), rollback_max_p99_ratio=50, drill_fail_on_failure=False,
                              pre_upgrade_archive_images=True)  # the whole product, image archive included
    log = tmp_path / "ansible.log"
    env = {"ANSIBLE_LOG_PATH": str(log)}
    outputs: list[str] = []
    sampler = CmdlineSampler([demo.password])
    old_umask = os.umask(0)
    sampler.start()
    try:
        def run(playbook: str, extra: dict | None = None, check: bool = False):
            outcome = run_playbook(playbook, extra or {}, inventory=inventory, check=check, env=env, **ARGS)
            outputs.append(outcome.stdout + outcome.stderr)
            assert outcome.rc == 0, f"{playbook} (check={check}) failed:\n{outcome.stdout[-4000:]}"
            return outcome

        def unchanged_by_check(playbook: str, extra: dict | None = None):
            before = project_state(demo, docker_client)
            outcome = run(playbook, extra, check=True)
            assert project_state(demo, docker_client) == before, f"--check of {playbook} changed something"
            assert outcome.changed(), f"--check of {playbook} reported nothing it would change"
            return outcome

        plan = unchanged_by_check("selfhost.rollback.pre_upgrade")
        run("selfhost.rollback.pre_upgrade")
        upgrade = {"upgrade_env": {"NOTES_VERSION": "1.1"}, "upgrade_max_p99_ratio": 50}
        plan = unchanged_by_check("selfhost.rollback.upgrade", upgrade)
        assert plan.task("Would the version change")["result"]["actions"], "the upgrade plan is empty"
        run("selfhost.rollback.upgrade", upgrade)
        assert demo.wait_healthy(timeout=5)["version"] == "1.1"
        plan = unchanged_by_check("selfhost.rollback.rollback")
        assert plan.task("Say the plan")["result"]["msg"][0].startswith("target: r-")

        # kill -9 of the rollback in the middle of its switch; the next run converges
        journal = ledger(demo) / "journal.json"
        killed = Background(tmp_path, inventory, "selfhost.rollback.rollback", env=playbook_env(tmp_path, **env),
                            args=["-vvvv", "--diff"])
        killed.wait_for(journal.exists, timeout=240, what="the rollback opening its journal")
        killed.kill()
        outputs.append(killed.log())
        assert json.loads(journal.read_text())["phase"] == "switching"
        rollback = run("selfhost.rollback.rollback")
        said = [r["result"]["msg"] for r in rollback.results if "Report the interrupted operation" in r["task"] and r["status"] == "ok"]
        assert len(said) == 1 and "stopped during 'switching'" in said[0], said
        assert demo.wait_healthy(timeout=5)["version"] == "1.0" and not journal.exists()
        again = run("selfhost.rollback.rollback")
        assert demo.wait_healthy(timeout=5)["version"] == "1.0", again.stdout[-2000:]

        # every other playbook shipped (drill, report…): check mode first, then for real, on a
        # release with a fresh verified set
        run("selfhost.rollback.pre_upgrade")
        current = json.loads((ledger(demo) / "current_release.json").read_text())["release_id"]
        for playbook in sorted((REPO / "playbooks").glob("*.yml")):
            if playbook.stem in ("pre_upgrade", "upgrade", "rollback"):
                continue
            extra = {"drill": {"drill_target": current}, "restore": {"app": demo.name}}.get(playbook.stem, {})
            before = project_state(demo, docker_client)
            run(f"selfhost.rollback.{playbook.stem}", extra, check=True)
            assert project_state(demo, docker_client) == before, f"--check of {playbook.stem} changed something"
            run(f"selfhost.rollback.{playbook.stem}", extra)
    finally:
        os.umask(old_umask)
        sampler.stop()

    secret = demo.password
    assert sampler.samples > 10 and not sampler.hits, sampler.hits[:3]
    assert all(secret not in text for text in outputs), "the password is in the output of a run"
    assert log.exists() and secret not in log.read_text(errors="replace")
    # the ledger, reports, the controller's run tables and Ansible's temporary files
    roots = (demo.store, reports, tmp_path / "ansible-tmp", Path.home() / ".selfhost-rollback")
    written = [p for root in roots if root.exists() for p in root.rglob("*")]
    leaks = [str(p) for p in written if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    loose = [f"{p} {oct(stat.S_IMODE(p.lstat().st_mode))}" for p in [demo.store, *demo.store.rglob("*")]
             if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) != (0o700 if p.is_dir() else 0o600)]
    assert not loose, loose
    print(f"sampled {sampler.samples} times, {len(sampler.processes)} processes; log {log.stat().st_size} bytes; "
          f"{len(written)} files written under umask 000")
