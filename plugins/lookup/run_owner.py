# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: run_owner
short_description: Name this ansible-playbook run, or tell whether another run still goes on
version_added: 0.1.0
description:
  - Without terms, returns one dictionary that names the C(ansible-playbook) process running on the control
    node - C(controller) (its host name), C(pid), C(started) (the process start time, in clock ticks since
    boot) and C(boot_id) - so that a record can say which run wrote it.
  - With such dictionaries as terms, returns for each one C(self) when it names this run, C(running) when that
    process still runs on this control node, C(gone) when it provably does not (it exited, or the control node
    restarted since), and C(elsewhere) when the record was written on another control node.
  - The operation journal uses it to tell an operation that was interrupted (its run is gone) from one still
    under way in another run, which must not be touched.
  - Linux control nodes tell runs apart by process start time; elsewhere a live process with the same id
    counts as C(running).
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
options:
  _terms:
    description: Owners to check, as returned by this lookup without terms. An empty dictionary is C(gone).
    type: list
    elements: dict
    required: false
"""

EXAMPLES = r"""
- name: Name this run in a record
  ansible.builtin.set_fact:
    owner: "{{ query('selfhost.rollback.run_owner') | first }}"

- name: Refuse while the run that wrote the journal is still going
  ansible.builtin.fail:
    msg: Another run is changing this app.
  when: lookup('selfhost.rollback.run_owner', journal.owner) == 'running'
"""

RETURN = r"""
_raw:
  description:
    - Without terms, one dictionary with C(controller), C(pid), C(started) and C(boot_id).
    - With terms, one of C(self), C(running), C(gone) or C(elsewhere) per term.
  type: list
  elements: raw
"""

import multiprocessing
import os
import socket

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.selfhost.rollback.plugins.module_utils import _operation


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def process_started(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux), None when unknown or not running."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return None
    try:
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None


def playbook_pid() -> int:
    """The ansible-playbook process: lookups run in a worker forked from it."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getpid()


def identity() -> dict:
    pid = playbook_pid()
    return {"controller": socket.gethostname(), "pid": pid, "started": process_started(pid),
            "boot_id": _read("/proc/sys/kernel/random/boot_id")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_state(owner: dict, me: dict) -> str:
    return _operation.owner_state(owner, me, process_started, _alive)


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        me = identity()
        if not terms:
            return [me]
        states = []
        for term in terms:
            if term is None:
                term = {}
            if not isinstance(term, dict):
                raise AnsibleLookupError(f"run_owner takes owner dictionaries as terms, not {type(term).__name__}")
            states.append(owner_state(term, me))
        return states
