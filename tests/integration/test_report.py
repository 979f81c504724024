"""The restore-points report against a real ledger, rendered in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import VENV_PYTHON, write_inventory


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI; scripts/setup-browser.sh installs it")
    pytest.skip("chromium is not installed (run scripts/setup-browser.sh); the screenshot test needs a real browser")


def screenshot(html: Path, png: Path, profile: Path) -> None:
    profile.mkdir()
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,1600",
                           html.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and png.exists(), proc.stderr[-2000:]


def png_size(png: Path) -> tuple[int, int]:
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_report_after_a_drill_renders_and_matches_the_ledger(demo_app, run_playbook, tmp_path):
    hosts = {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": VENV_PYTHON},
             "ghost": {"ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_connection": "ssh",
                       "ansible_ssh_common_args": "-o ConnectTimeout=3"}}
    inventory = write_inventory(tmp_path / "inventory.json", hosts=hosts, group_vars={
        "rollback_apps": [demo_app.definition()], "rollback_store": str(demo_app.store)})
    demo_app.add_note("kept", "written under 1.0")
    run = run_playbook("selfhost.rollback.pre_upgrade", inventory=inventory, limit="localhost")
    assert run.rc == 0, run.stdout[-3000:]
    run = run_playbook("selfhost.rollback.drill", {"drill_target": "current"}, inventory=inventory, limit="localhost")
    assert run.rc == 0, run.stdout[-3000:]
    drill = run.task("Rehearse the rollback in an isolated copy")["result"]

    dest = tmp_path / "report"
    plan = run_playbook("selfhost.rollback.report", {"report_dest": str(dest)}, inventory=inventory, check=True)
    assert plan.task("Write the report on the controller")["result"]["changed"] is True
    assert not dest.exists()
    run = run_playbook("selfhost.rollback.report", {"report_dest": str(dest), "report_stale_days": 7}, inventory=inventory)
    assert run.rc == 4, run.stdout[-3000:]  # ghost is unreachable: the report still comes, with ghost in red
    result = run.task("Write the report on the controller")["result"]
    page = (dest / "restore-points.html").read_text()
    model = json.loads((dest / "restore-points.json").read_text())

    # the figures match the ledger
    ledger = demo_app.store / demo_app.name
    record = json.loads((ledger / "drills" / f"{drill['drill_id']}.json").read_text())
    current = json.loads((ledger / "current_release.json").read_text())["release_id"]
    host = next(h for h in model["hosts"] if h["host"] == "localhost")
    app = next(a for a in host["apps"] if a["name"] == demo_app.name)
    point = app["restore_points"][0]
    assert (point["release_id"], point["current"], point["mark"]) == (current, True, "green")
    assert point["marks"] == {"image": "green", "backup": "green", "drill": "green"}
    assert point["last_drill"]["drill_id"] == drill["drill_id"]
    for key in ("restore_s", "boot_s", "healthy_s", "time_to_healthy_s"):
        assert point["last_drill"]["timings"][key] == record["timings"][key]
    sets = [p.name for p in (ledger / "backups").iterdir()]
    assert point["backup_set"] in sets
    ghost = next(h for h in model["hosts"] if h["host"] == "ghost")
    assert ghost["mark"] == "red" and "no ledger collected" in ghost["note"]
    assert model["counts"] == {"green": 1, "amber": 0, "red": 0} and result["counts"] == model["counts"]

    # the page shows the same figures, self-contained
    row = re.search(rf'<tr data-release="{current}" data-mark="green">.*?</tr>', page, re.S).group(0)
    for phase in ("restore", "boot", "healthy"):
        assert f'class="t-{phase}">{record["timings"][phase + "_s"]:.1f} s<' in row
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page
    assert demo_app.password not in page and demo_app.password not in json.dumps(model)

    # a real browser renders it
    png = tmp_path / "report.png"
    screenshot(dest / "restore-points.html", png, tmp_path / "profile")
    width, height = png_size(png)
    assert (width, height) == (1280, 1600) and png.stat().st_size > 20000
    shutil.copy(png, Path(os.environ.get("SELFHOST_REPORT_SCREENSHOT", tmp_path / "kept.png")))
