# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Holding an app's writers still while a backup reads, and putting them back (private to the collection).

Containers are paused or stopped one at a time, each recorded in ``quiesced.json`` in
the ledger before it is; the record is removed once all are back. A run killed in
between is covered by the guard it started (``_guard``) and by the next run
(``resume_interrupted``).
"""

from __future__ import annotations

import os
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils import _guard
from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso, utcnow
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import DockerException, NotFound, docker_cli
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils._sources import Source, container_service

QUIESCED = "quiesced.json"


def _pause(container: t.Any, attempts: int = 4) -> None:
    """Pause a container; the cgroup freezer can fail to freeze a busy process on a first try."""
    for attempt in range(1, attempts + 1):
        try:
            container.pause()
            return
        except DockerException as exc:
            if attempt == attempts or "unable to freeze" not in str(exc):
                raise
            time.sleep(0.5 * attempt)


class Quiesce:
    """Pause or stop running containers and put every one of them back as it was, whatever happens.

    Each container is written to ``quiesced.json`` in the ledger before it is paused or stopped,
    and the record is removed once all are back. A run killed in between (kill -9, OOM) cannot
    put them back itself: the guard started before the first pause does (``_guard``), within
    seconds, and the next run would too (``resume_interrupted``).
    """

    def __init__(self, ledger: Ledger | None = None, purpose: str = "backup") -> None:
        self.ledger = ledger
        self.purpose = purpose
        self.since = iso(utcnow())
        self.guarded = False
        self.paused: list[t.Any] = []
        self.stopped: list[t.Any] = []
        self.actions: list[str] = []

    def _remember(self) -> None:
        if self.ledger is None:
            return
        containers = [{"id": c.id, "name": c.name, "mode": "pause"} for c in self.paused] + \
                     [{"id": c.id, "name": c.name, "mode": "stop"} for c in self.stopped]
        if containers:
            self.ledger.write(QUIESCED, {"owner": _guard.owner(), "purpose": self.purpose, "since": self.since,
                                         "containers": containers})
            if not self.guarded:
                _guard.start(self.ledger.path(QUIESCED), self.ledger.path("lock"), docker_cli(),
                             self.ledger.path(_guard.GUARD_RECORD))
                self.guarded = True
        elif self.ledger.exists(QUIESCED):
            os.unlink(self.ledger.path(QUIESCED))

    def apply(self, sources: list[Source], databases: bool) -> None:
        wanted: dict[str, tuple[t.Any, str]] = {}
        for source in sources:
            if source.kind == "database" or source.consistency == "none":
                continue
            for container in source.containers:
                is_db = any(s.kind == "database" and s.container is not None and s.container.id == container.id for s in sources)
                if is_db != databases:
                    continue
                previous = wanted.get(container.id, (container, "pause"))[1]
                mode = "stop" if "stop" in (previous, source.consistency) else "pause"
                wanted[container.id] = (container, mode)
        for container, mode in wanted.values():
            self.hold(container, mode)

    def hold(self, container: t.Any, mode: str) -> None:
        """Pause or stop one running container (recorded and guarded first); a held or stopped one is left alone."""
        if any(c.id == container.id for c in self.paused + self.stopped):
            return
        container.reload()
        if container.status != "running":
            return
        # recorded (and guarded) before acting, so a run killed right after still gets it back
        (self.stopped if mode == "stop" else self.paused).append(container)
        self._remember()
        if mode == "stop":
            container.stop()  # the container's own stop timeout (Compose sets it from stop_grace_period)
        else:
            _pause(container)
        self.actions.append(f"{mode} {container_service(container)}")

    def release(self, keep_stopped: bool = False) -> list[str]:
        """Put every container back; with ``keep_stopped``, stopped ones stay stopped (and recorded) for the caller."""
        problems = []
        for container in reversed(self.paused):
            try:
                container.reload()
                if container.status == "paused":
                    container.unpause()
                self.actions.append(f"unpause {container_service(container)}")
            except NotFound:  # removed since: nothing to put back
                pass
            except Exception as exc:  # keep going: every container must get its chance
                problems.append(f"could not unpause {container.name}: {exc}")
        self.paused = []
        if not keep_stopped:
            for container in reversed(self.stopped):
                try:
                    container.start()
                    self.actions.append(f"start {container_service(container)}")
                except NotFound:
                    pass
                except Exception as exc:
                    problems.append(f"could not start {container.name}: {exc}")
            self.stopped = []
        if not problems:
            self._remember()
        return problems


def resume_interrupted(ledger: Ledger, client: t.Any) -> list[str]:
    """Put back what an interrupted run left paused or stopped (see ``Quiesce``), and say what its guard did."""
    actions = []
    guarded = ledger.read(_guard.GUARD_RECORD, default=None)
    if isinstance(guarded, dict):
        done = ", ".join(f"{a.get('action')} {a.get('container')}" + ("" if a.get("ok") else f" (failed: {a.get('error')})")
                         for a in guarded.get("actions") or []) or "nothing left to put back"
        actions.append(f"the guard of an interrupted {guarded.get('purpose') or 'run'} (pid {guarded.get('run_pid')}) "
                       f"put its containers back at {guarded.get('at')}: {done}")
        os.unlink(ledger.path(_guard.GUARD_RECORD))
    record = ledger.read(QUIESCED, default=None) or {}
    entries = record.get("containers", []) if isinstance(record, dict) else record  # a list: written before the guard
    for entry in entries:
        try:
            container = client.containers.get(entry["id"])
        except Exception:  # removed since: nothing to put back
            continue
        if entry.get("mode") == "stop" and container.status in ("exited", "created"):
            container.start()
            actions.append(f"started {entry.get('name')} (stopped by an interrupted backup)")
        elif container.status == "paused":
            container.unpause()
            actions.append(f"unpaused {entry.get('name')} (paused by an interrupted backup)")
    if ledger.exists(QUIESCED):
        os.unlink(ledger.path(QUIESCED))
    return actions
