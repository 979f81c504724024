# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Operations and release history: the one owner of both (private to the collection).

An *operation* is one upgrade, rollback or recovery in progress on one app. Its state
lives in the app's ledger::

    journal.json             the operation under way, if any (phase, owner, what it returns to)
    operations/<op_id>.json  every finished operation, as closed
    last_operation.json      the newest of those
    runs/<run_id>.json       what a fleet upgrade run changed on this app (for a fleet rollback)
    history.json             which release went live when, and by which operation

Every transition is a function here: :func:`open_operation`, :func:`advance`,
:func:`adopt` (a later run takes over an interrupted one), :func:`close`. Roles reach
them through the ``operation`` module; nothing else writes these files.

*previous* has one definition, :func:`previous_of`: the history is a stack of releases
that went live going forward (a recorded release or an upgrade pushes; a rollback, a
revert or a recovery pops back to its target). The previous release is the one below
the live one. Rollback, upgrade's revert, the drill and the report all ask here.

The functions that write expect the caller to hold the app's lock (``Ledger.lock``).
"""

from __future__ import annotations

import datetime
import os
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._ledger import Ledger, LedgerError
from ansible_collections.selfhost.rollback.plugins.module_utils._release import current_release_id, releases

JOURNAL = "journal.json"
LAST = "last_operation.json"
HISTORY = "history.json"
HISTORY_FORMAT = 1

KINDS = ("upgrade", "rollback")
# phases in the order an operation may pass them; "recovering" is entered by adopt()
PHASES: dict[str, tuple[str, ...]] = {
    "upgrade": ("switching", "judging", "reverting", "recovering"),
    "rollback": ("switching", "judging", "recovering"),
}
OUTCOMES: dict[str, tuple[str, ...]] = {
    "upgrade": ("upgraded", "reverted", "revert_failed", "recovered", "recovery_failed"),
    "rollback": ("rolled_back", "failed", "recovered", "recovery_failed"),
}
# outcomes after which the app runs a known release (the history moves)
GOES_FORWARD = ("upgraded",)
GOES_BACK = ("reverted", "rolled_back", "recovered")
# outcomes that leave the app between releases; the operator chooses what next
FAILED = ("revert_failed", "failed", "recovery_failed")


class OperationError(LedgerError):
    """A transition that the rules do not allow; the message says what to do."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# --------------------------------------------------------------------------- owners


def owner_state(owner: dict[str, t.Any] | None, me: dict[str, t.Any],
                process_started: t.Callable[[int], int | None], alive: t.Callable[[int], bool]) -> str:
    """Whether the run named by ``owner`` is this run (``self``), still ``running`` on this control
    node, provably ``gone``, or on another control node (``elsewhere``).

    ``process_started`` and ``alive`` look at the control node's processes (the lookup plugin
    ``run_owner`` passes the real ones); a pid reused by another process is told apart by its
    start time.
    """
    if not owner or not owner.get("pid"):
        return "gone"
    if owner.get("controller") != me.get("controller"):
        return "elsewhere"
    if owner.get("boot_id") and me.get("boot_id") and owner["boot_id"] != me["boot_id"]:
        return "gone"
    try:
        pid = int(owner["pid"])
    except (TypeError, ValueError):
        return "gone"
    if pid == me.get("pid") and owner.get("started") == me.get("started"):
        return "self"
    if owner.get("started") is not None and me.get("started") is not None:
        return "running" if process_started(pid) == owner["started"] else "gone"
    return "running" if alive(pid) else "gone"


def classify_pending(journal: dict[str, t.Any], state: str, app: str, take_over: bool) -> dict[str, t.Any]:
    """What a new run does about an open journal whose owner is in ``state``.

    Returns ``outcome`` (``interrupted``: finish it; ``busy``: leave it alone and stop;
    ``own``: this run wrote it), ``failed`` and a sentence for the operator.
    """
    kind, phase, started = journal.get("kind", "operation"), journal.get("phase", "?"), journal.get("started_at", "?")
    owner = journal.get("owner") or {}
    if state == "self":
        return {"outcome": "own", "failed": False, "reasons": [], "msg": f"this run holds the {kind} of {app}"}
    if state == "running":
        msg = (f"The {kind} of {app} started {started} by another run on this control node (ansible-playbook pid "
               f"{owner.get('pid')}) is still under way (phase '{phase}'); this run changed nothing: wait for that one "
               "to finish, then run again.")
        return {"outcome": "busy", "failed": True, "reasons": [msg], "msg": msg}
    if state == "elsewhere" and not take_over:
        msg = (f"The {kind} of {app} started {started} from the control node {owner.get('controller')} is recorded as "
               f"under way (phase '{phase}'), and this control node cannot tell whether that run still goes on; this run "
               "changed nothing: wait for it, or, once it is gone, run again with -e rollback_take_over=true to finish it "
               "from here.")
        return {"outcome": "busy", "failed": True, "reasons": [msg], "msg": msg}
    msg = (f"A {kind} of {app} started {started} (run {journal.get('op_id')}) stopped during '{phase}'. "
           f"Bringing the app to release {journal.get('return_to')} before anything else.")
    return {"outcome": "interrupted", "failed": False, "reasons": [msg], "msg": msg}


# --------------------------------------------------------------------------- the journal


def pending(ledger: Ledger) -> dict[str, t.Any] | None:
    """The operation under way (the open journal), or None."""
    record = ledger.read(JOURNAL)
    if record is not None and not isinstance(record, dict):
        raise OperationError(f"app {ledger.app}: {ledger.path(JOURNAL)} is not an operation record; "
                             "move it away and run again")
    return record


def last(ledger: Ledger) -> dict[str, t.Any] | None:
    return ledger.read(LAST)


def _require_kind(kind: str) -> None:
    if kind not in KINDS:
        raise OperationError(f"unknown operation kind {kind!r}; one of {', '.join(KINDS)}")


def _same_owner(journal: dict[str, t.Any], owner: dict[str, t.Any]) -> bool:
    mine = journal.get("owner") or {}
    return all(mine.get(k) == owner.get(k) for k in ("controller", "pid", "started", "boot_id"))


def open_operation(ledger: Ledger, kind: str, owner: dict[str, t.Any], fields: dict[str, t.Any],
                   write: bool = True) -> dict[str, t.Any]:
    """Start an operation: the journal says what is under way and where it returns to."""
    _require_kind(kind)
    current = pending(ledger)
    if current is not None:
        raise OperationError(
            f"app {ledger.app}: the {current.get('kind')} {current.get('op_id')} is still open (phase "
            f"'{current.get('phase')}'); a new {kind} cannot start until it is finished: run any "
            "selfhost.rollback playbook to finish it first")
    if not fields.get("return_to"):
        raise OperationError(f"app {ledger.app}: a {kind} needs the release it returns to on failure (return_to)")
    record = {key: value for key, value in fields.items() if value is not None}
    record.update({"op_id": f"{_stamp()}-{kind}", "kind": kind, "app": ledger.app, "started_at": _now(),
                   "started_ts": round(time.time(), 3), "phase": PHASES[kind][0], "owner": owner})
    if write:
        ledger.write(JOURNAL, record)
    return record


def _open_journal(ledger: Ledger, op_id: str | None, owner: dict[str, t.Any]) -> dict[str, t.Any]:
    journal = pending(ledger)
    if journal is None:
        raise OperationError(f"app {ledger.app}: no operation is open (expected {op_id}); nothing to advance or close")
    if op_id and journal.get("op_id") != op_id:
        raise OperationError(f"app {ledger.app}: the open operation is {journal.get('op_id')}, not {op_id}")
    if not _same_owner(journal, owner):
        theirs = journal.get("owner") or {}
        raise OperationError(
            f"app {ledger.app}: the {journal.get('kind')} {journal.get('op_id')} belongs to another run "
            f"(pid {theirs.get('pid')} on {theirs.get('controller')}); this run may not change it")
    return journal


def advance(ledger: Ledger, op_id: str | None, owner: dict[str, t.Any], phase: str, fields: dict[str, t.Any],
            write: bool = True) -> dict[str, t.Any]:
    """Move the open operation to a later phase, keeping what it learned (``fields``)."""
    journal = _open_journal(ledger, op_id, owner)
    phases = PHASES[journal["kind"]]
    if phase not in phases:
        raise OperationError(f"app {ledger.app}: a {journal['kind']} has no phase {phase!r} ({', '.join(phases)})")
    if phases.index(phase) < phases.index(journal.get("phase", phases[0])):
        raise OperationError(f"app {ledger.app}: the {journal['kind']} {journal['op_id']} is in phase "
                             f"'{journal['phase']}' already and cannot go back to '{phase}'")
    record = dict(journal)
    record.update({k: v for k, v in fields.items() if v is not None})
    record["phase"] = phase
    if write:
        ledger.write(JOURNAL, record)
    return record


def adopt(ledger: Ledger, op_id: str | None, owner: dict[str, t.Any], write: bool = True) -> dict[str, t.Any]:
    """This run takes over an interrupted operation (its own run is gone) to finish it."""
    journal = pending(ledger)
    if journal is None or (op_id and journal.get("op_id") != op_id):
        raise OperationError(f"app {ledger.app}: there is no interrupted operation {op_id or ''} to take over".replace("  ", " "))
    record = dict(journal)
    record.update({"phase": "recovering", "interrupted_in": journal.get("phase"), "owner": owner,
                   "previous_owner": journal.get("owner")})
    if write:
        ledger.write(JOURNAL, record)
    return record


def close(ledger: Ledger, op_id: str | None, owner: dict[str, t.Any], outcome: str, fields: dict[str, t.Any],
          write: bool = True) -> dict[str, t.Any]:
    """End the open operation with ``outcome``: keep its record, move the history, remove the journal."""
    journal = _open_journal(ledger, op_id, owner)
    allowed = OUTCOMES[journal["kind"]]
    if outcome not in allowed:
        raise OperationError(f"app {ledger.app}: a {journal['kind']} cannot end as {outcome!r} ({', '.join(allowed)})")
    record = dict(journal)
    record.update({k: v for k, v in fields.items() if v is not None})
    record.update({"phase": "done", "outcome": outcome, "finished_at": _now()})
    if isinstance(journal.get("started_ts"), (int, float)):
        figures = dict(record.get("figures") or {})
        figures["seconds"] = round(time.time() - journal["started_ts"], 2)  # the whole operation, as the operator waited
        record["figures"] = figures
    if not write:
        return record
    ledger.write(os.path.join("operations", record["op_id"] + ".json"), record)
    ledger.write(LAST, record)
    if record.get("run_id") and outcome == "upgraded":
        ledger.write(os.path.join("runs", record["run_id"] + ".json"),
                     {"run_id": record["run_id"], "release_before": record.get("release_before"),
                      "release_after": record.get("release_after"), "op_id": record["op_id"]})
    after = record.get("release_after")
    # a partial rollback reaches a mixed state: a step forward in the history, and "previous" undoes it
    if after and (outcome in GOES_FORWARD or (outcome in GOES_BACK and record.get("partial"))):
        _append(ledger, {"at": record["finished_at"], "op": "push", "release_id": after, "op_id": record["op_id"]})
    elif after and outcome in GOES_BACK:
        _append(ledger, {"at": record["finished_at"], "op": "back", "release_id": after,
                         "target": record.get("return_to") or after, "op_id": record["op_id"]})
    os.unlink(ledger.path(JOURNAL))
    return record


def run_record(ledger: Ledger, run_id: str) -> dict[str, t.Any] | None:
    """What fleet run ``run_id`` changed on this app, or None when it left the app alone."""
    return ledger.read(os.path.join("runs", run_id + ".json"))


# --------------------------------------------------------------------------- history and "previous"


def replay(events: list[dict[str, t.Any]]) -> list[str]:
    """The stack of releases that went live going forward, oldest first."""
    stack: list[str] = []
    for event in events:
        release = event.get("release_id")
        if event.get("op") == "seed":
            stack = list(event.get("stack") or [])
        elif event.get("op") == "push" and release:
            if not stack or stack[-1] != release:
                stack.append(release)
        elif event.get("op") == "back" and release:
            target = event.get("target") or release
            if target in stack:
                del stack[stack.index(target) + 1:]
                stack[-1] = release  # the release recorded may differ from the target (old code on an additive schema)
            elif not stack or stack[-1] != release:
                stack.append(release)
            if len(stack) > 1 and stack[-2] == stack[-1]:
                stack.pop()
    return stack


def previous_of(stack: list[str], live: str | None) -> str | None:
    """The release before ``live`` in the history: the one a rollback to "previous" returns to.

    When what runs is not recorded (``live`` is None) or not in the history, the newest
    release of the history is the one to return to.
    """
    if not stack:
        return None
    if live is None or live not in stack:
        return stack[-1] if stack[-1] != live else None
    index = len(stack) - 1 - stack[::-1].index(live)
    return stack[index - 1] if index > 0 else None


def _seed(release_ids_in_order: list[str], current: str | None) -> list[dict[str, t.Any]]:
    """History of a ledger written before history.json existed: the releases in the order recorded."""
    stack = list(release_ids_in_order)
    if current in stack:
        stack = stack[: stack.index(current) + 1]
    return [{"at": "", "op": "seed", "stack": stack}]


def history(ledger: Ledger, release_ids_in_order: list[str] | None = None, current: str | None = None) -> list[dict[str, t.Any]]:
    """The history's events (seeded from the release records for a ledger that has none yet)."""
    record = ledger.read(HISTORY)
    if record is None:
        return _seed(release_ids_in_order or [], current)
    if not isinstance(record, dict) or not isinstance(record.get("events"), list):
        raise OperationError(f"app {ledger.app}: {ledger.path(HISTORY)} is not a release history; "
                             "move it away and run again (it is rebuilt from the release records)")
    return record["events"]


def _append(ledger: Ledger, event: dict[str, t.Any]) -> None:
    events = history(ledger, _recorded_ids(ledger), current_release_id(ledger))
    events.append(event)
    ledger.write(HISTORY, {"format": HISTORY_FORMAT, "app": ledger.app, "events": events[-500:]})


def _recorded_ids(ledger: Ledger) -> list[str]:
    return [r["release_id"] for r in releases(ledger) if r.get("release_id")]


def note_recorded(ledger: Ledger, release_id: str, write: bool = True) -> bool:
    """A release was recorded as what runs now. Outside an operation it goes on the history;
    inside one, closing the operation decides. Returns whether the history moved."""
    if pending(ledger) is not None:
        return False
    stack = replay(history(ledger, _recorded_ids(ledger), release_id))
    if stack and stack[-1] == release_id:
        return False
    if write:
        _append(ledger, {"at": _now(), "op": "push", "release_id": release_id})
    return True


def stack_of(ledger: Ledger, current: str | None) -> list[str]:
    return replay(history(ledger, _recorded_ids(ledger), current))


def previous_release(ledger: Ledger, live: str | None) -> str | None:
    """The one meaning of "previous" (see :func:`previous_of`)."""
    return previous_of(stack_of(ledger, live), live)


def resolve_target(ledger: Ledger, target: str, live: str | None) -> dict[str, t.Any]:
    """Where a rollback to ``target`` goes: ``release_id`` (None when there is none) and ``reasons``.

    Repeating a rollback to "previous" right after it finished (nothing recorded since) returns
    to the same release, so the second identical run changes nothing; the reasons say how to
    go further back.
    """
    if target != "previous":
        return {"release_id": target, "repeat": False, "reasons": []}
    done = last(ledger) or {}
    events = history(ledger, _recorded_ids(ledger), live)
    newest = events[-1] if events else {}
    if (done.get("kind") == "rollback" and done.get("outcome") in ("rolled_back", "recovered")
            and newest.get("op_id") == done.get("op_id") and done.get("release_after")):
        stack = replay(events)
        further = previous_of(stack, done["release_after"])
        reason = (f"the rollback {done['op_id']} already went back to {done['release_after']}; "
                  + (f"to go further back, run with rollback_target={further}" if further
                     else "no release before it is recorded"))
        return {"release_id": done["release_after"], "repeat": True, "reasons": [reason]}
    if (done.get("outcome") in FAILED and done.get("return_to")
            and not any((e.get("at") or "") > (done.get("finished_at") or "") for e in events)):
        # a failed rollback or revert left the app between releases: "previous" is still where it was going
        return {"release_id": done["return_to"], "repeat": False,
                "reasons": [f"the {done.get('kind')} {done.get('op_id')} ended as {done['outcome']}; going to "
                            f"{done['return_to']} again"]}
    found = previous_of(replay(events), live)
    if found is None:
        return {"release_id": None, "repeat": False,
                "reasons": ["no release before the one that runs now is recorded: there is nothing to roll back to"]}
    return {"release_id": found, "repeat": False, "reasons": []}


# --------------------------------------------------------------------------- sentences


def result_of(record: dict[str, t.Any]) -> dict[str, t.Any]:
    """What a closed operation gives the playbook: its outcome, the releases on each side, and why.

    The roles keep this as the app's result (``upgrade_result``), so they never restate the journal.
    """
    outcome = record.get("outcome")
    reasons = [str(record[key]) for key in ("failure", "revert_failure") if record.get(key)]
    result: dict[str, t.Any] = {"app": record.get("app"), "outcome": outcome, "op_id": record.get("op_id"),
                                "release_before": record.get("release_before"),
                                "release_after": record.get("release_after") if outcome not in FAILED else None,
                                "reasons": reasons}
    if outcome in GOES_BACK:
        result.update(data_restored=record.get("data_restored"), lost=record.get("lost"))
    return result


def failure_sentence(record: dict[str, t.Any]) -> str:
    """What a closed operation that did not go as planned tells the operator: what happened, what to do."""
    app, kind, outcome = record.get("app"), record.get("kind"), record.get("outcome")
    failure = str(record.get("failure") or "see the task above").rstrip(".")
    back_to = record.get("return_to")
    choices = (f"Choose one: fix what the message names and run selfhost.rollback.rollback -e rollback_target={back_to}; "
               "roll back further with -e rollback_target=<an older release> (selfhost.rollback.report lists them); "
               "or upgrade forward to a fixed version. The journal is closed, so the next run starts clean.")
    if outcome == "reverted":
        data = f"data restored from {record['data_restored']}" if record.get("data_restored") else "data kept"
        healthy = (record.get("figures") or {}).get("time_to_healthy_s")
        lost = f" Lost: {record['lost']}." if record.get("lost") else ""
        if record.get("at_risk") and record.get("data_restored") and record.get("data_restored") == record.get("backup_set"):
            lost += f" Written before the upgrade and not in {record['backup_set']}, so lost too: {record['at_risk']}."
        return (f"The upgrade of {app} failed: {failure}. It was reverted automatically to release {record.get('release_after')} "
                f"({data}), which is healthy again after {healthy if healthy is not None else '?'} s.{lost}")
    if outcome == "revert_failed":
        return (f"The upgrade of {app} failed: {failure}. The automatic revert to release {back_to} failed too: "
                f"{str(record.get('revert_failure') or 'see the task above').rstrip('.')}. {choices}")
    if outcome == "failed":
        return f"Rollback of {app} to {back_to} failed: {failure}. {choices}"
    if outcome == "recovery_failed":
        return (f"The {kind} of {app} interrupted during '{record.get('interrupted_in') or record.get('phase')}' could not be "
                f"finished: bringing the app to release {back_to} failed: {failure}. {choices}")
    return f"The {kind} of {app} ended as {outcome}."
