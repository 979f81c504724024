"""Fixtures for tests that need several hosts: the fleet test bed (``tests/fleet.py``).

``fleet`` is three test hosts, each with its own Docker Engine and sshd, reached by
Ansible over real SSH on 127.0.0.1 ports, with the demo app at 1.0 deployed on each by
``demo/deploy.yml``. One fleet serves the whole session (per xdist worker); before each
test it is put back to "demo 1.0, healthy, on every host", so a test may break hosts.

(``tests/integration/__init__.py`` exists so this file is ``integration.conftest`` and
``from conftest import ...`` in test modules still finds ``tests/conftest.py``.)
"""

from __future__ import annotations

import time
from typing import Iterator

import pytest

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
