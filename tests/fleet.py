"""The multi-host test bed ("fleet"): several test hosts on this machine, each a
container with its own Docker Engine and sshd, reached by Ansible over real SSH on
127.0.0.1 ports, with the demo app deployed on each by ``demo/deploy.yml``.

Used by the pytest fixtures in ``tests/integration/conftest.py``, by the molecule
``fleet`` scenario, and by hand::

    .venv/bin/python tests/fleet.py up --state /tmp/fleet     # prints the inventory path
    .venv/bin/ansible -i /tmp/fleet/inventory.yml all -m ping
    .venv/bin/python tests/fleet.py down --state /tmp/fleet

Each test host gets the demo images with ``docker save | docker load`` (the hosts
reach no registry), so their images have tags but no RepoDigests there.

Everything a fleet creates carries the label ``selfhost.testbed=fleet`` and an owner
label; ``sweep()`` removes what a killed run left behind (its owner process is gone,
or its state directory is) without touching fleets that are still in use.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

REPO = Path(__file__).resolve().parents[1]
HOST_IMAGE = os.environ.get("SELFHOST_HOST_IMAGE", "selfhost/host:bookworm")
REGISTRY = os.environ.get("SELFHOST_REGISTRY", "127.0.0.1:5000")
VENV = Path(os.environ.get("SELFHOST_VENV", REPO / ".venv"))
COLLECTIONS_PATH = VENV / "collections"
NOTES_VERSIONS = ("1.0", "1.1", "2.0", "2.1")
DEMO_IMAGES = (
    *(f"{REGISTRY}/selfhost/notes:{v}" for v in NOTES_VERSIONS),
    f"{REGISTRY}/selfhost/postgres:15",
    f"{REGISTRY}/selfhost/tools:busybox",
)
LABEL = "selfhost.testbed"
LABEL_VALUE = "fleet"
OWNER_LABEL = "selfhost.testbed.owner"
RUN_LABEL = "selfhost.testbed.run"
IMAGE_CACHE_DIR = Path(os.environ.get("SELFHOST_FLEET_CACHE", "/var/tmp"))

# the demo app as deploy.yml puts it on every test host
DEMO_ROOT = "/srv/selfhost-demo"
DEMO_PROJECT = "notes"
DEMO_PROJECT_DIR = f"{DEMO_ROOT}/{DEMO_PROJECT}"
DEMO_PORT = 8080
ROLLBACK_STORE = "/var/lib/selfhost-rollback"

# the flags that let a container run its own dockerd here (plain --privileged fails:
# one capability is not granted on these machines)
HOST_RUN_FLAGS = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run",
)

T = TypeVar("T")


class FleetError(RuntimeError):
    """The test bed could not be brought into the state asked for; the message says why."""


def demo_app_definition() -> dict[str, Any]:
    """The demo app as declared in ``rollback_apps`` on every test host."""
    return {
        "name": DEMO_PROJECT,
        "project_dir": DEMO_PROJECT_DIR,
        "health": {"url": f"http://127.0.0.1:{DEMO_PORT}/healthz"},
        "databases": [{"service": "db", "engine": "postgres", "database": "notes", "user": "notes"}],
        "volumes": ["dbdata", "uploads"],
        "paths": ["config"],
        "schema_probe": {"service": "db", "sql": "select coalesce(max(version), 0) from schema_migrations"},
    }


# --------------------------------------------------------------------------- plumbing


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = 120, stdin: str | bytes | None = None,
         text: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=text, input=stdin, timeout=timeout, check=False, **kwargs)
    if check and proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        raise FleetError(f"{shlex.join(cmd)} failed ({proc.returncode}): {err.strip()[-2000:]}")
    return proc


def _docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return _run(["docker", *args], check=check, timeout=timeout)


def _parallel(func: Callable[..., T], items: Iterable[Any]) -> list[T]:
    """Run ``func`` on every item at once; raise the first failure after all finished."""
    items = list(items)
    if not items:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(func, item) for item in items]
        concurrent.futures.wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
    return [f.result() for f in futures]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def _pid_owner(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"pid:{pid}:{_process_start_time(pid)}"


def _owner_alive(owner: str) -> bool:
    kind, rest = (owner.split(":", 1) + [""])[:2]
    if kind == "pid":
        pid, start = (rest.split(":", 1) + [""])[:2]
        return pid.isdigit() and _process_start_time(int(pid)) == start
    if kind == "state":
        return (Path(rest) / "fleet.json").exists()
    return False


def ansible_bin(name: str) -> str:
    """The venv's ansible tool next to this Python, else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FleetError(f"{name} not found next to {sys.executable} or on PATH; run 'make setup'.")
    return found


def check_host_image() -> None:
    if _docker("image", "inspect", HOST_IMAGE, check=False).returncode != 0:
        raise FleetError(f"the fleet host image {HOST_IMAGE} is missing; run scripts/build-host-image.sh (make setup).")


def _owned(listing: str) -> list[tuple[str, str]]:
    """(name, owner) from 'docker ... --format NAME<TAB>OWNER' lines."""
    return [(line.split("\t", 1) + [""])[:2] for line in listing.splitlines() if line.strip()]  # type: ignore[misc]


def sweep(all_owners: bool = False) -> list[str]:
    """Remove fleet containers and volumes whose owner is gone (or all, with ``all_owners``).

    A run killed before its teardown leaves its test hosts behind; the next fixture
    start calls this. Fleets still in use (live owner process, existing state dir)
    stay. Returns what was removed.
    """
    removed: list[str] = []
    fmt = '{{.Names}}\t{{.Label "' + OWNER_LABEL + '"}}'
    listing = _docker("ps", "-a", "--filter", f"label={LABEL}={LABEL_VALUE}", "--format", fmt).stdout
    stale = [name for name, owner in _owned(listing) if all_owners or not _owner_alive(owner)]
    if stale:
        _docker("rm", "-f", "-v", *stale, check=False, timeout=300)
        removed += stale
    fmt = '{{.Name}}\t{{.Label "' + OWNER_LABEL + '"}}'
    listing = _docker("volume", "ls", "--filter", f"label={LABEL}={LABEL_VALUE}", "--format", fmt).stdout
    for name, owner in _owned(listing):
        if all_owners or not _owner_alive(owner):
            if _docker("volume", "rm", "-f", name, check=False, timeout=300).returncode == 0:
                removed.append(name)
    return removed


def image_archive(images: Sequence[str] = DEMO_IMAGES) -> Path:
    """One ``docker save`` of ``images`` in a cache file, reused while the images stay the same."""
    missing = [i for i in images if _docker("image", "inspect", i, check=False).returncode != 0]
    if missing:
        raise FleetError(f"images missing on this machine: {', '.join(missing)}; run scripts/build-images.sh (make setup).")
    ids = _docker("image", "inspect", "--format", "{{.Id}}", *images).stdout.split()
    key = hashlib.sha256(json.dumps([list(images), ids]).encode()).hexdigest()[:16]
    archive = IMAGE_CACHE_DIR / f"selfhost-fleet-images-{key}.tar"
    if archive.exists():
        return archive
    for old in IMAGE_CACHE_DIR.glob("selfhost-fleet-images-*.tar"):
        if old != archive:  # another worker may have just written this one
            old.unlink(missing_ok=True)
    partial = archive.with_suffix(f".{uuid.uuid4().hex[:8]}.part")
    try:
        _docker("save", "-o", str(partial), *images, timeout=600)
        partial.rename(archive)  # atomic: parallel workers never load a half-written file
    finally:
        partial.unlink(missing_ok=True)
    return archive


# --------------------------------------------------------------------------- the fleet


@dataclass
class FleetHost:
    """One test host: inventory name, container, SSH port, volume for its engine."""

    name: str
    container: str
    port: int
    volume: str
    password: str | None = field(default=None, repr=False)  # the demo's DB password on this host

    def __str__(self) -> str:
        return self.name


@dataclass
class Fleet:
    """A running fleet; every helper takes a host name (``"host1"``) or a ``FleetHost``."""

    state_dir: Path
    run_id: str
    hosts: list[FleetHost]
    owner: str
    timings: dict[str, float] = field(default_factory=dict)

    # ---- files
    @property
    def key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def inventory(self) -> Path:
        return self.state_dir / "inventory.yml"

    @property
    def canary(self) -> FleetHost:
        return self.hosts[0]

    def host(self, host: str | FleetHost) -> FleetHost:
        if isinstance(host, FleetHost):
            return host
        for candidate in self.hosts:
            if host in (candidate.name, candidate.container):
                return candidate
        raise KeyError(f"no test host {host!r}; hosts: {[h.name for h in self.hosts]}")

    def save(self) -> None:
        state = {"run_id": self.run_id, "owner": self.owner,
                 "hosts": [{k: v for k, v in asdict(h).items() if k != "password"} for h in self.hosts]}
        (self.state_dir / "fleet.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, state_dir: str | Path) -> Fleet:
        state_dir = Path(state_dir).resolve()
        try:
            state = json.loads((state_dir / "fleet.json").read_text())
        except OSError as exc:
            raise FleetError(f"no fleet in {state_dir} ({exc.strerror}); start one with 'tests/fleet.py up --state {state_dir}'.") from exc
        return cls(state_dir, state["run_id"], [FleetHost(**h) for h in state["hosts"]], state["owner"])

    def host_vars(self, host: FleetHost) -> dict[str, Any]:
        return {"ansible_host": "127.0.0.1", "ansible_port": host.port, "fleet_container": host.container}

    def write_inventory(self) -> Path:
        """The inventory: groups ``fleet`` (all hosts) and ``canary`` (the first)."""
        inventory = {
            "all": {
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(self.key),
                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
                    "ansible_ssh_pipelining": True,
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "rollback_store": ROLLBACK_STORE,
                    "demo_root": DEMO_ROOT,
                    "demo_port": DEMO_PORT,
                    "rollback_apps": [demo_app_definition()],
                },
                "children": {
                    "fleet": {"hosts": {h.name: self.host_vars(h) for h in self.hosts}},
                    "canary": {"hosts": {self.canary.name: {}}},
                },
            }
        }
        # JSON is YAML: the inventory needs no YAML library to write
        self.inventory.write_text(json.dumps(inventory, indent=2) + "\n")
        return self.inventory

    # ---- commands on a test host
    def exec(self, host: str | FleetHost, cmd: str | Sequence[str], *, check: bool = True, timeout: float = 120,
             stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run ``cmd`` in the test host (a string goes through ``sh -c``)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        flags = ["-i"] if stdin is not None else []
        return _run(["docker", "exec", *flags, self.host(host).container, *argv], check=check, timeout=timeout, stdin=stdin)

    def docker(self, host: str | FleetHost, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """The test host's own ``docker`` CLI, talking to its own engine."""
        return self.exec(host, ["docker", *args], check=check, timeout=timeout)

    def compose(self, host: str | FleetHost, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """``docker compose`` in the demo project on the test host."""
        return self.docker(host, "compose", "--project-directory", DEMO_PROJECT_DIR, "-p", DEMO_PROJECT, *args,
                           check=check, timeout=timeout)

    def engine_id(self, host: str | FleetHost) -> str:
        return self.docker(host, "info", "--format", "{{.ID}}").stdout.strip()

    def container_ids(self, host: str | FleetHost, project: str = DEMO_PROJECT) -> dict[str, str]:
        """Service name → full container ID of the project's containers in the test host."""
        out = self.docker(host, "ps", "-a", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}",
                          "--format", '{{.Label "com.docker.compose.service"}}\t{{.ID}}').stdout
        return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)

    def health(self, host: str | FleetHost, path: str = "/healthz") -> tuple[int, Any]:
        """GET the demo app from inside the test host: (status, parsed body); 0 when nothing answers."""
        script = (
            "import json, sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen('http://127.0.0.1:{DEMO_PORT}{path}', timeout=3); s, b = r.status, r.read()\n"
            "except urllib.error.HTTPError as e:\n"
            "    s, b = e.code, e.read()\n"
            "except OSError as e:\n"
            "    s, b = 0, str(e).encode()\n"
            "print(s); sys.stdout.write(b.decode(errors='replace'))\n"
        )
        proc = self.exec(host, ["python3", "-c", script], check=False, timeout=30)
        if proc.returncode != 0:
            return 0, proc.stderr.strip()
        status, body = (proc.stdout.split("\n", 1) + [""])[:2]
        try:
            return int(status), json.loads(body)
        except ValueError:
            return int(status or 0), body

    def wait_healthy(self, host: str | FleetHost, timeout: float = 120, version: str | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status, body = 0, None
        while time.monotonic() < deadline:
            status, body = self.health(host)
            if status == 200 and (version is None or body.get("version") == version):
                return body
            time.sleep(0.5)
        logs = self.compose(host, "logs", "--no-color", "--tail", "30", check=False).stdout
        raise FleetError(f"{self.host(host)}: demo not healthy{' at ' + version if version else ''} after {timeout:.0f}s: "
                         f"{status} {body}\n{logs}")

    def read_password(self, host: str | FleetHost) -> str:
        out = self.exec(host, f"sed -n 's/^NOTES_DB_PASSWORD=//p' {DEMO_PROJECT_DIR}/.env").stdout.strip()
        if not out:
            raise FleetError(f"{self.host(host)}: no NOTES_DB_PASSWORD in {DEMO_PROJECT_DIR}/.env")
        return out

    # ---- failures, on purpose
    def stop_service(self, host: str | FleetHost, service: str = "app") -> str:
        """``docker stop`` one service's container on the test host (stays down: unless-stopped)."""
        cid = self.container_ids(host)[service]
        self.docker(host, "stop", "-t", "5", cid)
        return cid

    def kill_service(self, host: str | FleetHost, service: str = "app", signal: str = "KILL") -> str:
        """``docker kill`` one service's container on the test host; it stays down."""
        cid = self.container_ids(host)[service]
        self.docker(host, "kill", "--signal", signal, cid)
        return cid

    def start_service(self, host: str | FleetHost, service: str = "app") -> None:
        self.compose(host, "start", service)

    def stop_engine(self, host: str | FleetHost) -> None:
        """Stop the test host's dockerd (sshd stays up: Ansible reaches a host with no engine)."""
        self.exec(host, "kill -TERM $(cat /var/run/docker.pid) && while [ -e /var/run/docker.pid ]; do sleep 0.2; done",
                  timeout=60)

    def start_engine(self, host: str | FleetHost) -> None:
        _docker("exec", "-d", self.host(host).container, "fleet-dockerd")
        self._wait_engine(self.host(host))

    def kill_host(self, host: str | FleetHost) -> None:
        """The whole test host goes away at once (power cut): SSH is refused afterwards."""
        _docker("kill", self.host(host).container)

    def stop_host(self, host: str | FleetHost) -> None:
        _docker("stop", "-t", "20", self.host(host).container, timeout=60)

    def start_host(self, host: str | FleetHost) -> None:
        """Start a stopped or killed test host again (same SSH port); its engine restarts the app."""
        host = self.host(host)
        _docker("start", host.container)
        self._wait_ready(host)

    def running(self, host: str | FleetHost) -> bool:
        out = _docker("inspect", "--format", "{{.State.Running}}", self.host(host).container, check=False).stdout
        return out.strip() == "true"

    def repair(self, version: str = "1.0") -> list[str]:
        """Bring every host back to the demo at ``version``, healthy; returns the hosts touched.

        A host that is down is started, a stopped engine restarted, the app put back at
        ``version``; when its data no longer allows that (a destructive migration ran),
        the project is recreated with empty volumes.
        """
        def fix(host: FleetHost) -> str | None:
            if self.running(host):
                status, body = self.health(host)
                if status == 200 and isinstance(body, dict) and body.get("version") == version:
                    return None
            else:
                self.start_host(host)
            if self.docker(host, "info", check=False).returncode != 0:
                self.start_engine(host)
            self.exec(host, f"sed -i 's/^NOTES_VERSION=.*/NOTES_VERSION={version}/' {DEMO_PROJECT_DIR}/.env")
            if self.compose(host, "up", "-d", "--wait", "--wait-timeout", "90", check=False).returncode != 0:
                self.compose(host, "down", "-v", "--timeout", "5", check=False)
                self.compose(host, "up", "-d", "--wait", "--wait-timeout", "90")
            self.wait_healthy(host, version=version)
            return host.name

        return [name for name in _parallel(fix, self.hosts) if name]

    # ---- Ansible
    def ansible_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS_PATH),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORKS": str(max(5, len(self.hosts))),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.state_dir / "cp"),
        })
        env.update(extra)
        return env

    def ansible_playbook(self, playbook: str | Path, *args: str, extra_vars: dict[str, Any] | None = None,
                         limit: str | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [ansible_bin("ansible-playbook"), "-i", str(self.inventory), str(playbook)]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        if limit:
            cmd += ["--limit", limit]
        proc = _run([*cmd, *args], check=False, timeout=timeout, env=self.ansible_env(), cwd=str(self.state_dir))
        if check and proc.returncode != 0:
            raise FleetError(f"ansible-playbook {Path(playbook).name} on the fleet failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
        return proc

    def ansible(self, pattern: str, module: str, args: str | dict[str, Any] = "", *, check: bool = True,
                timeout: float = 300) -> subprocess.CompletedProcess:
        """An ad-hoc ``ansible`` run against the fleet."""
        cmd = [ansible_bin("ansible"), "-i", str(self.inventory), pattern, "-m", module]
        if args:
            cmd += ["-a", args if isinstance(args, str) else json.dumps(args)]
        proc = _run(cmd, check=False, timeout=timeout, env=self.ansible_env(), cwd=str(self.state_dir))
        if check and proc.returncode != 0:
            raise FleetError(f"ansible {pattern} -m {module} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
        return proc

    def deploy_demo(self) -> None:
        """``demo/deploy.yml`` over SSH on every host; each generates its own DB password."""
        self.ansible_playbook(REPO / "demo" / "deploy.yml")

        def finish(host: FleetHost) -> None:
            host.password = self.read_password(host)
            self.wait_healthy(host, version="1.0")

        _parallel(finish, self.hosts)

    # ---- start and stop
    def _start_container(self, host: FleetHost, public_key: str) -> None:
        _docker("volume", "create", "--label", f"{LABEL}={LABEL_VALUE}", "--label", f"{OWNER_LABEL}={self.owner}",
                "--label", f"{RUN_LABEL}={self.run_id}", host.volume)
        for attempt in range(5):
            proc = _docker(
                "run", "-d", "--name", host.container, "--hostname", host.name,
                "--label", f"{LABEL}={LABEL_VALUE}", "--label", f"{OWNER_LABEL}={self.owner}",
                "--label", f"{RUN_LABEL}={self.run_id}",
                *HOST_RUN_FLAGS, "-v", f"{host.volume}:/var/lib/docker",
                "-p", f"127.0.0.1:{host.port}:22", "-e", f"FLEET_AUTHORIZED_KEY={public_key}",
                HOST_IMAGE, check=False)
            if proc.returncode == 0:
                return
            if "port is already allocated" in proc.stderr or "address already in use" in proc.stderr:
                _docker("rm", "-f", host.container, check=False)
                host.port = _free_port()  # lost the race for that port: take another
                continue
            raise FleetError(f"starting test host {host.name} failed: {proc.stderr.strip()}")
        raise FleetError(f"starting test host {host.name} failed: no free port after {attempt + 1} tries")

    def _wait_engine(self, host: FleetHost, timeout: float = 90) -> None:
        proc = _docker("exec", host.container, "sh", "-c",
                       f"n=0; until docker info >/dev/null 2>&1; do n=$((n+1)); [ $n -gt {int(timeout * 5)} ] && exit 1; sleep 0.2; done",
                       check=False, timeout=timeout + 30)
        if proc.returncode != 0:
            log = _docker("exec", host.container, "tail", "-n", "15", "/var/log/dockerd.log", check=False).stdout
            raise FleetError(f"{host.name}: its dockerd did not answer within {timeout:.0f}s; /var/log/dockerd.log ends:\n{log}")

    def _wait_ssh(self, host: FleetHost, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = _run(["ssh", "-i", str(self.key), "-p", str(host.port), "-o", "BatchMode=yes",
                         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                         "-o", "ConnectTimeout=5", "root@127.0.0.1", "true"], check=False, timeout=30)
            if proc.returncode == 0:
                return
            last = proc.stderr.strip()
            time.sleep(0.3)
        raise FleetError(f"{host.name}: sshd on 127.0.0.1:{host.port} did not let root in within {timeout:.0f}s: {last}")

    def _wait_ready(self, host: FleetHost) -> None:
        self._wait_ssh(host)
        self._wait_engine(host)

    def down(self) -> None:
        """Remove the test hosts and their volumes (their engines' data goes with them)."""
        names = [h.container for h in self.hosts]
        _docker("rm", "-f", "-v", *names, check=False, timeout=300)
        for host in self.hosts:
            _docker("volume", "rm", "-f", host.volume, check=False, timeout=300)
        (self.state_dir / "fleet.json").unlink(missing_ok=True)


def up(count: int = 3, state_dir: str | Path | None = None, *, deploy: bool = True,
       images: Sequence[str] = DEMO_IMAGES, owner: str | None = None, log: Callable[[str], None] | None = None) -> Fleet:
    """Start ``count`` test hosts, load the demo images into each, deploy the demo on each.

    Tears down what it started when any step fails. ``owner`` decides when a later
    ``sweep()`` may remove the hosts: by default this process (``pid:...``); the CLI
    uses ``state:<dir>`` so the hosts outlive it until ``down``.
    """
    say = log or (lambda message: None)
    check_host_image()
    if count < 1:
        raise FleetError("a fleet needs at least one host")
    if deploy and not images:
        raise FleetError("deploying the demo needs its images; pass images or deploy=False")
    started = time.monotonic()
    state = Path(state_dir).resolve() if state_dir else Path(tempfile.mkdtemp(prefix="selfhost-fleet-"))
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    (state / "cp").mkdir(exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    owner = owner or _pid_owner()
    hosts = [FleetHost(name=f"host{i}", container=f"selfhost-fleet-{run_id}-host{i}", port=_free_port(),
                       volume=f"selfhost-fleet-{run_id}-host{i}-docker") for i in range(1, count + 1)]
    fleet = Fleet(state, run_id, hosts, owner)
    try:
        key = fleet.key
        key.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"selfhost-fleet-{run_id}", "-f", str(key)])
        public_key = key.with_suffix(".pub").read_text().strip()
        fleet.save()  # before any container exists: a CLI fleet's owner is its state file
        fleet.write_inventory()

        # the image archive is saved while the hosts boot
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            archive_future = pool.submit(image_archive, images) if images else None
            _parallel(lambda h: fleet._start_container(h, public_key), hosts)
            fleet.save()
            fleet.write_inventory()  # ports may have moved
            _parallel(fleet._wait_ready, hosts)
            fleet.timings["hosts_ready"] = time.monotonic() - started
            archive = archive_future.result() if archive_future else None
        say(f"{count} test hosts answer on SSH ports {', '.join(str(h.port) for h in hosts)}")

        def load(host: FleetHost) -> None:
            with archive.open("rb") as stream:
                proc = subprocess.run(["docker", "exec", "-i", host.container, "docker", "load", "-q"], stdin=stream,
                                      capture_output=True, timeout=600, check=False)
            if proc.returncode != 0:
                raise FleetError(f"{host.name}: docker load failed: {proc.stderr.decode(errors='replace').strip()}")

        if archive is not None:
            say(f"loading {len(images)} images into every host")
            _parallel(load, hosts)
            fleet.timings["images_loaded"] = time.monotonic() - started
        if deploy:
            say("deploying the demo on every host with demo/deploy.yml over SSH")
            fleet.deploy_demo()
            fleet.timings["demo_deployed"] = time.monotonic() - started
    except BaseException:
        fleet.down()
        raise
    return fleet


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/fleet.py", description="The multi-host test bed: test hosts with their own Docker Engine and sshd.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start test hosts, deploy the demo on each; print the inventory path")
    p_up.add_argument("--hosts", type=int, default=3, help="how many test hosts (default 3)")
    p_up.add_argument("--state", default=".fleet", help="state dir: key, inventory, fleet.json (default .fleet)")
    p_up.add_argument("--no-deploy", action="store_true", help="hosts and images only, no demo app")
    p_up.add_argument("--no-images", action="store_true", help="hosts only: no demo images, no demo app (implies --no-deploy)")
    p_up.add_argument("--json", action="store_true", help="print the fleet as JSON instead of the inventory path")
    p_down = sub.add_parser("down", help="remove the fleet of a state dir (containers and volumes)")
    p_down.add_argument("--state", default=".fleet")
    p_status = sub.add_parser("status", help="print the fleet of a state dir as JSON")
    p_status.add_argument("--state", default=".fleet")
    p_instances = sub.add_parser("instances", help="print molecule's instance config (how to reach each host) as JSON")
    p_instances.add_argument("--state", default=".fleet")
    p_sweep = sub.add_parser("sweep", help="remove leftover test hosts whose owner is gone")
    p_sweep.add_argument("--all", action="store_true", help="every fleet test host, in use or not")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[fleet] {message}", file=sys.stderr, flush=True)

    def describe(fleet: Fleet) -> dict[str, Any]:
        return {"state_dir": str(fleet.state_dir), "inventory": str(fleet.inventory), "key": str(fleet.key),
                "run_id": fleet.run_id, "timings": {k: round(v, 1) for k, v in fleet.timings.items()},
                "hosts": [{"name": h.name, "container": h.container, "port": h.port, "volume": h.volume,
                           "running": fleet.running(h)} for h in fleet.hosts]}

    try:
        if args.command == "up":
            state = Path(args.state).resolve()
            if (state / "fleet.json").exists():
                raise FleetError(f"a fleet already runs from {state}; 'tests/fleet.py down --state {args.state}' first.")
            sweep()
            fleet = up(args.hosts, state, deploy=not (args.no_deploy or args.no_images), images=() if args.no_images else DEMO_IMAGES,
                       owner=f"state:{state}", log=log)
            log(f"up in {max(fleet.timings.values()):.0f}s; "
                f"try: ansible -i {fleet.inventory} all -m ping")
            print(json.dumps(describe(fleet), indent=2) if args.json else fleet.inventory)
        elif args.command == "down":
            Fleet.load(args.state).down()
            log(f"removed the fleet of {Path(args.state).resolve()}")
        elif args.command == "status":
            print(json.dumps(describe(Fleet.load(args.state)), indent=2))
        elif args.command == "instances":
            fleet = Fleet.load(args.state)
            print(json.dumps([{"instance": h.name, "address": "127.0.0.1", "port": h.port, "user": "root",
                               "identity_file": str(fleet.key)} for h in fleet.hosts], indent=2))
        elif args.command == "sweep":
            removed = sweep(all_owners=args.all)
            log(f"removed {len(removed)} leftovers" + (f": {', '.join(removed)}" if removed else ""))
    except FleetError as exc:
        print(f"[fleet] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
