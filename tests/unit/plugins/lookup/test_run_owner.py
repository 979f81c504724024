from __future__ import annotations

import os
import subprocess
import time

import pytest

from ansible_collections.selfhost.rollback.plugins.lookup import run_owner
from ansible_collections.selfhost.rollback.plugins.lookup.run_owner import LookupModule, identity, owner_state, process_started


def test_identity_names_a_live_process_of_this_host():
    me = identity()
    assert me["pid"] == os.getpid()  # not under a multiprocessing parent here
    assert me["started"] is not None
    assert me["started"] == process_started(os.getpid())
    assert me["controller"] and me["boot_id"]


def test_states():
    me = identity()
    assert owner_state(dict(me), me) == "self"
    assert owner_state({}, me) == "gone"
    assert owner_state(dict(me, controller="other-node"), me) == "elsewhere"
    assert owner_state(dict(me, boot_id="before-a-restart"), me) == "gone"


def test_a_live_other_run_is_running_and_a_reused_pid_is_not():
    child = subprocess.Popen(["sleep", "30"])
    try:
        me = identity()
        owner = dict(me, pid=child.pid, started=process_started(child.pid))
        assert owner_state(owner, me) == "running"
        assert owner_state(dict(owner, started=owner["started"] - 1), me) == "gone"  # same pid, another process
    finally:
        child.kill()
    deadline = time.monotonic() + 5
    while process_started(child.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.exists(f"/proc/{child.pid}")  # a zombie, not reaped yet...
    assert owner_state(owner, me) == "gone"  # ...is gone
    child.wait()
    assert owner_state(owner, me) == "gone"


def test_the_lookup_answers_per_term_and_refuses_strings():
    lookup = LookupModule()
    me = lookup.run([])[0]
    assert lookup.run([me, {}, None]) == ["self", "gone", "gone"]
    with pytest.raises(run_owner.AnsibleLookupError, match="owner dictionaries"):
        lookup.run(["pid 12"])
