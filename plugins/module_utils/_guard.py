# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The quiesce guard: a watcher outside the module that puts containers back if the run dies.

A backup pauses or stops the app's containers and writes each one to ``quiesced.json``
first. While the module lives, it puts them back itself. If it dies (kill -9, OOM, the
control node's connection gone), nothing in it runs any more, so before the first pause a
small watcher is started that does not depend on it: a detached Python process (double fork,
its own session, no open file of the module's, standard library and the ``docker`` CLI only),
so it works with or without systemd and survives the module's whole process tree.

The watcher checks every half second. It leaves when the record is gone (the run put the
containers back) or names another run. When the module that wrote the record has died, it
takes the app's lock (a new run holding it puts the containers back itself), unpauses or
starts exactly the containers in the record, writes what it did to ``guard.json`` and removes
the record. Bound: the time to notice (0.5 s) plus one ``docker`` call per container.
"""

from __future__ import annotations

import os
import subprocess
import sys
import typing as t

GUARD_RECORD = "guard.json"
POLL_S = 0.5

# Runs as ``python -c WATCHER record lock docker owner_pid owner_start out``. Standard library only:
# the module's own files may be gone (Ansible removes its temporary directory) when it acts.
WATCHER = r'''
import fcntl, json, os, subprocess, sys, time
record_path, lock_path, docker, owner_pid, owner_start, out_path = sys.argv[1:7]
owner_pid = int(owner_pid)
poll = float(sys.argv[7])
if os.fork():
    os._exit(0)

def started(pid):
    if owner_start == "None":  # no /proc to read: the pid alone
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return owner_start
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]

def record():
    try:
        with open(record_path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (data.get("owner") or {}).get("pid") != owner_pid:
        return None
    return data

def state(cid):
    proc = subprocess.run([docker, "inspect", "-f", "{{.State.Status}}", cid], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None

while record() is not None and started(owner_pid) == owner_start:
    time.sleep(poll)
lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
while True:
    if record() is None:
        os._exit(0)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
    except BlockingIOError:
        time.sleep(poll)
data = record()
if data is None:
    os._exit(0)
actions = []
for entry in data.get("containers", []):
    now = state(entry["id"])
    if now == "paused":
        verb = "unpause"
    elif entry.get("mode") == "stop" and now in ("exited", "created"):
        verb = "start"
    else:
        continue
    proc = subprocess.run([docker, verb, entry["id"]], capture_output=True, text=True)
    actions.append({"container": entry.get("name"), "action": verb, "ok": proc.returncode == 0,
                    "error": proc.stderr.strip()[-300:] or None})
done = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run_pid": owner_pid,
        "purpose": data.get("purpose"), "since": data.get("since"), "actions": actions}
tmp = out_path + ".tmp"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as handle:
    json.dump(done, handle)
    handle.flush()
    os.fsync(handle.fileno())
os.replace(tmp, out_path)
if all(a["ok"] for a in actions):
    os.unlink(record_path)
'''


def process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (with the pid, it names one process)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner() -> dict[str, t.Any]:
    """The record's owner: this process."""
    return {"pid": os.getpid(), "start": process_start(os.getpid())}


def start(record_path: str, lock_path: str, docker: str, out_path: str) -> None:
    """Start the watcher for ``record_path``, written by this process; returns once it is detached."""
    me = owner()
    subprocess.run(
        [sys.executable, "-c", WATCHER, record_path, lock_path, docker, str(me["pid"]), str(me["start"]), out_path,
         str(POLL_S)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, check=True, timeout=30,
    )
