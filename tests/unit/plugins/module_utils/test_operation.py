"""The operation layer as a state machine: every transition, the history, and "previous"."""

from __future__ import annotations

import json

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _operation
from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger
from ansible_collections.selfhost.rollback.plugins.module_utils._release import CURRENT

ME = {"controller": "cn", "pid": 100, "started": 5, "boot_id": "b"}
OTHER = {"controller": "cn", "pid": 200, "started": 7, "boot_id": "b"}


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(str(tmp_path), "notes")


def record_release(ledger: Ledger, release_id: str, at: str) -> None:
    ledger.write(f"releases/{release_id}.json", {"release_id": release_id, "recorded_at": at})
    ledger.write(CURRENT, {"release_id": release_id})
    _operation.note_recorded(ledger, release_id)


def files(ledger: Ledger) -> set[str]:
    return {p for p in ("journal.json", "last_operation.json", "history.json") if ledger.exists(p)}


def test_an_upgrade_opens_advances_and_closes(ledger):
    record_release(ledger, "A", "2026-01-01T00:00:00Z")
    op = _operation.open_operation(ledger, "upgrade", ME, {"release_before": "A", "return_to": "A", "run_id": "run1"})
    assert op["phase"] == "switching" and op["owner"] == ME and _operation.pending(ledger)["op_id"] == op["op_id"]
    _operation.advance(ledger, op["op_id"], ME, "judging", {"switch_s": 1.5})
    assert _operation.pending(ledger)["phase"] == "judging"
    record_release(ledger, "B", "2026-01-01T00:01:00Z")  # inside the operation: the close moves the history
    done = _operation.close(ledger, op["op_id"], ME, "upgraded", {"release_after": "B"})
    assert done["phase"] == "done" and done["switch_s"] == 1.5 and done["finished_at"]
    assert 0 <= done["figures"]["seconds"] < 60
    assert _operation.pending(ledger) is None
    assert json.loads(open(ledger.path("operations", op["op_id"] + ".json")).read())["outcome"] == "upgraded"
    assert _operation.last(ledger)["op_id"] == op["op_id"]
    assert _operation.run_record(ledger, "run1") == {"run_id": "run1", "release_before": "A", "release_after": "B",
                                                     "op_id": op["op_id"]}
    assert _operation.stack_of(ledger, "B") == ["A", "B"]
    assert _operation.previous_release(ledger, "B") == "A"


@pytest.mark.parametrize("action", ["advance", "close"])
def test_another_run_may_not_touch_an_open_operation(ledger, action):
    op = _operation.open_operation(ledger, "rollback", OTHER, {"return_to": "A"})
    with pytest.raises(_operation.OperationError, match="belongs to another run"):
        if action == "advance":
            _operation.advance(ledger, op["op_id"], ME, "judging", {})
        else:
            _operation.close(ledger, op["op_id"], ME, "rolled_back", {})
    assert _operation.pending(ledger) == op


def test_rules_refuse_what_they_do_not_allow(ledger):
    with pytest.raises(_operation.OperationError, match="needs the release it returns to"):
        _operation.open_operation(ledger, "upgrade", ME, {})
    with pytest.raises(_operation.OperationError, match="unknown operation kind"):
        _operation.open_operation(ledger, "reset", ME, {"return_to": "A"})
    op = _operation.open_operation(ledger, "upgrade", ME, {"return_to": "A"})
    with pytest.raises(_operation.OperationError, match="is still open"):
        _operation.open_operation(ledger, "rollback", ME, {"return_to": "A"})
    _operation.advance(ledger, None, ME, "reverting", {})
    with pytest.raises(_operation.OperationError, match="cannot go back to 'switching'"):
        _operation.advance(ledger, None, ME, "switching", {})
    with pytest.raises(_operation.OperationError, match="has no phase"):
        _operation.advance(ledger, None, ME, "dancing", {})
    with pytest.raises(_operation.OperationError, match="cannot end as 'rolled_back'"):
        _operation.close(ledger, None, ME, "rolled_back", {})
    with pytest.raises(_operation.OperationError, match="not zzz"):
        _operation.close(ledger, "zzz", ME, "reverted", {})
    assert _operation.pending(ledger)["op_id"] == op["op_id"]


def test_check_mode_writes_nothing(ledger):
    _operation.open_operation(ledger, "upgrade", ME, {"return_to": "A"}, write=False)
    assert files(ledger) == set()


def test_a_failed_revert_closes_in_a_named_state_and_the_next_run_starts_clean(ledger):
    record_release(ledger, "A", "2026-01-01T00:00:00Z")
    _operation.open_operation(ledger, "upgrade", ME, {"release_before": "A", "return_to": "A"})
    _operation.advance(ledger, None, ME, "reverting", {"failure": "app notes failed its health gate"})
    done = _operation.close(ledger, None, ME, "revert_failed", {"revert_failure": "the revert's gate failed"})
    assert _operation.pending(ledger) is None and done["outcome"] == "revert_failed"
    sentence = _operation.failure_sentence(done)
    assert sentence.startswith("The upgrade of notes failed: app notes failed its health gate. The automatic revert to "
                               "release A failed too: the revert's gate failed. Choose one:")
    assert "rollback_target=A" in sentence
    # the history did not move, and a rollback to "previous" goes where the revert was going
    assert _operation.stack_of(ledger, "A") == ["A"]
    assert _operation.resolve_target(ledger, "previous", None)["release_id"] == "A"
    # a new operation can open
    _operation.open_operation(ledger, "rollback", OTHER, {"return_to": "A"})


def test_an_interrupted_operation_is_adopted_then_closed_as_recovered(ledger):
    record_release(ledger, "A", "2026-01-01T00:00:00Z")
    op = _operation.open_operation(ledger, "upgrade", OTHER, {"release_before": "A", "return_to": "A"})
    verdict = _operation.classify_pending(op, "gone", "notes", take_over=False)
    assert verdict["outcome"] == "interrupted" and "stopped during 'switching'" in verdict["msg"]
    adopted = _operation.adopt(ledger, op["op_id"], ME)
    assert adopted["phase"] == "recovering" and adopted["interrupted_in"] == "switching" and adopted["owner"] == ME
    done = _operation.close(ledger, op["op_id"], ME, "recovered", {"release_after": "A"})
    assert done["previous_owner"] == OTHER and _operation.pending(ledger) is None
    assert _operation.stack_of(ledger, "A") == ["A"]


@pytest.mark.parametrize("state, take_over, outcome, failed", [
    ("self", False, "own", False),
    ("running", False, "busy", True),
    ("running", True, "busy", True),
    ("elsewhere", False, "busy", True),
    ("elsewhere", True, "interrupted", False),
    ("gone", False, "interrupted", False),
])
def test_classify_pending(state, take_over, outcome, failed):
    journal = {"kind": "upgrade", "phase": "switching", "started_at": "t", "owner": OTHER, "return_to": "A", "op_id": "x"}
    verdict = _operation.classify_pending(journal, state, "notes", take_over)
    assert (verdict["outcome"], verdict["failed"]) == (outcome, failed)
    if state == "running":
        assert "(ansible-playbook pid 200) is still under way (phase 'switching'); this run changed nothing" in verdict["msg"]


def test_after_a_rollback_every_reader_agrees_on_previous(ledger):
    for n, rid in enumerate(["Z", "A", "B"]):
        record_release(ledger, rid, f"2026-01-01T00:0{n}:00Z")
    assert _operation.previous_release(ledger, "B") == "A"
    op = _operation.open_operation(ledger, "rollback", ME, {"release_before": "B", "return_to": "A"})
    record_release(ledger, "A2", "2026-01-01T00:09:00Z")  # A's code on B's additive schema: a new record
    _operation.close(ledger, op["op_id"], ME, "rolled_back", {"release_after": "A2"})
    assert _operation.stack_of(ledger, "A2") == ["Z", "A2"]
    # drill and report: the release before the one that runs
    assert _operation.previous_release(ledger, "A2") == "Z"
    # rollback: the same run again changes nothing, and says how to go further
    again = _operation.resolve_target(ledger, "previous", "A2")
    assert again["release_id"] == "A2" and again["repeat"] and "rollback_target=Z" in again["reasons"][0]
    # once another release runs, previous is the one before it again
    record_release(ledger, "C", "2026-01-01T00:10:00Z")
    assert _operation.resolve_target(ledger, "previous", "C")["release_id"] == "A2"


@pytest.mark.parametrize("stack, live, previous", [
    ([], None, None),
    (["A"], "A", None),
    (["A", "B"], "B", "A"),
    (["A", "B"], None, "B"),       # what runs was never recorded: back to the newest known release
    (["A", "B"], "X", "B"),
    (["A", "B", "C"], "B", "A"),   # live is further down (moved by hand): the one below it
])
def test_previous_of(stack, live, previous):
    assert _operation.previous_of(stack, live) == previous


@pytest.mark.parametrize("events, stack", [
    ([{"op": "push", "release_id": "A"}, {"op": "push", "release_id": "A"}], ["A"]),
    ([{"op": "seed", "stack": ["A", "B"]}, {"op": "push", "release_id": "C"}], ["A", "B", "C"]),
    ([{"op": "seed", "stack": ["A", "B", "C"]}, {"op": "back", "release_id": "A", "target": "A"}], ["A"]),
    ([{"op": "seed", "stack": ["A", "B"]}, {"op": "back", "release_id": "Q", "target": "Q"}], ["A", "B", "Q"]),
])
def test_replay(events, stack):
    assert _operation.replay(events) == stack


def test_a_ledger_without_history_is_seeded_from_its_records(ledger):
    for n, rid in enumerate(["A", "B", "C"]):
        ledger.write(f"releases/{rid}.json", {"release_id": rid, "recorded_at": f"2026-01-01T00:0{n}:00Z"})
    assert _operation.previous_release(ledger, "C") == "B"
    assert _operation.previous_release(ledger, "B") == "A"  # rolled back by an older version of the collection


def test_a_malformed_journal_or_history_is_named(ledger):
    ledger.write("journal.json", ["not", "a", "record"])
    with pytest.raises(_operation.OperationError, match="is not an operation record"):
        _operation.pending(ledger)
    ledger.write("history.json", {"events": "nope"})
    with pytest.raises(_operation.OperationError, match="is not a release history"):
        _operation.history(ledger)


@pytest.mark.parametrize("outcome, fields, expected", [
    ("upgraded", {"release_after": "B"},
     {"outcome": "upgraded", "release_before": "A", "release_after": "B", "reasons": []}),
    ("reverted", {"failure": "health gate: error rate 0.4", "release_after": "A", "data_restored": "b-1", "lost": "3 rows"},
     {"outcome": "reverted", "release_before": "A", "release_after": "A", "reasons": ["health gate: error rate 0.4"],
      "data_restored": "b-1", "lost": "3 rows"}),
    ("reverted", {"failure": "boom", "release_after": "A", "data_restored": None, "lost": None},
     {"outcome": "reverted", "release_before": "A", "release_after": "A", "reasons": ["boom"], "data_restored": None, "lost": None}),
    ("revert_failed", {"failure": "boom", "revert_failure": "the revert's gate failed", "release_after": "B"},
     {"outcome": "revert_failed", "release_before": "A", "release_after": None, "reasons": ["boom", "the revert's gate failed"]}),
])
def test_the_close_builds_the_playbooks_result(ledger, outcome, fields, expected):
    record_release(ledger, "A", "2026-01-01T00:00:00Z")
    op = _operation.open_operation(ledger, "upgrade", ME, {"release_before": "A", "return_to": "A"})
    result = _operation.result_of(_operation.close(ledger, None, ME, outcome, fields))
    assert result == dict(expected, app="notes", op_id=op["op_id"])
