# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup benchmark: the collection's backup and verification code paths against the
baselines, on the same data in the same run (median of N, runs interleaved).

Ours is called through the module_utils directly (the functions the modules run):
``_capture.run_backup`` on an app whose only source is a bind path holding the data
(local backend, zstd), and ``_verify.deep_check`` on the resulting set. Baselines:
``tar | zstd -1 -T0``, a first ``restic backup`` into a fresh repository (password in
a file, never on argv), and ``sha256sum`` of every file.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".venv", "collections"))

from data import make_dataset  # noqa: E402  (path set above)

from ansible_collections.selfhost.rollback.plugins.module_utils import _capture, _sets, _sources, _verify  # noqa: E402
from ansible_collections.selfhost.rollback.plugins.module_utils._app import validate_app  # noqa: E402
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger  # noqa: E402


CPU: dict[str, list[float]] = {}


def cpu_seconds() -> float:
    """User + system time of this process and every child it waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, name: str = "") -> float:
    cpu = cpu_seconds()
    began = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - began
    if name:
        CPU.setdefault(name, []).append(cpu_seconds() - cpu)
    return elapsed


def sh(cmd: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, env=env, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--random-mb", type=int, default=300)
    parser.add_argument("--text-mb", type=int, default=280)
    parser.add_argument("--small-files", type=int, default=5000)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="selfhost-bench-", dir=args.workdir)
    try:
        project = os.path.join(work, "project")
        data = os.path.join(project, "data")
        os.makedirs(project)
        with open(os.path.join(project, "compose.yaml"), "w") as handle:
            handle.write("services:\n  app:\n    image: scratch\n    volumes: ['./data:/data']\n")
        began = time.perf_counter()
        total = make_dataset(data, args.random_mb, args.text_mb, args.small_files)
        files = sum(len(names) for _root, _dirs, names in os.walk(data))
        print(f"data: {total / 1e6:.0f} MB in {files} files (made in {time.perf_counter() - began:.1f} s)")
        sh(f"cat $(find {data} -type f) > /dev/null")  # same page-cache state for everyone

        app = validate_app({"name": "bench", "project_dir": project, "compose_files": None, "env_file": ".env",
                            "databases": [], "volumes": [], "paths": ["data"], "health": None, "schema_probe": None})
        store = os.path.join(work, "store")
        ledger = Ledger(store, "bench")
        options = _capture.BackupOptions(backend="local", compression="zstd", space_check=True)
        plan = {"sources": _sources.resolve_sources(app, _NoDocker(), {"services": {"app": {}}, "volumes": {}}, {})[0],
                "skipped": []}
        restic_env = dict(os.environ)
        password_file = os.path.join(work, "restic-password")
        with open(password_file, "w") as handle:
            handle.write("throwaway-bench-password")
        os.chmod(password_file, 0o600)
        restic_env["RESTIC_PASSWORD_FILE"] = password_file

        results: dict[str, list[float]] = {"tar|zstd": [], "ours: backup": [], "restic first backup": [],
                                           "sha256sum": [], "ours: deep verify": []}
        for run in range(args.runs):
            target = os.path.join(work, "baseline.tar.zst")
            results["tar|zstd"].append(timed(lambda: sh(f"tar -C {data} -cf - . | zstd -1 -T0 -q -c > {target}"), "tar|zstd"))
            os.unlink(target)
            outcome: dict = {}
            results["ours: backup"].append(timed(lambda: outcome.update(_run_ours(app, ledger, options, plan)), "ours: backup"))
            repo = os.path.join(work, f"restic-{run}")
            sh(f"restic init -q -r {repo}", restic_env)
            results["restic first backup"].append(timed(lambda: sh(f"restic -q -r {repo} backup {data}", restic_env), "restic first backup"))
            shutil.rmtree(repo)
            results["sha256sum"].append(timed(lambda: sh(f"find {data} -type f -print0 | xargs -0 sha256sum"), "sha256sum"))
            entry = _sets.load_set(ledger, outcome["set_id"])
            checks: list = []
            results["ours: deep verify"].append(timed(lambda: checks.extend(
                _verify.deep_check(ledger.path("backups", entry["set_id"]), entry["manifest"], None)), "ours: deep verify"))
            if not all(check["passed"] for check in checks):
                print("deep check failed:", checks)
                return 1
            shutil.rmtree(ledger.path("backups", entry["set_id"]))

        median = {name: statistics.median(values) for name, values in results.items()}
        print(f"\nmedian of {args.runs} (seconds; each run interleaves all five):")
        for name, value in median.items():
            print(f"  {name:22s} {value:6.2f} s   {total / 1e6 / value:7.0f} MB/s   cpu {statistics.median(CPU[name]):5.2f} s   "
                  f"runs: {', '.join('%.2f' % v for v in results[name])}")
        backup_ratio = median["ours: backup"] / median["tar|zstd"]
        restic_ratio = median["ours: backup"] / median["restic first backup"]
        verify_ratio = median["ours: deep verify"] / median["sha256sum"]
        print("\nratios:")
        print(f"  backup / tar|zstd -1 -T0      {backup_ratio:.2f}x   (goal: <= 1.5x)  {'ok' if backup_ratio <= 1.5 else 'MISSED'}")
        print(f"  backup / restic first backup  {restic_ratio:.2f}x   (goal: < 1.0x)   {'ok' if restic_ratio < 1.0 else 'MISSED'}")
        print(f"  deep verify / sha256sum       {verify_ratio:.2f}x   (goal: <= 1.5x)  {'ok' if verify_ratio <= 1.5 else 'MISSED'}")
        cpu_ratio = statistics.median(CPU["ours: backup"]) / statistics.median(CPU["tar|zstd"])
        print(f"  backup cpu / tar|zstd cpu     {cpu_ratio:.2f}x   ({os.cpu_count()} cpus; ours also takes a sha256 of every file "
              "and of every archive)")
        return 0 if backup_ratio <= 1.5 and restic_ratio < 1.0 and verify_ratio <= 1.5 else 2
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _NoDocker:
    """The bench app has no containers: a bind path is read straight from disk."""

    class containers:  # noqa: N801  (mimics the SDK's attribute)
        @staticmethod
        def list(**_kwargs):
            return []


def _run_ours(app: dict, ledger: Ledger, options: _capture.BackupOptions, plan: dict) -> dict:
    with ledger.lock(0, "bench"):
        outcome = _capture.run_backup(app, _NoDockerClient(), ledger, options, plan)
    return {"set_id": outcome["manifest"]["set_id"]}


class _NoDockerClient(_NoDocker):
    pass


if __name__ == "__main__":
    sys.exit(main())
