"""Rollback benchmark: time from the start of `ansible-playbook selfhost.rollback.rollback`
(the image-only case, 1.1 back to 1.0) until the app is healthy, against a bare
`docker compose up -d` to the same images plus waiting for health, in the same run.

The demo app is deployed in a scratch project; it is upgraded to 1.1 with the upgrade
playbook (not timed), then each round times one rollback and one bare switch, and the
figures are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("SELFHOST_VENV", ROOT / ".venv"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_healthy(url: str, version: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and json.loads(response.read())["version"] == version:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"[bench] the app did not become healthy at {version} within {timeout} s")


class Project:
    def __init__(self, workdir: Path) -> None:
        self.name = f"bench-{secrets.token_hex(3)}"
        self.dir = workdir / self.name
        shutil.copytree(ROOT / "demo", self.dir, ignore=shutil.ignore_patterns("*.yml"))
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.store = workdir / "ledger"
        self.url = f"http://127.0.0.1:{self.port}/healthz"
        self.inventory = workdir / "inventory.json"
        app = {"name": self.name, "project_dir": str(self.dir), "health": {"url": self.url},
               "databases": [{"service": "db", "engine": "postgres", "database": "notes", "user": "notes"}],
               "volumes": ["dbdata", "uploads"], "paths": ["config"],
               "schema_probe": {"service": "db", "sql": "select coalesce(max(version), 0) from schema_migrations", "additive": ["2"]}}
        self.inventory.write_text(json.dumps({"all": {
            "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": str(VENV / "bin" / "python")}},
            "vars": {"rollback_apps": [app], "rollback_store": str(self.store)}}}))
        self.env_file(version="1.0")

    def env_file(self, version: str) -> None:
        path = self.dir / ".env"
        path.write_text(f"NOTES_DB_PASSWORD={self.password}\nNOTES_PORT={self.port}\nNOTES_VERSION={version}\n")
        path.chmod(0o600)

    def compose(self, *args: str) -> None:
        subprocess.run(["docker", "compose", "--project-directory", str(self.dir), "-p", self.name, *args],
                       check=True, capture_output=True)

    def playbook(self, name: str, extra: dict | None = None, check: bool = True) -> float:
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(VENV / "collections"), ANSIBLE_NOCOLOR="1")
        cmd = [str(VENV / "bin" / "ansible-playbook"), "-i", str(self.inventory), name]
        if extra:
            cmd += ["-e", json.dumps(extra)]
        began = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        elapsed = time.monotonic() - began
        if check and proc.returncode != 0:
            raise SystemExit(f"[bench] {name} failed:\n{proc.stdout[-2000:]}")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="selfhost-rollback-bench-"))
    project = Project(workdir)
    try:
        project.compose("up", "-d", "--wait")
        wait_healthy(project.url, "1.0")
        rollbacks, bares = [], []
        for round_no in range(1, args.rounds + 1):
            # to 1.1 with the collection (records releases, backups, baselines; not timed)
            project.playbook("selfhost.rollback.upgrade", {"upgrade_env": {"NOTES_VERSION": "1.1"}, "upgrade_max_backup_age": 0})
            wait_healthy(project.url, "1.1")
            took = project.playbook("selfhost.rollback.rollback")
            wait_healthy(project.url, "1.0", timeout=5)  # the playbook returns once the app passed its health gate
            rollbacks.append(took)
            # the same switch by hand: bare compose up to the 1.1 images, then back to 1.0, waiting for health
            # (from the unpinned compose file: the rollback put back 1.0's file, pinned by digest)
            shutil.copy(ROOT / "demo" / "compose.yaml", project.dir / "compose.yaml")
            project.env_file("1.1")
            project.compose("up", "-d")
            wait_healthy(project.url, "1.1")
            project.env_file("1.0")
            began = time.monotonic()
            project.compose("up", "-d")
            wait_healthy(project.url, "1.0")
            bares.append(time.monotonic() - began)
            print(f"round {round_no}: rollback playbook to healthy {rollbacks[-1]:.1f} s, "
                  f"bare 'docker compose up -d' + health {bares[-1]:.1f} s", flush=True)
        rollback, bare = statistics.median(rollbacks), statistics.median(bares)
        print(f"\nrollback (image-only) to healthy: {rollback:.1f} s; bare compose up + health: {bare:.1f} s; "
              f"ratio {rollback / bare:.2f}x (target at most 3x; median of {args.rounds})")
    finally:
        subprocess.run(["docker", "compose", "--project-directory", str(project.dir), "-p", project.name, "down", "-v",
                        "--remove-orphans"], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
