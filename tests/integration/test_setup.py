"""The set-up scripts fail with a sentence the operator can act on."""

from __future__ import annotations

import os
import socket
import subprocess

from conftest import REPO


def run_setup_host(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "setup-host.sh")], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=False)


def test_second_run_reuses_everything_quickly(docker_client, registry):
    proc = run_setup_host()
    assert proc.returncode == 0, proc.stderr
    assert "installing" not in proc.stdout and "starting" not in proc.stdout
    assert f"registry {registry}: ready" in proc.stdout


def test_port_taken_by_something_else_is_named(docker_client):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        proc = run_setup_host(SELFHOST_REGISTRY=f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert f"port {port} is taken by" in proc.stderr
    assert "it is not a Docker registry. Stop it, or choose another address with SELFHOST_REGISTRY" in proc.stderr


def test_too_little_space_says_how_much_is_needed(docker_client):
    proc = run_setup_host(SELFHOST_MIN_FREE_MB="999999999")
    assert proc.returncode == 1
    assert "the test bed needs about 999999999 MB" in proc.stderr
    assert "Free some space" in proc.stderr
