"""The collection tarball holds what users run, not the test bed, the benchmarks or the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not shutil.which("ansible-galaxy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")),
                    reason="ansible-galaxy is not installed")
def test_the_tarball_holds_what_users_run(tmp_path):
    galaxy = shutil.which("ansible-galaxy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    subprocess.run([galaxy, "collection", "build", "--output-path", str(tmp_path), str(REPO)], check=True, capture_output=True)
    with tarfile.open(next(tmp_path.glob("selfhost-rollback-*.tar.gz"))) as archive:
        names = archive.getnames()
    top = {name.split("/", 1)[0] for name in names}
    assert {"plugins", "roles", "playbooks", "meta", "docs", "README.md", "MANIFEST.json"} <= top
    assert not top & {"bench", "demo", "images", "molecule", "scripts", "Makefile", "requirements-dev.txt", ".venv"}, top
    assert not [n for n in names if n.startswith(("tests/integration", "tests/plugins")) or n in ("tests/fleet.py", "tests/stacks.py")]
    assert "plugins/modules/backup.py" in names and "roles/upgrade/tasks/main.yml" in names
