"""Backups are as faithful as tar: a tree hostile to archivers, in a named volume and in a bind
directory of a project started with a plain ``docker compose up -d``, goes through the backup
module, passes the deep check, is destroyed (``down -v`` and the directory emptied) and comes back
through the restore module exactly, entry by entry (times before 1970, at the epoch and after 2038
included). The stored archives then extract exactly with stock GNU tar and
bsdtar, the way the restore runbook tells an operator to by hand."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import fidelity

BACKUP = "selfhost.rollback.backup"
RESTORE = "selfhost.rollback.restore"
VERIFY = "selfhost.rollback.backup_verify"
BUSYBOX = "127.0.0.1:5000/selfhost/tools:busybox"

pytestmark = pytest.mark.skipif(not shutil.which("setfacl") or not shutil.which("setcap") or not shutil.which("bsdtar"),
                                reason="make setup installs acl, libcap2-bin and libarchive-tools")


def test_a_hostile_tree_round_trips_exactly_and_stock_tools_extract_it(tmp_path, module_playbook, docker_client, registry):
    name = f"fid{uuid.uuid4().hex[:8]}"
    project = tmp_path / "project"
    (project / "shared").mkdir(parents=True)
    (project / "compose.yaml").write_text(
        "services:\n"
        "  files:\n"
        f"    image: {BUSYBOX}\n"
        "    command: ['sleep', '3600']\n"
        "    stop_grace_period: 1s\n"
        "    volumes: ['store:/data', './shared:/shared']\n"
        "volumes:\n"
        "  store: {}\n")
    compose = ["docker", "compose", "--project-directory", str(project), "-p", name]
    subprocess.run(compose + ["up", "-d"], check=True, capture_output=True)
    try:
        volume = Path(docker_client.volumes.get(f"{name}_store").attrs["Mountpoint"])
        fidelity.build(str(volume), long_path=False)  # the stock tools below stop at PATH_MAX
        fidelity.build(str(project / "shared"))  # every case, the long path included
        expected = {"store": fidelity.snapshot(str(volume)), "shared": fidelity.snapshot(str(project / "shared"))}
        app = {"name": name, "project_dir": str(project), "project_name": name, "volumes": ["store"], "paths": ["shared"]}
        params = {"app": app, "store": str(tmp_path / "ledger")}

        run, taken = module_playbook(BACKUP, params)
        assert run.rc == 0, run.stdout[-3000:]
        assert taken["notices"] == [], taken["notices"]  # nothing left out, nothing to warn about
        # the deep check reads every archive back against the manifest (times before 1970 included)
        run, verified = module_playbook(VERIFY, {**params, "set_id": taken["set_id"], "checks": ["deep"]})
        assert run.rc == 0 and verified["passed"], run.stdout[-3000:]

        subprocess.run(compose + ["down", "-v"], check=True, capture_output=True)
        shutil.rmtree(project / "shared")
        (project / "shared").mkdir()

        run, restored = module_playbook(RESTORE, {**params, "set_id": taken["set_id"]})
        assert run.rc == 0, run.stdout[-3000:]
        assert restored["not_restored"] == [] and restored["verification"]["passed"], restored
        volume = Path(docker_client.volumes.get(f"{name}_store").attrs["Mountpoint"])
        assert fidelity.differences(expected["store"], fidelity.snapshot(str(volume)))[:10] == []
        assert fidelity.differences(expected["shared"], fidelity.snapshot(str(project / "shared")))[:10] == []

        set_dir = tmp_path / "ledger" / name / "backups" / taken["set_id"]
        manifest = json.loads((set_dir / "manifest.json").read_text())
        archive = set_dir / next(i["archive"] for i in manifest["items"] if i["name"] == "store")
        for tool, line in fidelity.BY_HAND.items():
            dest = tmp_path / tool.replace(" ", "-")
            dest.mkdir()
            proc = subprocess.run(["bash", "-o", "pipefail", "-c", line.format(archive=archive, dest=dest)],
                                  capture_output=True, text=True, check=False)
            assert proc.returncode == 0, (tool, proc.stderr[-2000:])
            assert fidelity.tool_differences(tool, expected["store"], fidelity.snapshot(str(dest)))[:10] == [], tool
    finally:
        subprocess.run(compose + ["down", "-v"], capture_output=True, check=False)
        shutil.rmtree(project / "shared", ignore_errors=True)
