"""Fixtures for tests that need several hosts: the fleet test bed (``tests/fleet.py``).

``fleet`` is three test hosts, each with its own Docker Engine and sshd, reached by
Ansible over real SSH on 127.0.0.1 ports, with the demo app at 1.0 deployed on each by
``demo/deploy.yml``. One fleet serves the whole session (per xdist worker); before each
test it is put back to "demo 1.0, healthy, on every host", so a test may break hosts.

(``tests/integration/__init__.py`` exists so this file is ``integration.conftest`` and
``from conftest import ...`` in test modules still finds ``tests/conftest.py``.)
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import conftest as harness
import fleet as fleet_lib

FLEET_SIZE = 3
_TIMINGS: dict[str, float] = {}
# The slowest first (seconds per file in a full run on 2 CPUs: the fleet group about 900 on one
# worker, the reliability cycle 560, the real stacks 850, the phases 420, the real apps 610), so
# that the three workers finish together instead of one starting a long test at the end.
SLOW_FIRST = ("test_fleet_rollout.py", "test_reliability_cycle.py", "test_real_stacks.py", "test_operation_phases.py",
              "test_real_apps.py", "test_partial_rollback.py", "test_notifications.py", "test_upgrade_rollback.py",
              "test_reliability_concurrency.py", "test_rollback_check.py",
              "test_pin.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((index for index, name in enumerate(SLOW_FIRST) if f"/{name}::" in f"/{item.nodeid}"), len(SLOW_FIRST))
    items.sort(key=rank)  # stable: tests keep their order within a file


@pytest.fixture(scope="session")
def fleet_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fleet_lib.Fleet]:
    """The session's fleet: started once, removed at the end (also after failures)."""
    started = time.monotonic()
    try:
        fleet_lib.check_host_image()
        fleet_lib.sweep()  # hosts left by runs that were killed before their teardown
        fleet = fleet_lib.up(FLEET_SIZE, tmp_path_factory.mktemp("fleet"))
    except fleet_lib.FleetError as exc:
        pytest.fail(str(exc), pytrace=False)
    _TIMINGS.update({f"fleet {k}": v for k, v in fleet.timings.items()})
    _TIMINGS["fleet up"] = time.monotonic() - started
    try:
        yield fleet
    finally:
        teardown = time.monotonic()
        fleet.down()
        _TIMINGS["fleet down"] = time.monotonic() - teardown


@pytest.fixture
def fleet(fleet_session: fleet_lib.Fleet) -> fleet_lib.Fleet:
    """The fleet with the demo at 1.0 and healthy on every host (repaired if a test broke it)."""
    try:
        fleet_session.repair("1.0")
    except fleet_lib.FleetError as exc:
        pytest.fail(f"the fleet could not be put back to demo 1.0: {exc}", pytrace=False)
    return fleet_session


def pytest_terminal_summary(terminalreporter) -> None:
    if _TIMINGS:
        terminalreporter.write_sep("-", "fleet test bed")
        for name, seconds in _TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")
    _print_profile(terminalreporter)


# --------------------------------------------------------------------------- profile of the run
# Per test file: wall time (setup, call and teardown), CPU seconds of the processes the tests
# started (ansible-playbook and its forks, the docker and compose CLIs), ansible-playbook starts;
# for the whole run: the CPU the containers used and the machine's. Printed at the end of every
# integration run and written to tests/output/profile.json.
CONTAINERS_CPU = "/sys/fs/cgroup/cpuacct/docker/cpuacct.usage"  # cgroup v1, cgroupfs driver; v2 below
CONTAINERS_CPU_V2 = "/sys/fs/cgroup/docker/cpu.stat"
_RUN: dict[str, float] = {}
_CHILDREN: dict[str, float] = {}


def _containers_cpu() -> float | None:
    try:
        return int(Path(CONTAINERS_CPU).read_text()) / 1e9
    except (OSError, ValueError):
        pass
    try:
        usage = dict(line.split() for line in Path(CONTAINERS_CPU_V2).read_text().splitlines())
        return int(usage["usage_usec"]) / 1e6
    except (OSError, ValueError, KeyError):
        return None


def _machine_cpu() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pytest_sessionstart(session: pytest.Session) -> None:
    _RUN.update(wall=time.monotonic(), machine=_machine_cpu(), containers=_containers_cpu() or 0.0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if call.when == "setup":
        _CHILDREN[item.nodeid] = _children_cpu()
    elif call.when == "teardown":
        playbooks, playbook_s = harness._PLAYBOOKS.get(item.nodeid, [0, 0.0])
        cpu = _children_cpu() - _CHILDREN.pop(item.nodeid, _children_cpu())
        report.user_properties.append(("profile", {"cpu_s": cpu, "playbooks": playbooks, "playbook_s": playbook_s}))


def _print_profile(terminalreporter: Any) -> None:
    files: dict[str, dict[str, float]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) not in ("setup", "call", "teardown"):
                continue
            row = files.setdefault(report.nodeid.split("::")[0].rsplit("/", 1)[-1],
                                   {"tests": 0, "wall_s": 0.0, "cpu_s": 0.0, "playbooks": 0, "playbook_s": 0.0})
            row["wall_s"] += report.duration
            for key, value in report.user_properties:
                if key == "profile":
                    row["tests"] += 1
                    for name, number in value.items():
                        row[name] += number
    if not files or not _RUN:
        return
    whole = {"wall_s": time.monotonic() - _RUN["wall"], "machine_cpu_s": _machine_cpu() - _RUN["machine"],
             "containers_cpu_s": (_containers_cpu() or 0.0) - _RUN["containers"]}
    terminalreporter.write_sep("-", "profile: per test file (wall = setup + call + teardown; cpu = processes the tests started)")
    terminalreporter.write_line(f"{'file':40} {'tests':>5} {'wall s':>8} {'cpu s':>8} {'playbooks':>9} {'in playbooks s':>14}")
    for name, row in sorted(files.items(), key=lambda item: -item[1]["wall_s"]):
        terminalreporter.write_line(f"{name:40} {row['tests']:5d} {row['wall_s']:8.0f} {row['cpu_s']:8.0f} {row['playbooks']:9d} "
                                    f"{row['playbook_s']:14.0f}")
    total = {k: sum(r[k] for r in files.values()) for k in ("tests", "wall_s", "cpu_s", "playbooks", "playbook_s")}
    terminalreporter.write_line(f"{'all':40} {total['tests']:5d} {total['wall_s']:8.0f} {total['cpu_s']:8.0f} "
                                f"{total['playbooks']:9d} {total['playbook_s']:14.0f}")
    terminalreporter.write_line(f"run: {whole['wall_s']:.0f} s wall; machine CPU {whole['machine_cpu_s']:.0f} s, of which "
                                f"containers {whole['containers_cpu_s']:.0f} s")
    out = harness.REPO / "tests" / "output"
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps({"files": files, "run": whole}, indent=2))
