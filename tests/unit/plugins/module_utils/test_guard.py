"""The quiesce guard: a watcher that outlives the module puts back exactly what the record names
(the Docker CLI replaced by a script that notes its calls)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ansible_collections.selfhost.rollback.plugins.module_utils import _guard

FAKE_DOCKER = """#!/bin/sh
echo "$@" >> "{log}"
case "$1" in
  inspect) case "$4" in c-paused) echo paused;; c-stopped) echo exited;; *) echo running;; esac;;
esac
"""


def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    log = tmp_path / "docker.log"
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER.format(log=log))
    docker.chmod(0o755)
    return docker, log, tmp_path / "quiesced.json"


def owner_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def write_record(path: Path, pid: int, containers: list[dict]) -> None:
    path.write_text(json.dumps({"owner": {"pid": pid, "start": _guard.process_start(pid)}, "purpose": "backup",
                                "since": "2026-12-02T06:00:00Z", "containers": containers}))


def start_for(proc: subprocess.Popen, docker: Path, record: Path, tmp_path: Path) -> Path:
    out = tmp_path / "guard.json"
    # started as the owner would start it, but naming the owner process explicitly
    subprocess.run([sys.executable, "-c", _guard.WATCHER, str(record), str(tmp_path / "lock"), str(docker), str(proc.pid),
                    str(_guard.process_start(proc.pid)), str(out), "0.05"], check=True, timeout=10)
    return out


def wait_for(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.02)


def test_the_guard_puts_back_what_a_dead_owner_held(tmp_path):
    docker, log, record = setup(tmp_path)
    owner = owner_process()
    write_record(record, owner.pid, [{"id": "c-paused", "name": "app", "mode": "pause"},
                                     {"id": "c-stopped", "name": "db", "mode": "stop"},
                                     {"id": "c-running", "name": "web", "mode": "pause"}])
    out = start_for(owner, docker, record, tmp_path)
    time.sleep(0.3)
    assert not out.exists()  # the owner lives: nothing is touched
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    wait_for(out)
    done = json.loads(out.read_text())
    assert [(a["container"], a["action"], a["ok"]) for a in done["actions"]] == [("app", "unpause", True), ("db", "start", True)]
    assert done["run_pid"] == owner.pid and done["purpose"] == "backup"
    assert not record.exists()
    assert "unpause c-paused" in log.read_text() and "start c-stopped" in log.read_text()
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_the_guard_leaves_when_the_owner_puts_everything_back(tmp_path):
    docker, log, record = setup(tmp_path)
    owner = owner_process()
    write_record(record, owner.pid, [{"id": "c-paused", "name": "app", "mode": "pause"}])
    out = start_for(owner, docker, record, tmp_path)
    record.unlink()  # the owner released its containers
    time.sleep(0.3)
    owner.kill()
    owner.wait()
    time.sleep(0.3)
    assert not out.exists() and not log.exists()


def test_a_record_of_another_run_is_not_the_guards(tmp_path):
    docker, log, record = setup(tmp_path)
    owner = owner_process()
    write_record(record, owner.pid, [{"id": "c-paused", "name": "app", "mode": "pause"}])
    out = start_for(owner, docker, record, tmp_path)
    write_record(record, os.getpid(), [{"id": "c-paused", "name": "app", "mode": "pause"}])  # a new run took over
    owner.kill()
    owner.wait()
    time.sleep(0.4)
    assert not out.exists() and not log.exists() and record.exists()
