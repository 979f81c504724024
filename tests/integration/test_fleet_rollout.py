"""Inventory-wide upgrade and rollback over real SSH on the three-host fleet:
canary first, serial batches, abort, and a per-host table saved on the controller."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from fleet import ansible_bin

# lighter settings than the defaults so that three hosts fit a CI run; the flow is the same.
# Latency against the baseline is not what these tests check (three nested engines on two
# cores answer slowly at times; the latency verdict is unit-tested): health and errors only.
FAST = {"pre_upgrade_archive_images": False, "pre_upgrade_verify_checks": ["deep"], "pre_upgrade_baseline_probes": 5,
        "upgrade_health_probes": 5, "upgrade_health_wait": 60, "upgrade_max_p99_ratio": 0}

# one fleet per pytest worker: keep every fleet test on the same worker
pytestmark = pytest.mark.xdist_group("fleet")


def table(report_dir: Path, kind: str) -> dict[str, dict]:
    files = sorted(report_dir.glob(f"*-{kind}.json"))
    assert files, f"no {kind} table saved in {report_dir}"
    return {row["host"]: row for row in json.loads(files[-1].read_text())["hosts"]}


def test_canary_failure_stops_the_rollout_before_other_hosts(fleet, run_playbook, tmp_path):
    others = [h.name for h in fleet.hosts if h.name != fleet.canary.name]
    before = {name: fleet.container_ids(name) for name in others}
    run = run_playbook("selfhost.rollback.upgrade", dict(FAST, upgrade_env={"NOTES_VERSION": "2.1"}, rollback_report_dir=str(tmp_path)),
                       inventory=fleet.inventory, timeout=1200)
    assert run.rc != 0
    rows = table(tmp_path, "upgrade")
    assert rows[fleet.canary.name]["outcome"] == "reverted", rows
    assert "reverted automatically" in rows[fleet.canary.name]["detail"]
    assert [rows[name]["outcome"] for name in others] == ["not reached", "not reached"]
    assert {name: fleet.container_ids(name) for name in others} == before  # never touched
    assert fleet.wait_healthy(fleet.canary.name, version="1.0")["version"] == "1.0"
    assert all(app["version"] == "1.0" and app["health"] == "ok" for row in rows.values() for app in row["apps"])
    assert "The rollout stopped:" in run.task("Fail the run when a host did not upgrade")["result"]["msg"]
    printed = "\n".join(run.task("Print the table")["result"]["msg"])
    assert fleet.canary.name in printed and "reverted" in printed and "not reached" in printed
    assert (tmp_path / next(p.name for p in tmp_path.glob("*-upgrade.txt"))).stat().st_mode & 0o777 == 0o600


def test_batches_of_one_then_fleet_rollback_of_that_run(fleet, run_playbook, tmp_path):
    run = run_playbook("selfhost.rollback.upgrade", dict(FAST, upgrade_env={"NOTES_VERSION": "1.1"}, rollback_batches=[1],
                                                         rollback_run_id="run-to-1.1", rollback_report_dir=str(tmp_path)),
                       inventory=fleet.inventory, timeout=1500)
    assert run.rc == 0, run.stdout[-3000:]
    rows = table(tmp_path, "upgrade")
    assert {r["outcome"] for r in rows.values()} == {"upgraded"} and len(rows) == 3
    assert all(fleet.wait_healthy(h.name)["version"] == "1.1" for h in fleet.hosts)

    # one host goes down before the rollback: it is reported, the others roll back
    down = fleet.hosts[-1].name
    fleet.stop_host(down)
    run = run_playbook("selfhost.rollback.rollback", {"rollback_run": "run-to-1.1", "rollback_report_dir": str(tmp_path)},
                       inventory=fleet.inventory, timeout=1200)
    assert run.rc != 0
    rows = table(tmp_path, "rollback")
    assert rows[down]["outcome"] == "unreachable", rows
    for host in fleet.hosts[:-1]:
        assert rows[host.name]["outcome"] == "rolled back", rows
        assert fleet.wait_healthy(host.name)["version"] == "1.0"
    fleet.start_host(down)
    fleet.wait_healthy(down, timeout=180)
    run = run_playbook("selfhost.rollback.rollback", {"rollback_run": "run-to-1.1", "rollback_report_dir": str(tmp_path)},
                       inventory=fleet.inventory, timeout=1200)
    assert run.rc == 0, run.stdout[-3000:]
    rows = table(tmp_path, "rollback")
    assert rows[down]["outcome"] == "rolled back" and fleet.wait_healthy(down)["version"] == "1.0"
    assert {rows[h.name]["outcome"] for h in fleet.hosts[:-1]} == {"unchanged"}  # already back: nothing to do


def test_a_host_killed_mid_run_is_reported_and_the_others_end_known(fleet, tmp_path):
    """The last host loses power while the canary is upgrading: the run goes on with the
    hosts it can reach, reports the lost one, and every host ends on a version it can name."""
    victim = next(h.name for h in reversed(fleet.hosts) if h.name != fleet.canary.name)
    survivors = [h.name for h in fleet.hosts if h.name != victim]
    extra = dict(FAST, upgrade_env={"NOTES_VERSION": "1.1"}, rollback_batches=[1], rollback_report_dir=str(tmp_path))
    log = tmp_path / "upgrade.log"
    with open(log, "wb") as out:
        run = subprocess.Popen([ansible_bin("ansible-playbook"), "-i", str(fleet.inventory), "selfhost.rollback.upgrade",
                                "-e", json.dumps(extra)], env=fleet.ansible_env(), cwd=str(fleet.state_dir),
                               stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 900
            while run.poll() is None and time.monotonic() < deadline:
                status, body = fleet.health(fleet.canary.name)
                if status == 200 and body.get("version") == "1.1":
                    break
                time.sleep(0.5)
            assert run.poll() is None, f"the run ended before the canary ran 1.1:\n{log.read_text()[-3000:]}"
            fleet.kill_host(victim)  # mid-run: the canary is on 1.1, the victim not reached yet
            rc = run.wait(1200)
        finally:
            if run.poll() is None:
                run.kill()
    output = log.read_text()
    assert rc != 0, output[-3000:]
    rows = table(tmp_path, "upgrade")
    assert rows[victim]["outcome"] == "unreachable", rows
    assert {rows[name]["outcome"] for name in survivors} == {"upgraded"}, rows
    assert all(fleet.wait_healthy(name, version="1.1")["version"] == "1.1" for name in survivors)
    assert f"{victim} unreachable" in output  # the run's last words name it
    fleet.start_host(victim)  # power back: it never changed
    assert fleet.wait_healthy(victim, timeout=180, version="1.0")["version"] == "1.0"
