"""The restore-points report against a real ledger, rendered in a real headless browser and read back
through a real node exporter."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import VENV_PYTHON, free_port, write_inventory


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

    # the same figures through a real node exporter; an app declared but never recorded is red there
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    declared = [demo_app.definition(), {"name": "forgotten", "project_dir": str(tmp_path)}]
    run = run_playbook("selfhost.rollback.report", {"report_dest": str(dest), "report_textfile": str(textdir / "selfhost.prom"),
                                                    "rollback_apps": declared}, inventory=inventory)
    assert run.task("Write the report on the controller")["result"]["textfile"] == str(textdir / "selfhost.prom")
    assert oct((textdir / "selfhost.prom").stat().st_mode & 0o777) == "0o644"
    metrics = scrape_node_exporter(textdir)
    labels = f'app="{demo_app.name}",host="localhost"'
    assert metrics[f"selfhost_rollback_app_mark{{{labels}}}"] == 0
    assert metrics['selfhost_rollback_app_mark{app="forgotten",host="localhost"}'] == 2
    assert metrics[f"selfhost_rollback_drill_passed{{{labels}}}"] == 1
    assert metrics[f"selfhost_rollback_drill_time_to_healthy_seconds{{{labels}}}"] == pytest.approx(record["timings"]["time_to_healthy_s"])
    model = json.loads((dest / "restore-points.json").read_text())
    app = next(a for h in model["hosts"] if h["host"] == "localhost" for a in h["apps"] if a["name"] == demo_app.name)
    assert metrics[f"selfhost_rollback_backup_bytes{{{labels}}}"] == app["newest_verified"]["bytes"] > 0
    assert abs(metrics[f"selfhost_rollback_backup_age_seconds{{{labels}}}"] - app["newest_verified"]["age_s"]) <= 1
    assert metrics['selfhost_rollback_app_mark{app="",host="ghost"}'] == 2


def scrape_node_exporter(textdir: Path) -> dict[str, float]:
    """Start Debian's prometheus-node-exporter on the textfile directory only, scrape it once, stop it."""
    port = free_port()
    exporter = subprocess.Popen(["prometheus-node-exporter", "--collector.disable-defaults", "--collector.textfile",
                                 f"--collector.textfile.directory={textdir}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    text = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
    assert "node_textfile_scrape_error 0" in text, text[-500:]
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("selfhost_rollback_")}
