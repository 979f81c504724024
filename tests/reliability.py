"""Helpers for the reliability suite (tests/integration/test_reliability_*.py): runs in the
background that can be killed with SIGKILL, snapshots of everything a run could change, and a
sampler of process command lines."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from conftest import COLLECTIONS_PATH, VENV_PYTHON, write_inventory

PLAYBOOK_BIN = str(Path(VENV_PYTHON).parent / "ansible-playbook")


def inventory_for(demo, tmp_path: Path, **group_vars: Any) -> Path:
    variables = {"rollback_apps": [demo.definition()], "rollback_store": str(demo.store)}
    variables.update(group_vars)
    return write_inventory(tmp_path / f"inventory-{demo.name}.json", group_vars=variables)


def ledger(demo) -> Path:
    return demo.store / demo.name


def set_dirs(demo, store: Path | None = None) -> list[str]:
    directory = (store or demo.store) / demo.name / "backups"
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("b-")) if directory.exists() else []


def complete_sets(demo, store: Path | None = None) -> list[str]:
    directory = (store or demo.store) / demo.name / "backups"
    return [name for name in set_dirs(demo, store) if (directory / name / "manifest.json").exists()]


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: type, mode and content digest (or link target)."""
    found: dict[str, tuple] = {}
    if not root.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", oct(st.st_mode & 0o7777))
            else:
                found[rel] = ("file", oct(st.st_mode & 0o7777), hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def project_state(demo, docker_client) -> dict[str, Any]:
    """What a run could change: containers (id, state, image), project files, ledger."""
    containers = {c.name: (c.id, c.status, c.image.id) for c in docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={demo.name}"})}
    # images: those the app's containers run (other tests share the engine's image list)
    return {
        "containers": containers,
        "project": tree(demo.project_dir),
        "ledger": tree(demo.store),
    }


def states(docker_client, project: str) -> dict[str, str]:
    return {c.labels.get("com.docker.compose.service", c.name): c.status for c in docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"})}


def playbook_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_HOST_KEY_CHECKING="False")
    env.update(extra)
    return env


def module_play(path: Path, module: str, params: dict[str, Any]) -> Path:
    play = [{"name": f"run {module}", "hosts": "all", "gather_facts": False,
             "tasks": [{"name": "module under test", module: params}]}]
    path.write_text(json.dumps(play))
    return path


class Background:
    """``ansible-playbook`` in its own process group, so that SIGKILL reaches the module too."""

    def __init__(self, tmp_path: Path, inventory: Path, playbook: str | Path, extra: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, args: list[str] | None = None) -> None:
        cmd = [PLAYBOOK_BIN, "-i", str(inventory), str(playbook), *(args or [])]
        if extra:
            extra_file = tmp_path / f"extra-{time.monotonic_ns()}.json"
            extra_file.write_text(json.dumps(extra))
            cmd += ["-e", f"@{extra_file}"]
        self.output = tmp_path / f"background-{time.monotonic_ns()}.log"
        self._out = open(self.output, "wb")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(cmd, env=env or playbook_env(tmp_path), stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 120, what: str = "the condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (rc {self.proc.returncode}) before {what}:\n{self.log()[-3000:]}")
            time.sleep(0.002)
        raise AssertionError(f"{what} did not happen within {timeout} s:\n{self.log()[-3000:]}")

    def tree_pids(self) -> list[int]:
        """ansible-playbook and every descendant: its workers call setsid(), so a process group
        does not reach them, and the module runs under a worker."""
        return [self.proc.pid] + descendants(self.proc.pid)

    def signal(self, signum: int, frozen: Callable[[], Any] | None = None) -> None:
        """Send ``signum`` to the run and everything it started (frozen first, so none escapes;
        ``frozen`` is called while all of it is stopped)."""
        pids = self.tree_pids()
        if signum != signal.SIGCONT:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            pids = self.tree_pids()
        if frozen is not None:
            frozen()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def module_pids(self) -> list[int]:
        """The processes of the module (AnsiballZ) under this run."""
        found = []
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                if b"AnsiballZ_" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
        return found

    def kill(self, frozen: Callable[[], Any] | None = None) -> None:
        """kill -9 of the whole run: ansible-playbook, its workers, the module and its children
        (``frozen`` is called once all of them are stopped, just before the kill)."""
        pids = self.tree_pids()
        self.signal(signal.SIGKILL, frozen)
        self.proc.wait(30)
        self._out.close()
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def wait(self, timeout: float = 600) -> int:
        rc = self.proc.wait(timeout)
        self._out.close()
        return rc

    def log(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.output.read_text(errors="replace")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def files_in(directory: Path, prefix: str) -> bool:
    try:
        return any(name.startswith(prefix) for name in os.listdir(directory))
    except FileNotFoundError:
        return False


def newest_partial(demo) -> Path | None:
    directory = demo.store / demo.name / "backups"
    partial = [name for name in set_dirs(demo) if not (directory / name / "manifest.json").exists()]
    return directory / partial[-1] if partial else None


class CmdlineSampler(threading.Thread):
    """Reads every process's command line in a loop while a run goes on."""

    def __init__(self, needles: list[str], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.needles = [n.encode() for n in needles]
        self.interval = interval
        self.samples = 0
        self.processes: set[int] = set()
        self.hits: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        own = os.getpid()
        while not self._halt.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == own:
                    continue
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        cmdline = handle.read()
                except OSError:
                    continue
                self.processes.add(int(entry))
                for needle in self.needles:
                    if needle in cmdline:
                        self.hits.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
            self.samples += 1
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
