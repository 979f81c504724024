"""Pure logic of drills and the restore-points report: overrides, URL mapping, counts, marks, staleness, timings."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _drill, _report

NOW = datetime.datetime(2026, 11, 22, 3, 0, 0, tzinfo=datetime.timezone.utc)
SERVICES = {"app": {"ports": [{"published": "8080", "target": 8080, "host_ip": "127.0.0.1", "protocol": "tcp"}]},
            "db": {"ports": [{"published": "5432", "target": 5432, "protocol": "tcp"}]}}


def test_urls_move_to_loopback_ports_of_the_copy():
    ports = iter([40001, 40002])
    mapped, publish, problems = _drill.map_urls(["http://127.0.0.1:8080/healthz", "http://127.0.0.1:8080/ready",
                                                 "http://127.0.0.1:9999/x"], SERVICES, lambda: next(ports))
    assert mapped == {"http://127.0.0.1:8080/healthz": "http://127.0.0.1:40001/healthz",
                      "http://127.0.0.1:8080/ready": "http://127.0.0.1:40001/ready"}
    assert publish == {"app": {8080: 40001}}
    assert problems == ["no service publishes port 9999 of http://127.0.0.1:9999/x, so the copy cannot be probed there"]


def test_override_isolates_the_copy():
    config = {"services": {"app": dict(SERVICES["app"], container_name="notes"), "db": SERVICES["db"]},
              "volumes": {"dbdata": {}, "uploads": {}}}
    text = _drill.build_override(config, {"app": "sha256:abc"}, {"app": {8080: 40001}}, {"app": {"SMTP_HOST": "x"}},
                                 {"io.selfhost-rollback.drill": "d-1"})
    assert 'image: "sha256:abc"' in text and "container_name: !reset null" in text
    assert 'ports: !override ["127.0.0.1:40001:8080"]' in text and "ports: !override []" in text
    assert text.count('restart: "no"') == 2 and '"SMTP_HOST": "x"' in text
    assert text.count('labels: {"io.selfhost-rollback.drill": "d-1"}') == 5  # 2 services, 2 volumes, 1 network


@pytest.mark.parametrize("config, expected", [
    ({"volumes": {"data": {"external": True}}}, "volume data is external"),
    ({"networks": {"proxy": {"external": True}}}, "network proxy is external"),
    ({"services": {"app": {"network_mode": "host"}}}, "uses the host's network"),
    ({"services": {"app": {"volumes": [{"type": "bind", "source": "/srv/shared"}]}}}, "bind-mounts /srv/shared"),
])
def test_what_would_be_shared_with_production_is_refused(config, expected):
    problems = _drill.isolation_problems(config, "/ledger/notes/drills/work/d-1", [])
    assert len(problems) == 1 and expected in problems[0]


def test_binds_inside_the_copy_or_allowed_are_fine():
    config = {"services": {"app": {"volumes": [{"type": "bind", "source": "/ledger/w/config"},
                                               {"type": "bind", "source": "/srv/models/llama"}]}}}
    assert _drill.isolation_problems(config, "/ledger/w", ["/srv/models"]) == []


@pytest.mark.parametrize("found, ignore, problems", [
    ({"public.notes": 3}, [], []),
    ({"public.notes": 2}, [], ["table public.notes has 2 rows, the manifest 3"]),
    ({}, [], ["table public.notes is missing (the manifest has 3 rows)"]),
    ({"public.notes": 3, "public.sessions": 1}, ["sessions"], []),
])
def test_row_counts(found, ignore, problems):
    assert _drill.compare_counts({"public.notes": 3}, found, ignore) == problems


def test_timings_sum_to_time_to_healthy_only_when_complete():
    assert _drill.summary_timings({"restore_s": 1.5, "boot_s": 2.0, "healthy_s": 0.5})["time_to_healthy_s"] == 4.0
    assert _drill.summary_timings({"restore_s": 1.5, "boot_s": None, "healthy_s": None})["time_to_healthy_s"] is None


def test_record_markdown_names_every_phase_and_failure():
    record = {"drill_id": "d-1", "app": "notes", "passed": False, "timings": {"restore_s": 1.23},
              "checks": [{"name": "rows db", "passed": False, "failures": ["table a|b differs"]}], "failures": ["rows db: x"]}
    text = _drill.record_markdown(record)
    assert "FAILED" in text and "| restore | 1.2 s |" in text and "| boot | – |" in text and "a/b differs" in text


def drill(passed, days_ago, release="r1"):
    at = (NOW - datetime.timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"drill_id": f"d-{days_ago}", "release_id": release, "passed": passed, "started_at": at, "finished_at": at,
            "timings": {"restore_s": 1.0, "boot_s": 2.0, "healthy_s": 3.0, "time_to_healthy_s": 6.0}, "failures": ["boom"]}


@pytest.mark.parametrize("drills, mark, words", [
    ([], "amber", "never drilled"),
    ([drill(True, 1)], "green", "drill passed 24 h ago"),
    ([drill(True, 9)], "amber", "stale after 7 days"),
    ([drill(True, 1), drill(False, 0)], "red", "last drill failed: boom"),
    ([drill(False, 2), drill(True, 1)], "green", "drill passed"),
])
def test_drill_marks_and_staleness(drills, mark, words):
    got, text, _last = _report.drill_mark(drills, NOW, 7)
    assert got == mark and words in text


@pytest.mark.parametrize("sources, mark", [
    ({"app": "local", "db": "archive"}, "green"),
    ({"app": "registry", "db": "local"}, "amber"),
    ({"app": "missing", "db": "local"}, "red"),
    ({}, "red"),
])
def test_image_marks(sources, mark):
    assert _report.image_mark(sources)[0] == mark


def ledger(drills):
    return [{"host": "h1", "collected_at": "2026-11-22T03:00:00Z", "apps": [{
        "name": "notes", "current_release": "r2", "previous_release": "r1",
        "releases": [{"release_id": "r1", "recorded_at": "2026-11-20T00:00:00Z", "current": False, "images": {"app": "local"}},
                     {"release_id": "r2", "recorded_at": "2026-11-21T00:00:00Z", "current": True, "images": {"app": "local"}}],
        "sets": [{"set_id": "b-1", "release_id": "r1", "created_at": "2026-11-20T00:00:00Z", "verified": True}],
        "drills": drills}]}]


def test_model_marks_the_rollback_target_and_windows():
    model = _report.restore_points(ledger([drill(True, 1)]), NOW, 7, 3, missing_hosts=["h2"])
    app = model["hosts"][0]["apps"][0]
    previous, current = app["restore_points"][1], app["restore_points"][0]
    assert app["rollback_to"] == "r1" and app["mark"] == "green" and previous["mark"] == "green"
    assert previous["last_drill"]["timings"]["time_to_healthy_s"] == 6.0 and previous["evidence_age_s"] == 86400
    assert previous["window"] == "closes after 2 more releases" and current["window"] == "current release"
    assert current["marks"]["backup"] == "red" and current["marks"]["drill"] == "amber"
    assert model["counts"] == {"green": 1, "amber": 0, "red": 1} and model["hosts"][1]["mark"] == "red"


def test_page_is_self_contained_escaped_and_stable():
    hosts = ledger([drill(True, 1)])
    hosts[0]["apps"][0]["name"] = "<script>alert(1)</script>"
    model = _report.restore_points(hosts, NOW, 7, 3)
    page = _report.render_html(model)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'class="t-restore">1.0 s<' in page and 'class="t-healthy">3.0 s<' in page
    assert page == _report.render_html(_report.restore_points(hosts, NOW, 7, 3))


def test_metrics_carry_the_report_figures_and_a_declared_app_without_a_ledger_is_red():
    hosts = ledger([drill(True, 1)])
    hosts[0]["apps"][0]["sets"][0]["bytes"] = 2048
    hosts[0]["declared"] = ["notes", "forgotten"]
    model = _report.restore_points(hosts, NOW, 7, 3)
    forgotten = next(a for a in model["hosts"][0]["apps"] if a["name"] == "forgotten")
    assert forgotten["mark"] == "red" and "nothing for it" in forgotten["note"]
    text = _report.render_metrics(model)
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values['selfhost_rollback_app_mark{app="notes",host="h1"}'] == 0
    assert values['selfhost_rollback_app_mark{app="forgotten",host="h1"}'] == 2
    assert values['selfhost_rollback_restore_point_mark{app="notes",current="false",host="h1",release="r1"}'] == 0
    assert values['selfhost_rollback_backup_bytes{app="notes",host="h1"}'] == 2048
    assert values['selfhost_rollback_backup_age_seconds{app="notes",host="h1"}'] == 2 * 86400 + 3 * 3600
    assert values['selfhost_rollback_drill_passed{app="notes",host="h1"}'] == 1
    assert values['selfhost_rollback_drill_time_to_healthy_seconds{app="notes",host="h1"}'] == 6
    assert values['selfhost_rollback_window_releases_left{app="notes",host="h1"}'] == 2
    assert "# TYPE selfhost_rollback_app_mark gauge" in text and text.endswith("\n")


def test_the_rollback_target_is_the_ledgers_previous_release_only():
    hosts = ledger([drill(True, 1)])
    hosts[0]["apps"][0]["previous_release"] = None
    app = _report.restore_points(hosts, NOW, 7, 3)["hosts"][0]["apps"][0]
    assert app["rollback_to"] is None and "nothing to roll back to" in app["note"]
    del hosts[0]["apps"][0]["previous_release"]
    assert _report.restore_points(hosts, NOW, 7, 3)["hosts"][0]["apps"][0]["rollback_to"] is None
