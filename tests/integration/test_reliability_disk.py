"""Reliability: the backup target fills up. A clear error, nothing marked complete, the
containers back as they were, and the sets taken before still verify."""

from __future__ import annotations

import os
import subprocess

from reliability import complete_sets, set_dirs, states

BACKUP = "selfhost.rollback.backup"
VERIFY = "selfhost.rollback.backup_verify"


def test_full_target_fails_clearly_and_earlier_sets_still_verify(demo_app, module_playbook, docker_client, tmp_path):
    demo = demo_app
    small = tmp_path / "small-store"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(small)], check=True)
    try:
        params = {"app": demo.definition(), "store": str(small)}
        run, first = module_playbook(BACKUP, params)
        assert run.rc == 0, run.stdout[-3000:]
        before = states(docker_client, demo.name)
        uploads = docker_client.volumes.get(f"{demo.name}_uploads").attrs["Mountpoint"]
        with open(os.path.join(uploads, "big.bin"), "wb") as handle:
            handle.write(os.urandom(16 * 1024 * 1024))

        run, result = module_playbook(BACKUP, params)
        assert run.rc != 0 and "not enough free space" in result["msg"] and "\n" not in result["msg"], result["msg"]
        # past the estimate, the file system fills in the middle of the archive
        run, result = module_playbook(BACKUP, {**params, "space_check": False})
        assert run.rc != 0 and "full" in result["msg"] and "\n" not in result["msg"], result["msg"]
        assert result["msg"].startswith(f"backup of app {demo.name} failed: ")
        assert set_dirs(demo, small) == complete_sets(demo, small) == [first["set_id"]]
        assert states(docker_client, demo.name) == before
        assert demo.password not in run.stdout

        run, verified = module_playbook(VERIFY, {**params, "set_id": first["set_id"], "checks": ["deep"]})
        assert run.rc == 0 and verified["passed"], verified
    finally:
        subprocess.run(["umount", str(small)], check=False)
