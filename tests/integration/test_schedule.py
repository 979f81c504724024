"""The schedule role into temporary directories: systemd units and a cron file, check mode, real, idempotent, removal."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest


def changed(run) -> set[str]:
    return {name.split(" : ", 1)[-1] for name in run.changed()}


def playbook(tmp_path: Path, **role_vars) -> Path:
    path = tmp_path / f"schedule-{len(list(tmp_path.glob('schedule-*.yml')))}.yml"
    path.write_text(json.dumps([{"name": "Schedule", "hosts": "localhost", "gather_facts": False,
                                 "roles": [{"role": "selfhost.rollback.schedule", "vars": role_vars}]}]))
    return path


def test_systemd_timers_quartet_and_removal(run_playbook, tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    common = {"schedule_backend": "systemd", "schedule_systemd_dir": str(units), "schedule_manage_units": False,
              "schedule_inventory": str(inventory), "schedule_working_dir": str(tmp_path),
              "schedule_env": {"ANSIBLE_COLLECTIONS_PATH": "/opt/collections"},
              "schedule_report_textfile": str(tmp_path / "node-exporter" / "selfhost_rollback.prom")}
    book = playbook(tmp_path, **common)

    check = run_playbook(book, check=True)
    assert check.rc == 0 and "Write the timers" in changed(check), check.stdout[-2000:]
    assert list(units.iterdir()) == []
    real = run_playbook(book)
    assert real.rc == 0 and changed(real) == {"Write the services", "Write the timers", "Write the unit that tells a failed job"}, \
        real.stdout[-2000:]
    assert sorted(p.name for p in units.iterdir()) == sorted(
        [f"selfhost-rollback-{job}.{kind}" for job in ("backup", "prune", "drill", "report") for kind in ("service", "timer")]
        + ["selfhost-rollback-notify@.service"])
    assert "selfhost.rollback.prune -e keep_last=14" in (units / "selfhost-rollback-prune.service").read_text()
    service = (units / "selfhost-rollback-drill.service").read_text()
    timer = (units / "selfhost-rollback-drill.timer").read_text()
    # the units may carry schedule_env: readable by root only
    assert {oct(p.stat().st_mode & 0o777) for p in units.glob("selfhost-rollback-*")} == {"0o600"}
    assert f"-i {inventory} selfhost.rollback.drill" in service and "Type=oneshot" in service
    assert 'Environment="ANSIBLE_COLLECTIONS_PATH=/opt/collections"' in service
    # a failed job tells the operator; the metrics follow every run
    assert "OnFailure=selfhost-rollback-notify@%n.service" in service
    metrics = f"report_textfile={tmp_path / 'node-exporter' / 'selfhost_rollback.prom'}"
    assert "ExecStopPost=-" in service and f"selfhost.rollback.report -e {metrics}" in service
    report = (units / "selfhost-rollback-report.service").read_text()
    assert f"selfhost.rollback.report -e {metrics}" in report and "ExecStopPost" not in report
    notify = (units / "selfhost-rollback-notify@.service").read_text()
    assert "selfhost.rollback.notify -e job=%i -e monitor=${MONITOR_INVOCATION_ID}" in notify
    assert "OnCalendar=Sun *-*-* 03:30:00" in timer and "Persistent=true" in timer
    assert "Unit=selfhost-rollback-drill.service" in timer
    if shutil.which("systemd-analyze"):
        proc = subprocess.run(["systemd-analyze", "calendar", "Sun *-*-* 03:30:00"], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        proc = subprocess.run(["systemd-analyze", "verify", *(str(p) for p in sorted(units.iterdir()))],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
    assert changed(run_playbook(book, check=True)) == set()
    assert changed(run_playbook(book)) == set()

    gone = run_playbook(playbook(tmp_path, schedule_state="absent", **common))
    assert gone.rc == 0 and list(units.iterdir()) == [], gone.stdout[-2000:]


def test_cron_file(run_playbook, tmp_path):
    cron = tmp_path / "cron.d" / "selfhost-rollback"
    cron.parent.mkdir()
    book = playbook(tmp_path, schedule_backend="cron", schedule_cron_file=str(cron), schedule_log_dir=str(tmp_path / "logs"),
                    schedule_inventory="/etc/ansible/hosts", schedule_mailto="owner@shop.example",
                    schedule_jobs=[{"name": "drill", "playbook": "selfhost.rollback.drill", "on_calendar": "weekly",
                                    "cron": "30 3 * * 0", "extra_args": ["-e", "drill_target=previous"]}])
    run = run_playbook(book)
    assert run.rc == 0, run.stdout[-2000:]
    assert cron.stat().st_mode & 0o777 == 0o600  # it may carry schedule_env
    lines = [line for line in cron.read_text().splitlines() if line.startswith("30 3")]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("30 3 * * 0 root cd ") and "flock -n /run/lock/selfhost-rollback-drill.lock" in line
    assert "-i /etc/ansible/hosts selfhost.rollback.drill -e drill_target=previous >> " in line
    log = tmp_path / "logs" / "drill.log"
    # a failure prints one line for cron to mail, and tells rollback_notify's channels once
    assert f'|| {{ echo "selfhost.rollback: the drill job failed on $(hostname); see {log}";' in line
    assert f"selfhost.rollback.notify -e job=drill -e monitor=$INVOCATION_ID >> {log} 2>&1; }}" in line
    assert "MAILTO=owner@shop.example" in cron.read_text().splitlines()
    command = line.split(" root ", 1)[1]
    assert subprocess.run(["sh", "-n", "-c", command], capture_output=True, check=False).returncode == 0, command
    assert changed(run_playbook(book)) == set()


@pytest.mark.parametrize("backend", ["cron"])
def test_removal_of_cron_file(run_playbook, tmp_path, backend):
    cron = tmp_path / "cron"
    common = {"schedule_backend": backend, "schedule_cron_file": str(cron), "schedule_log_dir": str(tmp_path / "logs")}
    assert run_playbook(playbook(tmp_path, **common)).rc == 0 and cron.exists()
    assert run_playbook(playbook(tmp_path, schedule_state="absent", **common)).rc == 0 and not cron.exists()
