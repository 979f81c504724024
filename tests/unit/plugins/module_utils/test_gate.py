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


# --------------------------------------------------------------------------- the gate's checks and verdicts

R1, R2 = rel("r1", "d1", "2"), rel("r2", "d2", "3")  # r1 the target, r2 what runs now
VERIFIED = [{"at": "2026-11-20T00:00:00Z", "kind": "restore", "passed": True}]
FAILED = [{"at": "2026-11-20T00:00:00Z", "kind": "restore", "passed": False}]


def verified_set(set_id, release_id, schema, created, runs):
    return dict(backup_set(set_id, release_id, schema, created), verification=runs)


def is_verified(entry):
    return any(run["passed"] for run in entry.get("verification") or [])


def summary_of(entry):
    manifest = entry["manifest"]
    return {"set_id": entry["set_id"], "created_at": manifest["created_at"], "release_id": manifest["release_id"],
            "schema_version": manifest["schema_version"], "bytes": 2048}


def schema_gate(live_schema, target, *, target_is_live=False, keep_data=False, scope="all", back_images=None, sets=(),
                changed=True, additive=()):
    """The schema check in the gate's two steps, as rollback_check runs them: the restore set is looked for only when asked."""
    relation, why = _gate.schema_relation(live_schema, target.get("schema_version"), list(additive))
    schema = {"live": live_schema, "target": target.get("schema_version")}
    unknown = _gate.data_unknown(relation, target_is_live)
    found = _gate.schema_check(relation, why, schema, target["release_id"], unknown, keep_data, scope, back_images)
    if found is not None:
        return found, None
    candidates = _gate.restore_candidates(list(sets), target, [R1, R2], list(additive), under_target_only=unknown)
    chosen = _gate.choose_set(candidates, is_verified)
    loss = {"seconds": 172800, "changed": changed, "summary": "12 rows in notes"} if chosen else None
    return _gate.restore_check(why, schema, target["release_id"], unknown, candidates, chosen, loss,
                               summary_of(chosen) if chosen else None)


@pytest.mark.parametrize(("case", "level", "verdict", "detail", "restore_set"), [
    pytest.param(dict(live_schema="2", target_is_live=True), "ok", "ready",
                 "the live schema 2 is the one release was recorded on", None, id="same release"),
    pytest.param(dict(live_schema=None, target_is_live=True), "warn", "ready",
                 "no schema version recorded (declare schema_probe to compare schemas)", None, id="same release, no probe"),
    pytest.param(dict(live_schema="1", sets=[verified_set("b-1", "r1", "2", "2026-11-20T00:00:00Z", VERIFIED)]), "ok", "ready",
                 "the live schema 1 is older than the target's 2; its migrations run forward on start", None,
                 id="target is newer code: no restore even with a verified set"),
    pytest.param(dict(live_schema="3", sets=[verified_set("b-1", "r1", "2", "2026-11-19T00:00:00Z", VERIFIED),
                                             verified_set("b-2", "r1", "2", "2026-11-20T00:00:00Z", VERIFIED),
                                             verified_set("b-3", "r1", "2", "2026-11-21T00:00:00Z", FAILED),
                                             verified_set("b-4", "r2", "3", "2026-11-22T00:00:00Z", VERIFIED)]),
                 "restore", "needs_data_restore",
                 "the live schema 3 is newer than the target's 2 and step 3 is not additive: the target's code cannot run on "
                 "today's data; restore verified set b-2 (taken 2 days ago under r1); lost: 12 rows in notes", "b-2",
                 id="live data is newer: the newest verified set under the target comes back"),
    pytest.param(dict(live_schema="3", sets=[verified_set("b-1", "r1", "2", "2026-11-19T00:00:00Z", FAILED),
                                             verified_set("b-3", None, "2", "2026-11-21T00:00:00Z", []),
                                             verified_set("b-4", "r2", "3", "2026-11-22T00:00:00Z", VERIFIED)]),
                 "block", "blocked",
                 "step 3 is not additive: the target's code cannot run on today's data, and no verified backup set taken under r1 "
                 "(or on a schema it runs on) exists; b-3, b-1 exist but did not pass verification; the data cannot be brought back "
                 "with the code", None, id="live data is newer, no verified set: block naming the unverified ones"),
    pytest.param(dict(live_schema="3"), "block", "blocked",
                 "no verified backup set taken under r1 (or on a schema it runs on) exists; the data cannot be brought back", None,
                 id="live data is newer, no set at all"),
    pytest.param(dict(live_schema="3", additive=["3"], sets=[verified_set("b-1", "r1", "2", "2026-11-20T00:00:00Z", VERIFIED)]),
                 "ok", "ready", "but every step (3) is declared additive", None, id="additive steps: the data stays"),
    pytest.param(dict(live_schema=None, keep_data=True, sets=[verified_set("b-1", "r1", "2", "2026-11-20T00:00:00Z", VERIFIED)]),
                 "warn", "ready", "no schema version recorded (declare schema_probe to compare schemas); today's data is kept as asked "
                 "(keep_data), although whether r1 can read it is unknown", None, id="unknown schema with keep_data"),
    pytest.param(dict(live_schema=None, changed=False, sets=[verified_set("b-1", "r1", "2", "2026-11-20T00:00:00Z", VERIFIED)]),
                 "warn", "ready", "no schema version recorded (declare schema_probe to compare schemas); the data has not changed "
                 "since verified set b-1 (taken 2 days ago under r1), so it stays", None, id="unknown schema, data unchanged"),
    pytest.param(dict(live_schema=None, sets=[verified_set("b-1", "r1", "2", "2026-11-20T00:00:00Z", VERIFIED),
                                              verified_set("b-3", None, "2", "2026-11-21T00:00:00Z", VERIFIED)]),
                 "restore", "needs_data_restore",
                 "no schema version recorded (declare schema_probe to compare schemas), so whether r1 can read today's data is "
                 "unknown, and the data changed since verified set b-1 (taken 2 days ago under r1); it comes back with the code "
                 "(keep today's data instead with keep_data, -e rollback_keep_data=true); lost: 12 rows in notes", "b-1",
                 id="unknown schema, data changed: only a set taken under the target comes back"),
    pytest.param(dict(live_schema=None, sets=[verified_set("b-4", "r2", "3", "2026-11-22T00:00:00Z", VERIFIED)]),
                 "warn", "ready", "no schema version recorded (declare schema_probe to compare schemas), and no verified backup "
                 "set was taken under r1: today's data stays, and whether that release can read it is unknown", None,
                 id="unknown schema, no set under the target"),
    pytest.param(dict(live_schema="3", scope="config", back_images=[]), "ok", "ready",
                 "the code stays as it runs (only config comes back), so the data stays too", None, id="partial scope config"),
    pytest.param(dict(live_schema="3", scope="all", back_images=[]), "ok", "ready",
                 "the code stays as it runs (no image comes back), so the data stays too", None, id="partial, no image comes back"),
    pytest.param(dict(live_schema="3", back_images=["app", "worker"],
                      sets=[verified_set("b-1", "r1", "2", "2026-11-20T00:00:00Z", VERIFIED)]), "block", "blocked",
                 "step 3 is not additive: the target's code cannot run on today's data; a partial rollback leaves the data as it is, "
                 "so app, worker cannot go back to code that may need older data: roll back the whole app (without "
                 "rollback_services and rollback_scope)", None, id="partial rollback to older code"),
    pytest.param(dict(live_schema=None, back_images=["app"]), "block", "blocked",
                 "roll back the whole app (without rollback_services and rollback_scope), or keep today's data with "
                 "-e rollback_keep_data=true", None, id="partial rollback, unknown schema"),
    pytest.param(dict(live_schema=None, back_images=["app"], keep_data=True), "warn", "ready",
                 "today's data is kept as asked (keep_data)", None, id="partial rollback, unknown schema, keep_data"),
])
def test_the_schema_verdict(case, level, verdict, detail, restore_set):
    found, chosen = schema_gate(target=R1, **case)
    assert (found["check"], found["level"]) == ("schema", level)
    assert detail in found["detail"]
    assert _gate.decide([found]) == verdict
    assert (chosen or {}).get("set_id") == restore_set
    assert {k: found[k] for k in ("live", "target")} == {"live": case["live_schema"], "target": "2"}


def test_the_restore_set_says_what_comes_back():
    chosen = verified_set("b-2", "r1", "2", "2026-11-20T00:00:00Z", VERIFIED)
    found, restore_set = schema_gate("3", R1, sets=[chosen])
    assert restore_set == {"set_id": "b-2", "created_at": "2026-11-20T00:00:00Z", "age_s": 172800, "release_id": "r1",
                           "schema_version": "2", "bytes": 2048}
    found, kept = schema_gate(None, R1, keep_data=True)
    assert found["keep_data"] is True and kept is None


LIVE_RUNTIME = {"api_version": "1.43", "compose_version": "2.26.1"}
LOCKED = {"api": {"image_ref": "x/api:1.2"}, "worker": {"image_ref": "x/worker:1.3"}}
ROWS = [{"service": "app", "ref": "x/app:1.0", "source": "local"}, {"service": "db", "ref": "postgres:16", "source": "archive"}]
PART = {"scope": "all", "services": ["app", "worker"], "partners": ["worker comes with app (version lock)"],
        "actions": ["app goes back to x/app:1.0"], "blocking": []}


@pytest.mark.parametrize(("found", "level", "verdict", "detail"), [
    pytest.param(_gate.release_check("r1", True), "ok", "ready", "r1 is what runs now; nothing to roll back", id="same release"),
    pytest.param(_gate.locks_check(LOCKED, [["api", "worker"]]), "block", "blocked",
                 "version lock ['api', 'worker'] is violated: api 1.2, worker 1.3; locked services must run the same version",
                 id="version lock violated"),
    pytest.param(_gate.locks_check({"api": {"image_ref": "x/api:1.2"}}, [["api", "worker"]]), "block", "blocked",
                 "version lock ['api', 'worker']: the target release has no service worker", id="version lock, service missing"),
    pytest.param(_gate.locks_check(LOCKED, [["api", "worker"]], partial=True), "ok", "ready",
                 "1 group(s) run one version each in the target", id="version locks, partial plan"),
    pytest.param(_gate.drift_check({"A": "1", "B": "2", "C": "3"}, {"B": "2", "C": "9", "D": "4"}), "warn", "ready",
                 "the target had A, missing now: put them back in the env file or it may not boot; added since: D; other values now: C",
                 id="config drift"),
    pytest.param(_gate.drift_check({"A": "1"}, {"A": "1", "B": "2"}), "warn", "ready", "added since: B", id="config drift, key added"),
    pytest.param(_gate.drift_check({"A": "1"}, {"A": "1"}), "ok", "ready", "same keys and values as the target", id="no config drift"),
    pytest.param(_gate.runtime_check({"api_version": "1.44", "compose_version": "2.26.1"}, LIVE_RUNTIME), "block", "blocked",
                 "the engine API is 1.43 but the target was recorded on 1.44; upgrade the Docker Engine first; "
                 "Compose 2.26.1 (target recorded with 2.26.1)", id="runtime: older engine API"),
    pytest.param(_gate.runtime_check({"compose_version": "2.29.0"}, LIVE_RUNTIME), "warn", "ready",
                 "Compose 2.26.1 is older than the 2.29.0 the target was recorded with", id="runtime: older Compose"),
    pytest.param(_gate.runtime_check({}, LIVE_RUNTIME), "ok", "ready", "no runtime recorded", id="runtime not recorded"),
    pytest.param(_gate.images_check(ROWS), "ok", "ready", "all available: app local, db archive", id="images here"),
    pytest.param(_gate.images_check(ROWS + [{"service": "cache", "ref": "redis:7", "source": "missing"}]), "block", "blocked",
                 "not available anywhere: cache (redis:7); they are not on this engine, not in the image archive and not pullable",
                 id="an image missing"),
    pytest.param(_gate.part_check(PART, ["app"]), "ok", "ready",
                 "scope all, services app, worker: worker comes with app (version lock); app goes back to x/app:1.0",
                 id="partial plan"),
    pytest.param(_gate.part_check(dict(PART, blocking=["db cannot stay: add it"]), ["app"]), "block", "blocked",
                 "scope all, services app, worker: db cannot stay: add it", id="partial plan blocked"),
    pytest.param(_gate.part_check(dict(PART, scope="artifacts", services=[], partners=[], actions=[], by_hand=["run make certs"]), []),
                 "warn", "ready", "scope artifacts: run make certs", id="artifacts put back by hand"),
    pytest.param(_gate.space_check(None), "ok", "ready", "no data restore needed", id="space, no restore"),
    pytest.param(_gate.space_check(3 * 1048576, "/var/lib/docker", 2 * 1048576), "block", "blocked",
                 "not enough space: 2 MB free under /var/lib/docker, 3 MB needed to restore; free space before rolling back",
                 id="space short"),
    pytest.param(_gate.space_check(3 * 1048576, "/var/lib/docker", 5 * 1048576), "ok", "ready",
                 "5 MB free under /var/lib/docker, 3 MB needed to restore", id="space enough"),
])
def test_check_verdicts(found, level, verdict, detail):
    assert found["level"] == level and found["detail"] == detail
    assert _gate.decide([found]) == verdict


def test_no_version_locks_no_check():
    assert _gate.locks_check(LOCKED, []) is None
    assert _gate.release_check("r1", False) is None


def test_window_check_warns_when_the_next_backup_prunes_the_restore_point():
    sets = [backup_set("s1", "r1", "1", "2026-11-20T00:00:00Z"), backup_set("s2", "r1", "1", "2026-11-21T00:00:00Z")]
    assert _gate.window_check(sets[0], sets, 2, None)["level"] == "warn"
    found = _gate.window_check(sets[0], sets, 3, 86400)
    assert found["level"] == "ok" and found["detail"] == "restore point pruned after 2 more backup(s); pruned after 2026-11-21T00:00:00Z"
    assert _gate.window_check(sets[0], sets, None, None)["detail"] == "restore point kept until retention rules are given"
    assert _gate.restore_bytes({"manifest": {"items": [{"raw_bytes": 100, "bytes": 10}, {"bytes": 50}]}}, 1.2) == 180


def test_the_verdict_lists_what_is_not_ok_and_what_blocks():
    checks = [_gate.release_check("r1", True), _gate.drift_check({"A": "1"}, {}), _gate.space_check(10, "/x", 1)]
    assert _gate.verdict_of(checks) == {
        "verdict": "blocked", "outcome": "blocked",
        "reasons": ["config drift: the target had A, missing now: put them back in the env file or it may not boot",
                    "space: not enough space: 0 MB free under /x, 0 MB needed to restore; free space before rolling back"],
        "blocking": ["space: not enough space: 0 MB free under /x, 0 MB needed to restore; free space before rolling back"]}
    assert _gate.verdict_of(checks[:2])["verdict"] == "ready"
