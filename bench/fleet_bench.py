"""Fleet rollback benchmark: the rollback of an upgrade run on three test hosts against
the same rollback on one host, with the same forks, in the same run.

Uses the fleet test bed (tests/fleet.py: hosts with their own Docker Engine and sshd,
reached over real SSH). Each round upgrades the hosts to 1.1 (not timed), then times
`ansible-playbook selfhost.rollback.rollback -e rollback_run=<run>`; the figures are medians.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import typing as t
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAST = {"pre_upgrade_archive_images": False, "pre_upgrade_verify_checks": ["deep"], "pre_upgrade_baseline_probes": 5,
        "upgrade_health_probes": 5, "upgrade_health_wait": 60, "upgrade_max_backup_age": 0}
FORKS = "5"


def timed_rollback(fleet: t.Any, run_id: str, limit: str | None) -> float:
    fleet.ansible_playbook("selfhost.rollback.upgrade", "--forks", FORKS, limit=limit, timeout=1800,
                           extra_vars=dict(FAST, upgrade_env={"NOTES_VERSION": "1.1"}, rollback_run_id=run_id,
                                           rollback_batches=["100%"]))
    began = time.monotonic()
    fleet.ansible_playbook("selfhost.rollback.rollback", "--forks", FORKS, limit=limit, timeout=1800,
                           extra_vars={"rollback_run": run_id})
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))  # the fleet test bed's library lives with the tests
    fleet_lib = importlib.import_module("fleet")
    fleet = fleet_lib.up(3, log=lambda message: print(f"[fleet] {message}", flush=True))
    try:
        ones, threes = [], []
        for round_no in range(1, args.rounds + 1):
            threes.append(timed_rollback(fleet, f"bench-3-{round_no}", None))
            ones.append(timed_rollback(fleet, f"bench-1-{round_no}", fleet.hosts[0].name))
            print(f"round {round_no}: rollback of 3 hosts {threes[-1]:.1f} s, of 1 host {ones[-1]:.1f} s (forks {FORKS})", flush=True)
        three, one = statistics.median(threes), statistics.median(ones)
        print(f"\nfleet rollback, 3 hosts: {three:.1f} s; 1 host: {one:.1f} s; ratio {three / one:.2f}x "
              f"(target at most 1.5x; median of {args.rounds})")
    finally:
        fleet.down()


if __name__ == "__main__":
    main()
