"""An off-site restic repository over SFTP, on a test host reached by real SSH: the pre_upgrade role
backs up into it and proves the set by a test restore, the verify playbook checks it again, and the
drill role rehearses a rollback from it. The ledger keeps the manifest only, the archives live on
the other host, and the repository password reaches no output."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import uuid

import pytest

from conftest import free_port, write_inventory

HOST_IMAGE = "selfhost/host:bookworm"  # the fleet test hosts' image: sshd with sftp-server


@pytest.fixture
def sftp_host(tmp_path, docker_client):
    """A backup server: sshd only (root by key), on a 127.0.0.1 port."""
    key = tmp_path / "backup-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    name = f"selfhost-sftp-{uuid.uuid4().hex[:8]}"
    setup = ("install -d -m 0700 /root/.ssh && printf '%s\\n' \"$KEY\" > /root/.ssh/authorized_keys && "
             "chmod 0600 /root/.ssh/authorized_keys && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && "
             "install -d -m 0755 /run/sshd && exec /usr/sbin/sshd -D -e")
    container = docker_client.containers.run(HOST_IMAGE, ["-c", setup], entrypoint="bash", name=name, detach=True, remove=True,
                                             environment={"KEY": (tmp_path / "backup-key.pub").read_text().strip()},
                                             ports={"22/tcp": ("127.0.0.1", port)},
                                             labels={"selfhost.rollback.test": "sftp"})
    ssh = ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
    deadline = time.monotonic() + 60
    while subprocess.run([*ssh, "root@127.0.0.1", "true"], capture_output=True, check=False).returncode != 0:
        assert time.monotonic() < deadline, container.logs().decode()[-2000:]
        time.sleep(0.5)
    try:
        yield {"ssh": ssh, "port": port}
    finally:
        container.remove(force=True)


def test_backup_verify_and_drill_from_a_restic_repository_over_sftp(demo_app, run_playbook, sftp_host, tmp_path):
    demo = demo_app
    demo.add_note("order 2041: a teapot")
    password = f"restic-{secrets.token_hex(12)}"
    ssh = " ".join(sftp_host["ssh"])
    restic = {"repository": "sftp:root@127.0.0.1:/srv/restic/shop", "password": password,
              "options": [f"sftp.command={ssh} root@127.0.0.1 -s sftp"]}
    inventory = write_inventory(tmp_path / "inventory.json", group_vars={
        "rollback_apps": [demo.definition()], "rollback_store": str(demo.store),
        "pre_upgrade_backend": "restic", "rollback_restic": restic})

    run = run_playbook("selfhost.rollback.pre_upgrade", inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    backed = run.task("Back up:")["result"]
    proof = run.task("Verify the backup by a test restore")["result"]
    assert proof["passed"] is True, proof
    set_dir = demo.store / demo.name / "backups" / backed["set_id"]
    manifest = json.loads((set_dir / "manifest.json").read_text())
    assert manifest["backend"] == "restic" and {i["kind"] for i in manifest["items"]} >= {"database", "volume"}, manifest
    assert not [p.name for p in set_dir.rglob("*") if p.suffix in (".zst", ".gz", ".tar")], "archives stayed in the ledger"
    # the archives are snapshots on the backup server
    snapshots = subprocess.run([*sftp_host["ssh"], "root@127.0.0.1", "ls /srv/restic/shop/snapshots"],
                               capture_output=True, text=True, check=True).stdout.split()
    for item in manifest["items"]:
        assert any(s.startswith(item["snapshot"]) for s in snapshots), (item["snapshot"], snapshots)

    # checked again by hand, the way the runbook does
    run = run_playbook("selfhost.rollback.verify", {"app": demo.name, "set_id": backed["set_id"], "checks": ["deep"]},
                       inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]

    # and a rollback rehearsed from it, beside production
    release_id = json.loads((demo.store / demo.name / "current_release.json").read_text())["release_id"]
    run = run_playbook("selfhost.rollback.drill", {"drill_target": release_id}, inventory=inventory)
    assert run.rc == 0, run.stdout[-3000:]
    drilled = run.task("Rehearse the rollback in an isolated copy")["result"]
    assert (drilled["passed"], drilled["set_id"]) == (True, backed["set_id"]), drilled
    assert demo.wait_healthy(timeout=5)

    for text in (run.stdout, json.dumps(manifest)):
        assert password not in text
