"""Pure logic of backup sets: row counts from a dump stream, retention selection."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _dumps, _retention

DUMP = (b"SET x = 1;\nCOPY public.notes (id, title) FROM stdin;\n1\ta\n2\tb\\nwith escaped newline\n3\tc\n\\.\n\n"
        b"COPY public.\"Empty Table\" (id) FROM stdin;\n\\.\n"
        b"COPY public.tags (id) FROM stdin;\n" + b"".join(b"%d\n" % i for i in range(1000)) + b"\\.\nALTER TABLE x;\n")


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 4096, len(DUMP)])
def test_copy_counter_any_chunking(chunk):
    counter = _dumps.CopyCounter()
    for start in range(0, len(DUMP), chunk):
        counter.feed(DUMP[start:start + chunk])
    assert counter.tables == {"public.notes": 3, 'public."Empty Table"': 0, "public.tags": 1000}


NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.timezone.utc)


def entry(day: int, release: str | None = None, verified: bool | None = None) -> dict:
    created = NOW - datetime.timedelta(days=day)
    runs = [] if verified is None else [{"passed": verified}]
    return {"set_id": f"b-{created.strftime('%Y%m%dT%H%M%SZ')}-000{day % 10}",
            "manifest": {"created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"), "release_id": release},
            "verification": runs}


def test_keep_last_and_within():
    sets = [entry(d) for d in (10, 8, 5, 2, 1)]
    plan = _retention.prune_plan(sets, set(), 2, datetime.timedelta(days=6), NOW)
    assert plan["remove"] == [sets[0]["set_id"], sets[1]["set_id"]]


def test_newest_verified_set_survives_every_rule():
    sets = [entry(9, verified=True), entry(3, verified=False), entry(1)]
    plan = _retention.prune_plan(sets, set(), 1, None, NOW)
    kept = {k["set_id"]: k["reasons"] for k in plan["keep"]}
    assert sets[0]["set_id"] in kept and "newest verified set" in kept[sets[0]["set_id"]]
    assert plan["remove"] == [sets[1]["set_id"]]


def test_sets_needed_by_retained_releases_stay():
    sets = [entry(30, "r-old", verified=True), entry(29, "r-old"), entry(20, "r-gone"), entry(1, "r-new")]
    plan = _retention.prune_plan(sets, {"r-old", "r-new"}, 1, None, NOW, pinned={sets[2]["set_id"]})
    assert plan["remove"] == [sets[1]["set_id"]]  # r-old keeps its verified set, not merely its newest


def test_durations():
    assert _retention.parse_duration("36h") == datetime.timedelta(hours=36)
    assert _retention.parse_duration("2w") == datetime.timedelta(days=14)
    with pytest.raises(Exception):
        _retention.parse_duration("soon")


def test_a_volume_holding_only_an_sqlite_file_and_its_journals_is_left_to_the_online_backup(tmp_path):
    from ansible_collections.selfhost.rollback.plugins.module_utils._sources import _holds_more_than

    (tmp_path / "db").mkdir()
    for name in ("db/app.db", "db/app.db-wal", "db/app.db-shm"):
        (tmp_path / name).write_bytes(b"x")
    assert _holds_more_than(str(tmp_path), "db/app.db") is False
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "1.vec").write_bytes(b"v")
    assert _holds_more_than(str(tmp_path), "db/app.db") is True
