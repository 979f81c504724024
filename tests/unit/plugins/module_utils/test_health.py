from __future__ import annotations

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _health
from ansible_collections.selfhost.rollback.plugins.module_utils._health import judge, percentile, summarize

RUNNING = {"app": {"state": "running", "health": "healthy"}, "db": {"state": "running", "health": None}}


def samples(ok_ms: list[float], failures: int = 0, status: int = 503) -> list[dict]:
    return [{"status": 200, "ok": True, "ms": ms} for ms in ok_ms] + [{"status": status, "ok": False, "ms": 1.0}] * failures


@pytest.mark.parametrize(("values", "pct", "expected"), [
    ([], 50, None), ([5.0], 99, 5.0), ([1, 2, 3, 4], 50, 2), ([1, 2, 3, 4], 99, 4), (list(range(1, 101)), 99, 99),
])
def test_percentile_nearest_rank(values, pct, expected):
    assert percentile([float(v) for v in values], pct) == expected


def test_summarize_counts_errors_and_statuses():
    figures = summarize(samples([1.0, 2.0, 3.0], failures=1))
    assert figures == {"requests": 4, "errors": 1, "error_rate": 0.25, "p50_ms": 2.0, "p99_ms": 3.0,
                       "statuses": {"200": 3, "503": 1}}


def test_summarize_of_nothing_is_a_total_failure():
    assert summarize([])["error_rate"] == 1.0


def verdict(figures, baseline=None, containers=None, **limits):
    options = {"max_error_rate": 0.05, "max_p99_ratio": 2.0, "p99_floor_ms": 50.0, "max_p99_ms": None}
    options.update(limits)
    return judge(figures, baseline, containers or RUNNING, **options)


def test_healthy_release_passes():
    assert verdict(summarize(samples([2.0] * 20))) == (True, [])


def test_error_rate_above_limit_fails_with_numbers():
    passed, reasons = verdict(summarize(samples([2.0] * 10, failures=10)))
    assert not passed
    assert reasons == ["error rate 50% (10 of 20 probes failed, answers {'200': 10, '503': 10}) is above the limit of 5%"]


@pytest.mark.parametrize(("p99", "baseline_p99", "passes"), [
    (40.0, 2.0, True),     # under the floor: tiny baselines are noise
    (90.0, 50.0, True),    # within 2x
    (120.0, 50.0, False),  # above 2x
])
def test_latency_is_judged_relative_to_the_baseline_with_a_floor(p99, baseline_p99, passes):
    passed, reasons = verdict(summarize(samples([p99] * 5)), baseline={"p99_ms": baseline_p99})
    assert passed is passes, reasons
    if not passes:
        assert "more than 2x the baseline's 50.0 ms (allowed 100.0 ms)" in reasons[0]


def test_absolute_latency_limit():
    passed, reasons = verdict(summarize(samples([300.0] * 5)), max_p99_ms=250.0)
    assert not passed and reasons == ["p99 latency 300.0 ms is above the limit of 250.0 ms"]


def test_container_state_and_health_are_reasons():
    containers = {"app": {"state": "running", "health": "unhealthy"}, "db": {"state": "exited", "health": None},
                  "worker": {"state": "absent", "health": None}}
    passed, reasons = verdict(summarize(samples([2.0] * 5)), containers=containers)
    assert not passed
    assert reasons == ["service app reports health 'unhealthy'", "service db is exited, not running",
                       "service worker is absent, not running"]


def test_ratio_zero_judges_health_and_errors_only():
    passed, reasons = verdict(summarize(samples([900.0] * 5)), baseline={"p99_ms": 10.0}, max_p99_ratio=0)
    assert passed and reasons == []


def test_a_one_shot_service_is_judged_by_its_exit_code():
    figures = summarize(samples([2.0] * 20))
    done = {"app": {"state": "running", "health": "healthy"}, "migrate": {"state": "exited", "health": None, "one_shot": True, "exit_code": 0}}
    assert verdict(figures, containers=done) == (True, [])
    broken = dict(done, migrate={"state": "exited", "health": None, "one_shot": True, "exit_code": 3})
    assert verdict(figures, containers=broken) == (
        False, ["one-shot service migrate exited with code 3; see 'docker compose logs migrate'"])
    # a service nobody declared one-shot that exits is down, whatever its code
    plain = dict(done, migrate={"state": "exited", "health": None})
    assert verdict(figures, containers=plain) == (False, ["service migrate is exited, not running"])


def test_a_smoke_request_names_what_its_answer_lacks():
    spec = {"path": "/search?q=mugs", "method": "GET", "status": 200, "contains": "7, 14"}
    assert _health.smoke_problems(spec, 200, '{"ids": [7, 14, 21]}') == []
    assert _health.smoke_problems(spec, 500, '{"error": "index of item 7 is unreadable"}') == [
        "GET /search?q=mugs answered 500, expected 200",
        "GET /search?q=mugs does not contain '7, 14' (answer: '{\"error\": \"index of item 7 is unreadable\"}')"]
    assert _health.smoke_problems(dict(spec, contains=None), 0, "") == ["GET /search?q=mugs answered nothing, expected 200"]


def test_answer_checks_match_text_patterns_and_json_values():
    spec = {"path": "/answer?q=refund", "matches": r"refund(ed)? within \d+ days", "json": {"choices.0.finish": "stop"}}
    good = '{"choices": [{"finish": "stop", "text": "refunded within 14 days"}]}'
    assert _health.smoke_problems(spec, 200, good) == []
    bad = '{"choices": [{"finish": "length", "text": "I cannot help"}]}'
    problems = _health.smoke_problems(spec, 200, bad)
    assert problems[0].startswith("GET /answer?q=refund does not match 'refund(ed)? within \\\\d+ days'")
    assert problems[1] == "GET /answer?q=refund: choices.0.finish is 'length', expected 'stop'"
    assert _health.smoke_problems(dict(spec, matches=None), 200, "<html>") == ["GET /answer?q=refund did not answer JSON (answer: '<html>')"]


def test_json_paths_name_the_missing_step():
    document = {"usage": {"total_tokens": 412}, "choices": [{"score": 0.9}]}
    assert _health.json_value(document, "usage.total_tokens") == 412
    assert _health.json_value(document, "choices.0.score") == 0.9
    with pytest.raises(KeyError, match="nothing at 'cost'"):
        _health.json_value(document, "usage.cost")


def test_signals_are_judged_by_limits_and_by_their_ratio_to_the_baseline():
    quality = {"name": "quality", "path": "/answer", "json": "quality", "min": 0.3, "min_ratio": 0.9}
    cost = {"name": "tokens", "path": "/answer", "json": "usage.tokens", "max_ratio": 1.5}
    assert _health.signal_problems(quality, {"value": 0.9}, 0.92) == []
    assert _health.signal_problems(quality, {"value": 0.41}, 0.92) == [
        "signal quality is 0.41, below 0.9x the baseline's 0.92 (at least 0.828 allowed)"]
    assert _health.signal_problems(quality, {"value": 0.2}, None) == ["signal quality is 0.2, below its minimum 0.3"]
    assert _health.signal_problems(cost, {"value": 700}, 400) == [
        "signal tokens is 700, above 1.5x the baseline's 400 (at most 600 allowed)"]
    assert _health.signal_problems(cost, {"error": "GET /answer answered 500"}, 400) == [
        "signal tokens could not be read: GET /answer answered 500"]


def test_signals_read_from_commands_take_the_median_and_name_what_failed():
    spec = {"name": "queue", "service": "worker", "command": ["queue-depth"], "samples": 3, "max": 100}
    outputs = iter([(0, "depth\n12\n"), (0, "40"), (0, "13\n")])
    reading = _health.read_signal(spec, "http://127.0.0.1:1/healthz", lambda service, command, timeout: next(outputs))
    assert reading == {"name": "queue", "source": "'queue-depth' in service worker", "value": 13.0}
    failing = _health.read_signal(spec, "http://127.0.0.1:1/healthz", lambda *args: (1, "no such queue\n"))
    assert failing["value"] is None and failing["error"] == "'queue-depth' in service worker exited with code 1: 'no such queue'"
    words = _health.read_signal(dict(spec, samples=1), "http://x", lambda *args: (0, "many"))
    assert words["error"] == "'queue-depth' in service worker is 'many', not a number"
