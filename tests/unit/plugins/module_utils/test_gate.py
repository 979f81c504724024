from __future__ import annotations

import datetime

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _gate


@pytest.mark.parametrize(("live", "target", "additive", "relation"), [
    ("2", "2", [], "same"),
    ("2", "1", ["2"], "compatible"),
    ("3", "1", ["2"], "older_code"),      # step 3 is not additive
    ("3", "2", ["2"], "older_code"),
    ("3", "1", ["2", "3"], "compatible"),
    ("1", "2", [], "newer_code"),
    (None, "2", [], "unknown"),
    ("abc", "def", [], "older_code"),     # non-numeric versions only compare equal
])
def test_schema_relation(live, target, additive, relation):
    assert _gate.schema_relation(live, target, additive)[0] == relation


def rel(release_id, digest, schema="1", recorded="2026-11-22T00:00:00Z"):
    return {"release_id": release_id, "content_digest": digest, "schema_version": schema, "recorded_at": recorded}


def test_pick_target_finds_a_release_by_id():
    history = [rel("r1", "a"), rel("r2", "b")]
    assert _gate.pick_target(history, "r1")["release_id"] == "r1"
    assert _gate.pick_target(history, "r9") is None
    assert _gate.pick_target(history, None) is None


def backup_set(set_id, release_id, schema, created):
    return {"set_id": set_id, "manifest": {"release_id": release_id, "schema_version": schema, "created_at": created}}


def test_restore_candidates_are_sets_the_target_can_run_on_newest_first():
    history = [rel("r10", "a", "1"), rel("r11", "b", "2"), rel("r20", "c", "3")]
    sets = [backup_set("s1", "r10", "1", "2026-11-22T01:00:00Z"), backup_set("s2", "r11", "2", "2026-11-22T02:00:00Z"),
            backup_set("s3", "r20", "3", "2026-11-22T03:00:00Z"), backup_set("s4", None, "2", "2026-11-22T04:00:00Z")]
    picked = _gate.restore_candidates(sets, history[1], history, ["2"])
    assert [s["set_id"] for s in picked] == ["s4", "s2"]  # same schema, newest first; not older or newer data
    assert [s["set_id"] for s in _gate.restore_candidates(sets, history[0], history, ["2"])] == ["s4", "s2", "s1"]


@pytest.mark.parametrize(("services", "problem"), [
    ({"api": {"image_ref": "x/api:1.2"}, "worker": {"image_ref": "reg:5000/x/worker:1.2@sha256:aa"}}, None),
    ({"api": {"image_ref": "x/api:1.2"}, "worker": {"image_ref": "x/worker:1.3"}}, "api 1.2, worker 1.3"),
    ({"api": {"image_ref": "x/api:1.2"}}, "has no service worker"),
])
def test_version_locks(services, problem):
    found = _gate.lock_violations(services, [["api", "worker"]])
    assert (found == []) if problem is None else (problem in found[0])


def test_image_version_falls_back_to_the_image_id():
    assert _gate.image_version({"image_ref": "127.0.0.1:5000/a/b"}) != "5000/a/b"
    assert _gate.image_version({"image_ref": "127.0.0.1:5000/a/b", "image_id": "sha256:0123456789abcdef"}) == "0123456789ab"


def test_config_drift_keys_only():
    assert _gate.config_drift({"A": "h1", "B": "h2", "C": "h3"}, {"B": "h2", "C": "h9", "D": "h4"}) == {
        "missing_now": ["A"], "added_since": ["D"], "changed": ["C"]}


@pytest.mark.parametrize(("target", "live", "level"), [
    ({"api_version": "1.41", "compose_version": "2.26.1"}, {"api_version": "1.41", "compose_version": "2.26.1-4"}, "ok"),
    ({"api_version": "1.43"}, {"api_version": "1.41"}, "block"),
    ({"compose_version": "2.26.1"}, {"compose_version": "2.20.0"}, "warn"),
    ({"compose_version": "2.26.1"}, {"compose_version": "1.29.2"}, "block"),
])
def test_runtime_findings(target, live, level):
    levels = {f[0] for f in _gate.runtime_findings(target, live)}
    assert level in levels and (level == "ok" or "ok" not in levels or len(levels) > 1)


def test_window_and_verdict_and_table():
    sets = [backup_set("s1", "r1", "1", "2026-11-20T00:00:00Z"), backup_set("s2", "r1", "1", "2026-11-21T00:00:00Z")]
    window = _gate.window_closes(sets[0], sets, keep_last=3, keep_within_s=86400 * 7)
    assert window == {"sets_newer": 1, "removed_after_sets": 2, "removed_after": "2026-11-27T00:00:00Z"}
    checks = [{"check": "images", "level": "ok", "detail": "all"}, {"check": "schema", "level": "restore", "detail": "x"}]
    assert _gate.decide(checks) == "needs_data_restore"
    assert _gate.decide(checks + [{"check": "space", "level": "block", "detail": "full"}]) == "blocked"
    assert _gate.decide(checks[:1]) == "ready"
    table = _gate.render_table(checks)
    assert table[0].startswith("check ") and table[2].startswith("schema  RESTORE  x")


def test_age():
    now = datetime.datetime(2026, 11, 22, 1, 0, 0, tzinfo=datetime.timezone.utc)
    assert _gate.age_seconds("2026-11-22T00:50:00Z", now) == 600
    assert [_gate.human_age(s) for s in (None, 30, 600, 7200, 200000)] == ["unknown age", "30 s", "10 min", "2 h", "2 days"]


def test_note_between_and_markdown():
    before = {"release_id": "r1", "schema_version": "2", "config_fingerprint": {"A": "1"}, "volumes": {"db": "p_db"},
              "services": {"app": {"image_ref": "n:1.1", "image_id": "i1"}}, "runtime": {"engine_version": "20.10"}}
    after = {"release_id": "r2", "schema_version": "3", "config_fingerprint": {"A": "1", "B": "2"},
             "volumes": {"db": "p_db", "cache": "p_cache"}, "services": {"app": {"image_ref": "n:2.0", "image_id": "i2"}},
             "runtime": {"engine_version": "24.0"}}
    note = _gate.note_between(before, after, [])
    assert note["schema"]["reversible_without_data"] is False
    assert note["config"] == {"added": ["B"], "removed": [], "changed": []}
    assert note["volumes"] == {"added": ["cache"], "removed": []}
    assert note["runtime"] == {"engine_version": {"before": "20.10", "after": "24.0"}}
    note.update(app="notes", written_at="now", backup_set="s1", text="hello")
    md = _gate.note_markdown(note)
    assert md.startswith("# Migration note: r1 → r2") and "- app: changed n:1.1 → n:2.0" in md and "hello" in md
    assert _gate.note_between(before, dict(after, schema_version="2"), [])["schema"]["reversible_without_data"] is True
