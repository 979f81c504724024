"""Each role's README is generated from its argument specs and kept in step with them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "role_readmes.py"


@pytest.mark.skipif(not SCRIPT.exists(), reason="the generator is not shipped in the collection tarball")
def test_role_readmes_match_their_argument_specs():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
