# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup benchmark: the backup and deep verification modules, as whole processes, against the
baselines on the same data in the same run (median of N, runs interleaved).

Ours is timed the way Ansible runs it on a managed host: the AnsiballZ payload of
``selfhost.rollback.backup`` (and of ``backup_verify`` with ``checks: [deep]``), written once by an
ad-hoc ``ansible`` run with ANSIBLE_KEEP_REMOTE_FILES and then executed as its own Python process,
start-up, imports, ``docker compose config`` and the engine's API included. The app is a compose
project whose only source is a bind path holding the data (local backend, zstd). The same
modules on an app with one small file give the start-up share. The code path alone
(``_capture.run_backup``, ``_verify.deep_check`` in this process) is shown too.

Baselines: ``tar | zstd -1 -T0``, a first ``restic backup`` into a fresh repository (password in
a file, never on argv), and ``sha256sum`` of every file.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENV = os.environ.get("SELFHOST_VENV", os.path.join(REPO, ".venv"))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(VENV, "collections"))

from data import make_dataset, make_large_dataset  # noqa: E402  (path set above)

from ansible_collections.selfhost.rollback.plugins.module_utils import _capture, _sets, _sources, _verify  # noqa: E402
from ansible_collections.selfhost.rollback.plugins.module_utils._app import validate_app  # noqa: E402
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger  # noqa: E402


CPU: dict[str, list[float]] = {}
# the backup is judged on the large set (a fixed start-up stops mattering there); the start-up on its own
TARGETS = {"backup": 1.3, "verify": 1.2, "startup_s": 0.5}


def sha_extensions() -> str:
    """Whether this CPU has SHA-256 instructions (hashlib goes through OpenSSL, which uses them when present)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = set(handle.read().split())
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    found = sorted(flags & {"sha_ni", "sha2"})
    return f"yes ({', '.join(found)}): hashlib (OpenSSL {ssl_version()}) uses them" if found else \
        f"no: hashlib (OpenSSL {ssl_version()}) hashes in software"


def ssl_version() -> str:
    import ssl
    return ssl.OPENSSL_VERSION.split()[1]


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


def make_project(root: str) -> str:
    os.makedirs(os.path.join(root, "data"))
    with open(os.path.join(root, "compose.yaml"), "w") as handle:
        handle.write("services:\n  app:\n    image: scratch\n    volumes: ['./data:/data']\n")
    return os.path.join(root, "data")


class ModuleProcess:
    """One module's AnsiballZ payload, as Ansible leaves it on a managed host, run as a process."""

    def __init__(self, module: str, args: dict, work: str) -> None:
        remote_tmp = os.path.join(work, f"remote-tmp-{module}-{len(os.listdir(work))}")
        env = dict(os.environ, ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=remote_tmp,
                   ANSIBLE_COLLECTIONS_PATH=os.path.join(VENV, "collections"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCALHOST_WARNING="0")
        proc = subprocess.run([os.path.join(VENV, "bin", "ansible"), "localhost", "-c", "local", "-m",
                               f"selfhost.rollback.{module}", "-a", json.dumps(args)],
                              env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"ansible {module} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        self.payload = glob.glob(os.path.join(remote_tmp, "ansible-tmp-*", f"AnsiballZ_{module}.py"))[0]

    def run(self) -> dict:
        proc = subprocess.run([sys.executable, self.payload], capture_output=True, text=True, check=False)
        result = json.loads(proc.stdout)
        if result.get("failed"):
            raise SystemExit(f"{self.payload} failed: {result.get('msg')}")
        return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--random-mb", type=int, default=300)
    parser.add_argument("--text-mb", type=int, default=280)
    parser.add_argument("--small-files", type=int, default=5000)
    parser.add_argument("--large-gb", type=float, default=4.0, help="size of the large data set (0 skips it)")
    parser.add_argument("--large-runs", type=int, default=3)
    args = parser.parse_args()
    print(f"SHA-256 instructions on this CPU: {sha_extensions()}")

    work = tempfile.mkdtemp(prefix="selfhost-bench-", dir=args.workdir)
    try:
        project = os.path.join(work, "project")
        data = make_project(project)
        began = time.perf_counter()
        total = make_dataset(data, args.random_mb, args.text_mb, args.small_files)
        files = sum(len(names) for _root, _dirs, names in os.walk(data))
        print(f"data: {total / 1e6:.0f} MB in {files} files (made in {time.perf_counter() - began:.1f} s)")
        small = os.path.join(work, "small")
        with open(os.path.join(make_project(small), "one.txt"), "w") as handle:
            handle.write("one small file\n")
        sh(f"cat $(find {data} -type f) > /dev/null")  # same page-cache state for everyone

        store = os.path.join(work, "store")
        declared = {"name": "bench", "project_dir": project, "paths": ["data"], "volumes": []}
        backup = ModuleProcess("backup", {"app": declared, "store": store, "compression": "zstd"}, work)
        verify = ModuleProcess("backup_verify", {"app": declared, "store": store, "checks": ["deep"]}, work)
        small_args = {"app": dict(declared, name="bench-small", project_dir=small), "store": store, "compression": "zstd"}
        small_backup = ModuleProcess("backup", small_args, work)
        small_verify = ModuleProcess("backup_verify", {"app": small_args["app"], "store": store, "checks": ["deep"]}, work)
        ledger = Ledger(store, "bench")
        for entry in _sets.list_sets(ledger):  # the sets the payloads were written by
            shutil.rmtree(ledger.path("backups", entry["set_id"]))

        app = validate_app(dict(declared, compose_files=None, env_file=".env", databases=[], health=None, schema_probe=None))
        options = _capture.BackupOptions(backend="local", compression="zstd", space_check=True)
        plan = {"sources": _sources.resolve_sources(app, _NoDocker(), {"services": {"app": {}}, "volumes": {}}, {})[0],
                "skipped": [], "schema": None, "warnings": []}
        restic_env = dict(os.environ)
        password_file = os.path.join(work, "restic-password")
        with open(password_file, "w") as handle:
            handle.write("throwaway-bench-password")
        os.chmod(password_file, 0o600)
        restic_env["RESTIC_PASSWORD_FILE"] = password_file

        names = ["tar|zstd", "ours: backup", "ours: backup start-up", "ours: backup code path", "restic first backup",
                 "sha256sum", "ours: deep verify", "ours: verify start-up", "ours: verify code path"]
        results: dict[str, list[float]] = {name: [] for name in names}
        for run in range(args.runs):
            target = os.path.join(work, "baseline.tar.zst")
            results["tar|zstd"].append(timed(lambda: sh(f"tar -C {data} -cf - . | zstd -1 -T0 -q -c > {target}"), "tar|zstd"))
            os.unlink(target)
            outcome: dict = {}
            results["ours: backup"].append(timed(lambda: outcome.update(backup.run()), "ours: backup"))
            results["ours: backup start-up"].append(timed(small_backup.run, "ours: backup start-up"))
            repo = os.path.join(work, f"restic-{run}")
            sh(f"restic init -q -r {repo}", restic_env)
            results["restic first backup"].append(timed(lambda: sh(f"restic -q -r {repo} backup {data}", restic_env), "restic first backup"))
            shutil.rmtree(repo)
            results["sha256sum"].append(timed(lambda: sh(f"find {data} -type f -print0 | xargs -0 sha256sum"), "sha256sum"))
            verified: dict = {}
            results["ours: deep verify"].append(timed(lambda: verified.update(verify.run()), "ours: deep verify"))
            if not verified.get("passed") or verified.get("set_id") != outcome["set_id"]:
                print("deep verify failed:", verified.get("failures"))
                return 1
            results["ours: verify start-up"].append(timed(small_verify.run, "ours: verify start-up"))
            shutil.rmtree(ledger.path("backups", outcome["set_id"]))
            # the same code paths inside this process, for the share the process adds
            inner: dict = {}
            results["ours: backup code path"].append(timed(lambda: inner.update(_run_ours(app, ledger, options, plan)), "ours: backup code path"))
            entry = _sets.load_set(ledger, inner["set_id"])
            checks: list = []
            results["ours: verify code path"].append(timed(lambda: checks.extend(
                _verify.deep_check(ledger.path("backups", entry["set_id"]), entry["manifest"], None)), "ours: verify code path"))
            if not all(check["passed"] for check in checks):
                print("deep check failed:", checks)
                return 1
            shutil.rmtree(ledger.path("backups", entry["set_id"]))

        median = medians(results, total, f"\nmedian of {args.runs} (seconds; each run interleaves all of them):")
        backup_ratio = median["ours: backup"] / median["tar|zstd"]
        restic_ratio = median["ours: backup"] / median["restic first backup"]
        verify_ratio = median["ours: deep verify"] / median["sha256sum"]
        print("\nratios (ours as whole module processes):")
        print(f"  backup / tar|zstd -1 -T0      {backup_ratio:.2f}x   (on this small set; judged on the large set below)")
        print(f"  backup / restic first backup  {restic_ratio:.2f}x   (goal: < 1.0x)   {'ok' if restic_ratio < 1.0 else 'MISSED'}")
        print(f"  deep verify / sha256sum       {verify_ratio:.2f}x   (goal: <= {TARGETS['verify']}x)  "
              f"{'ok' if verify_ratio <= TARGETS['verify'] else 'MISSED'}")
        print(f"  start-up: {median['ours: backup start-up']:.2f} s of the backup ({median['ours: backup start-up'] / median['ours: backup']:.0%}), "
              f"{median['ours: verify start-up']:.2f} s of the deep verify ({median['ours: verify start-up'] / median['ours: deep verify']:.0%}); "
              f"code path alone {median['ours: backup code path'] / median['tar|zstd']:.2f}x and "
              f"{median['ours: verify code path'] / median['sha256sum']:.2f}x")
        startup = median["ours: backup start-up"]
        print(f"  backup start-up alone          {startup:.2f} s   (goal: <= {TARGETS['startup_s']} s)  "
              f"{'ok' if startup <= TARGETS['startup_s'] else 'MISSED'}")
        ok = restic_ratio < 1.0 and verify_ratio <= TARGETS["verify"] and startup <= TARGETS["startup_s"]
        if args.large_gb > 0:
            ok = large_set(work, args) and ok
        return 0 if ok else 2
    finally:
        shutil.rmtree(work, ignore_errors=True)


def medians(results: dict[str, list[float]], total: int, heading: str) -> dict[str, float]:
    """Print each measurement's median (seconds, MB/s of the data, CPU seconds, every run) and return them."""
    median = {name: statistics.median(values) for name, values in results.items()}
    print(heading)
    for name, value in median.items():
        print(f"  {name:24s} {value:6.2f} s   {total / 1e6 / value:7.0f} MB/s   cpu {statistics.median(CPU[name]):5.2f} s   "
              f"runs: {', '.join('%.2f' % v for v in results[name])}")
    return median


def large_set(work: str, args: argparse.Namespace) -> bool:
    """The backup module as a whole process against tar | zstd on the large set, runs interleaved."""
    project = os.path.join(work, "large")
    data = make_project(project)
    began = time.perf_counter()
    total = make_large_dataset(data, args.large_gb)
    files = sum(len(names) for _root, _dirs, names in os.walk(data))
    print(f"\nlarge set: {total / 1e9:.2f} GB in {files} files (models, logs, a database dump, uploads; "
          f"made in {time.perf_counter() - began:.1f} s)")
    sh(f"cat $(find {data} -type f) > /dev/null")
    store = os.path.join(work, "large-store")
    declared = {"name": "bench-large", "project_dir": project, "paths": ["data"], "volumes": []}
    backup = ModuleProcess("backup", {"app": declared, "store": store, "compression": "zstd"}, work)
    ledger = Ledger(store, "bench-large")
    for entry in _sets.list_sets(ledger):
        shutil.rmtree(ledger.path("backups", entry["set_id"]))
    results: dict[str, list[float]] = {"tar|zstd (large)": [], "ours: backup (large)": []}
    for _run in range(args.large_runs):
        target = os.path.join(work, "large-baseline.tar.zst")
        results["tar|zstd (large)"].append(timed(lambda: sh(f"tar -C {data} -cf - . | zstd -1 -T0 -q -c > {target}"),
                                                 "tar|zstd (large)"))
        os.unlink(target)
        outcome: dict = {}
        results["ours: backup (large)"].append(timed(lambda: outcome.update(backup.run()), "ours: backup (large)"))
        shutil.rmtree(ledger.path("backups", outcome["set_id"]))
    median = medians(results, total, f"median of {args.large_runs}:")
    ratio = median["ours: backup (large)"] / median["tar|zstd (large)"]
    print(f"  backup / tar|zstd -1 -T0 on the large set  {ratio:.2f}x   (goal: <= {TARGETS['backup']}x)  "
          f"{'ok' if ratio <= TARGETS['backup'] else 'MISSED'}")
    return ratio <= TARGETS["backup"]


class _NoDocker:
    """The bench app has no containers: a bind path is read straight from disk."""

    class containers:  # noqa: N801  (mimics the SDK's attribute)
        @staticmethod
        def list(**_kwargs):
            return []


def _run_ours(app: dict, ledger: Ledger, options: _capture.BackupOptions, plan: dict) -> dict:
    with ledger.lock(0, "bench"):
        outcome = _capture.run_backup(app, _NoDocker(), ledger, options, plan)
    return {"set_id": outcome["manifest"]["set_id"]}


if __name__ == "__main__":
    sys.exit(main())
