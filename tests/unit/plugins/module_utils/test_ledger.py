from __future__ import annotations

import json
import multiprocessing
import os
import stat

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import (
    Ledger,
    LedgerError,
    LockTimeout,
    atomic_write_json,
    ensure_dir,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_records_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        ledger = Ledger(str(tmp_path / "store"), "notes")
        path = ledger.write("releases/r-1.json", {"a": 1})
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    for directory in (tmp_path / "store", tmp_path / "store" / "notes", tmp_path / "store" / "notes" / "releases"):
        assert mode(directory) == 0o700, directory


def test_existing_loose_directory_is_tightened(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    ensure_dir(str(loose))
    assert mode(loose) == 0o700


def test_atomic_write_leaves_no_temp_files_and_replaces_whole(tmp_path):
    target = tmp_path / "d" / "x.json"
    atomic_write_json(str(target), {"v": 1})
    atomic_write_json(str(target), {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert sorted(os.listdir(target.parent)) == ["x.json"]


def test_read_reports_corrupt_json_with_a_fix(tmp_path):
    ledger = Ledger(str(tmp_path), "notes")
    ledger.ensure("releases")
    (tmp_path / "notes" / "releases" / "bad.json").write_text("{not json")
    with pytest.raises(LedgerError, match="not valid JSON.*restore it"):
        ledger.read("releases/bad.json")


def test_list_skips_temp_and_other_files(tmp_path):
    ledger = Ledger(str(tmp_path), "notes")
    ledger.write("releases/b.json", {})
    ledger.write("releases/a.json", {})
    (tmp_path / "notes" / "releases" / ".tmp-123").write_text("")
    (tmp_path / "notes" / "releases" / "notes.md").write_text("")
    assert ledger.list("releases") == ["a.json", "b.json"]
    assert ledger.list("missing") == []


def _hold_lock(store: str, ready, release) -> None:
    with Ledger(store, "notes").lock(purpose="backup"):
        ready.set()
        release.wait(10)


def test_second_run_waits_then_fails_naming_the_owner(tmp_path):
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LockTimeout, match=rf"app notes is busy: another run \(pid {holder.pid} .*backup"):
            with Ledger(str(tmp_path), "notes").lock(timeout=0.5):
                pass
    finally:
        release.set()
        holder.join(10)
    with Ledger(str(tmp_path), "notes").lock(timeout=1):
        pass


def test_lock_of_a_killed_owner_does_not_block(tmp_path):
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(10)
    holder.kill()
    holder.join(10)
    with Ledger(str(tmp_path), "notes").lock(timeout=1):
        pass
