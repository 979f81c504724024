"""The traffic layer: weights for a share, step schedules, step verdicts, counter deltas, and the HAProxy driver.

The pure functions are table-driven. The driver is tested against a real HAProxy (Debian's package, installed by
the set-up) started here on 127.0.0.1 with its own admin socket, in front of two small Python HTTP servers: one
answers "old", the other "new" (or 500 on demand).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils import _traffic
from ansible_collections.selfhost.rollback.plugins.module_utils._traffic import (
    Counters,
    HAProxyDriver,
    Snapshot,
    Thresholds,
    Window,
    deltas,
    judge_step,
    parse_schedule,
    share_of,
    weights_for,
    window_of,
)

from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError


# ---------------------------------------------------------------------- weights for a share
@pytest.mark.parametrize("share, old, new, expected", [
    (0, ["blue"], ["green"], {"blue": 256, "green": 0}),
    (100, ["blue"], ["green"], {"blue": 0, "green": 256}),
    (100, [], ["green"], {"green": 256}),
    (50, ["blue"], ["green"], {"blue": 256, "green": 256}),
    (25, ["blue"], ["green"], {"blue": 256, "green": 85}),
    (75, ["blue"], ["green"], {"blue": 85, "green": 256}),
    (5, ["blue"], ["green"], {"blue": 256, "green": 13}),
    (50, ["b1", "b2"], ["green"], {"b1": 128, "b2": 128, "green": 256}),
    (0, ["b1", "b2"], ["g1", "g2"], {"b1": 256, "b2": 256, "g1": 0, "g2": 0}),
])
def test_weights_for_a_share(share, old, new, expected):
    assert weights_for(share, old, new) == expected


@pytest.mark.parametrize("share", [0, 1, 5, 10, 25, 33, 50, 66, 75, 90, 99, 100, 12.5])
@pytest.mark.parametrize("old, new", [(["o"], ["n"]), (["o1", "o2", "o3"], ["n"]), (["o"], ["n1", "n2"]), (["o1", "o2"], ["n1", "n2", "n3"])])
def test_the_weights_give_the_share_within_half_a_point(share, old, new):
    weights = weights_for(share, old, new)
    assert all(0 <= weight <= 256 and isinstance(weight, int) for weight in weights.values())
    assert abs(share_of(weights, new) - share) <= 0.5
    assert len({weights[name] for name in new}) == 1 and len({weights[name] for name in old}) == 1  # even within a version


@pytest.mark.parametrize("share, old, new, words", [
    (-1, ["o"], ["n"], "not a percentage from 0 to 100"),
    (101, ["o"], ["n"], "not a percentage from 0 to 100"),
    (True, ["o"], ["n"], "not a percentage"),
    ("25", ["o"], ["n"], "not a percentage"),
    (25, ["o"], [], "no new server to send 25% of the traffic to"),
    (25, [], ["n"], "no old server to send 75% of the traffic to"),
    (25, ["o", "n"], ["n"], "n is listed as both an old and a new server"),
    (25, ["o", "o"], ["n"], "name one server twice"),
])
def test_weights_for_refuses_with_a_sentence(share, old, new, words):
    with pytest.raises(OperatorError, match=words):
        weights_for(share, old, new)


@pytest.mark.parametrize("weights, new, expected", [
    ({"o": 256, "n": 0}, ["n"], 0.0),
    ({"o": 0, "n": 10}, ["n"], 100.0),
    ({"o": 30, "n": 10}, ["n"], 25.0),
    ({"o": 0, "n": 0}, ["n"], 0.0),
])
def test_share_of(weights, new, expected):
    assert share_of(weights, new) == expected


# ---------------------------------------------------------------------- step schedules
@pytest.mark.parametrize("steps, expected", [
    ([5, 25, 50, 100], [5, 25, 50, 100]),
    ([100], [100]),
    ((1, 100), [1, 100]),
    ("5, 25,50,100", [5, 25, 50, 100]),
    (["10", "100"], [10, 100]),
    ([50.0, 100], [50, 100]),
])
def test_a_schedule_parses(steps, expected):
    assert parse_schedule(steps) == expected


@pytest.mark.parametrize("steps, words", [
    ([], "not a list of percentages"),
    ("", "not a list of percentages"),
    (None, "not a list of percentages"),
    (25, "not a list of percentages"),
    ([5, 25, 20, 100], "do not rise: 20 follows 25"),
    ([5, 5, 100], "do not rise: 5 follows 5"),
    ([5, 25, 50], "end at 50%, so the new version never takes all traffic"),
    ([0, 50, 100], "step 0 .* is not a whole percentage from 1 to 100"),
    ([5, 150], "step 150 .* is not a whole percentage"),
    ([2.5, 100], "step 2.5 .* is not a whole percentage"),
    ([True, 100], "step True"),
    ("5,x,100", "step 'x'"),
])
def test_a_bad_schedule_is_a_sentence(steps, words):
    with pytest.raises(OperatorError, match=words):
        parse_schedule(steps)


# ---------------------------------------------------------------------- judging a step
def window(requests: int, errors: int = 0, mean: float | None = 10.0, connection_errors: int = 0) -> Window:
    return Window(requests=requests, http_5xx=errors, connection_errors=connection_errors, response_errors=0, seconds=30.0, mean_response_ms=mean)


@pytest.mark.parametrize("new, old, outcome, breached, words", [
    (window(100), window(400), "ok", [], "within the thresholds"),
    (window(100, errors=1), window(400, errors=4), "ok", [], "within the thresholds"),
    (window(100, errors=2), window(400, errors=4), "ok", [], "within"),  # 2% against 1% + 1 point
    (window(100, errors=5), window(400, errors=4), "breach", ["error_rate"], "error rate: the new version failed 5 of 100 requests"),
    (window(100, connection_errors=3), window(400), "breach", ["error_rate"], "3 connection errors"),
    (window(100, mean=40.0), window(400, mean=20.0), "breach", ["mean_latency_ratio"], r"mean response time: .* 40 ms, the old one 20 ms \(2.00x"),
    (window(100, mean=29.0), window(400, mean=20.0), "ok", [], "within"),
    (window(100, mean=3.0), window(400, mean=0.0), "ok", [], "within"),  # both under the 5 ms floor: whole-ms noise
    (window(100, errors=10, mean=40.0), window(400), "breach", ["error_rate", "mean_latency_ratio"], "error rate"),
    (window(5), window(400), "unknown", [], "only 5 requests reached the new version .* unknown is not safe"),
    (window(0, mean=None), window(400), "unknown", [], "only 0 requests"),
    (window(5, errors=5), window(400), "breach", ["error_rate"], "failed 5 of 5"),  # even 15 more successes would not save it
    (window(100, mean=None), window(400), "unknown", [], "gives none for the new version"),
    (window(100), window(400, mean=None), "unknown", [], "gives none for the old version"),
])
def test_judge_step(new, old, outcome, breached, words):
    verdict = judge_step(new, old, Thresholds(max_error_rate=0.01, max_mean_latency_ratio=1.5, min_requests=20, latency_floor_ms=5))
    assert verdict["outcome"] == outcome
    assert verdict["breached"] == breached
    assert any(re.search(words, reason) for reason in verdict["reasons"]), verdict["reasons"]
    assert verdict["figures"]["new"]["requests"] == new.requests and verdict["figures"]["old"]["requests"] == old.requests


def test_an_idle_old_version_is_judged_against_zero_errors():
    verdict = judge_step(window(100, errors=1), window(3))
    assert verdict["outcome"] == "ok"
    assert verdict["figures"]["error_rate_allowed"] == pytest.approx(0.01)
    assert "judged against 0%" in verdict["notes"][0]
    assert judge_step(window(100, errors=2), window(3))["outcome"] == "breach"


@pytest.mark.parametrize("options, words", [
    ({"max_error_rate": 2}, "not a fraction between 0 and 1"),
    ({"max_error_rate": -0.1}, "not a fraction"),
    ({"max_mean_latency_ratio": 0.5}, "below 1"),
    ({"min_requests": 0}, "at least 1"),
    ({"min_requests": True}, "whole number"),
    ({"latency_floor_ms": -1}, "must not be negative"),
])
def test_bad_thresholds_are_a_sentence(options, words):
    with pytest.raises(OperatorError, match=words):
        Thresholds(**options)


# ---------------------------------------------------------------------- deltas between two reads
def counters(requests: int, http_5xx: int = 0, econ: int = 0, mean: int | None = 4) -> Counters:
    return Counters(requests=requests, sessions=requests, http_5xx=http_5xx, connection_errors=econ, response_errors=0, mean_response_ms=mean)


def test_deltas_are_the_figures_between_two_snapshots():
    before = Snapshot("app", 100.0, {"old": counters(1000, 10), "new": counters(0, mean=0)})
    after = Snapshot("app", 130.0, {"old": counters(1300, 11, mean=6), "new": counters(100, 7, econ=2, mean=9), "extra": counters(5)})
    got = deltas(before, after)
    assert got["old"] == Window(requests=300, http_5xx=1, connection_errors=0, response_errors=0, seconds=30.0, mean_response_ms=6)
    assert got["new"].errors == 9 and got["new"].error_rate == pytest.approx(0.09)
    assert got["extra"].requests == 5  # a server added meanwhile counts from 0
    both = window_of(got, ["old", "new"])
    assert both.requests == 400 and both.errors == 10
    assert both.mean_response_ms == pytest.approx((6 * 300 + 9 * 100) / 400)


def test_a_server_that_never_served_has_no_mean():
    got = deltas(Snapshot("app", 0.0, {}), Snapshot("app", 1.0, {"new": Counters(0, 0, 0, 0, 0, 0)}))
    assert got["new"].mean_response_ms is None
    assert window_of(got, ["new"]).mean_response_ms is None
    assert window_of(got, ["missing"]) == Window(0, 0, 0, 0, 0.0, None)


def test_counters_going_backwards_mean_a_reload():
    with pytest.raises(OperatorError, match="server 'old' at the proxy went backwards .* reloaded or restarted"):
        deltas(Snapshot("app", 0.0, {"old": counters(500)}), Snapshot("app", 1.0, {"old": counters(3)}))


# ---------------------------------------------------------------------- reading HAProxy's CSV
@pytest.mark.parametrize("status, state", [
    ("UP", "UP"), ("UP 1/3", "UP"), ("no check", "UP"), ("DOWN", "DOWN"), ("DOWN 1/2", "DOWN"), ("MAINT", "MAINT"),
    ("MAINT (via app/other)", "MAINT"), ("MAINT (resolution)", "MAINT"), ("DRAIN", "DRAIN"), ("NOLB", "DRAIN"), ("", "DOWN"), ("weird", "DOWN"),
])
def test_haproxy_status_words(status, state):
    assert _traffic._state(status) == state


def test_a_tcp_backend_counts_sessions_as_requests():
    text = "# pxname,svname,stot,hrsp_5xx,econ,eresp,status,weight,req_tot,rtime,addr,\nsql,db1,7,,1,0,UP,10,,3,10.0.0.1:5432,\n\n"
    (server,) = [_traffic.server_of(row) for row in _traffic.parse_stat(text)]
    assert server == _traffic.Server("db1", "10.0.0.1:5432", 10, "UP", "UP", Counters(7, 7, 0, 1, 0, 3))
    assert _traffic.parse_stat("No such proxy.\n") == []


@pytest.mark.parametrize("name", ["app;shutdown", "app 1", "", "a/b", None])
def test_names_that_would_change_the_command_are_refused(name):
    with pytest.raises(OperatorError, match="is not a backend name HAProxy could have"):
        HAProxyDriver("/nonexistent/admin.sock").backends(name)


def test_no_socket_is_a_sentence():
    with pytest.raises(OperatorError, match=r"no socket at /nonexistent/admin.sock: .*'stats socket /nonexistent/admin.sock mode 660 level admin'"):
        HAProxyDriver("/nonexistent/admin.sock").backends("app")


# ---------------------------------------------------------------------- a real HAProxy
class Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True
    answer = b"old"
    status = 200


class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        server = t.cast(Upstream, self.server)
        self.send_response(server.status)
        self.send_header("Content-Length", str(len(server.answer)))
        self.end_headers()
        self.wfile.write(server.answer)

    def log_message(self, format: str, *args: t.Any) -> None:  # pylint: disable=redefined-builtin  # the signature http.server calls
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


HAPROXY_CFG = """\
global
    stats socket {admin} mode 600 level admin
    stats socket {user} mode 600 level user

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s

frontend web
    bind 127.0.0.1:{port}
    default_backend app

frontend dead
    bind 127.0.0.1:{dead_port}
    default_backend gone

backend app
    balance roundrobin
    server old 127.0.0.1:{old} weight 100
    server new 127.0.0.1:{new} weight 100

backend gone
    retries 0
    server nobody 127.0.0.1:{closed}

backend pinned
    balance static-rr
    server only 127.0.0.1:{old}
"""


class Bed(t.NamedTuple):
    driver: HAProxyDriver
    url: str
    dead_url: str
    old: Upstream
    new: Upstream
    user_socket: str


def wait_for_haproxy(process: subprocess.Popen, admin: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"haproxy exited with {process.returncode}: {log.read_text()[-800:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
            if os.path.exists(admin):
                return
        except OSError:
            pass
        time.sleep(0.02)
    pytest.fail(f"haproxy did not listen on 127.0.0.1:{port} within 5 s: {log.read_text()[-800:]}")


@pytest.fixture(scope="module")
def bed() -> t.Iterator[Bed]:
    binary = shutil.which("haproxy") or next((path for path in ("/usr/sbin/haproxy",) if os.path.exists(path)), None)
    if binary is None:
        pytest.fail("haproxy is not installed, and the traffic tests need the real one; run the set-up (make setup, or scripts/setup-host.sh), "
                    "which installs Debian's haproxy package")
    old, new = Upstream(("127.0.0.1", 0), Answer), Upstream(("127.0.0.1", 0), Answer)
    new.answer = b"new"
    threads = [threading.Thread(target=upstream.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for upstream in (old, new)]
    for thread in threads:
        thread.start()
    workdir = Path(tempfile.mkdtemp(prefix="haproxy-"))  # short: a UNIX socket path has ~100 characters
    admin, user, log = str(workdir / "admin.sock"), str(workdir / "user.sock"), workdir / "haproxy.log"
    port, dead_port = free_port(), free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(HAPROXY_CFG.format(admin=admin, user=user, port=port, dead_port=dead_port, old=old.server_address[1],
                                         new=new.server_address[1], closed=free_port()))
    with log.open("w") as output:
        process = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_haproxy(process, admin, port, log)
        yield Bed(HAProxyDriver(admin), f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{dead_port}/", old, new, user)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for upstream in (old, new):
            upstream.shutdown()
            upstream.server_close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture()
def proxy(bed: Bed) -> Bed:
    """The bed as each test expects it: both servers at weight 100, both answering 200."""
    bed.driver.set_weights("app", {"old": 100, "new": 100})
    bed.old.status = bed.new.status = 200
    return bed


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy from the environment


def answers(url: str, count: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    for _index in range(count):
        try:
            with DIRECT.open(url, timeout=5) as response:
                body = response.read().decode()
        except urllib.error.HTTPError as exc:
            body = f"{exc.code} {exc.read().decode()}"
        seen[body] = seen.get(body, 0) + 1
    return seen


def test_backends_lists_both_servers_with_their_weights(proxy):
    servers = {server.name: server for server in proxy.driver.backends("app")}
    assert sorted(servers) == ["new", "old"]
    assert servers["old"].address == f"127.0.0.1:{proxy.old.server_address[1]}"
    assert servers["new"].address == f"127.0.0.1:{proxy.new.server_address[1]}"
    assert {server.weight for server in servers.values()} == {100}
    assert {(server.state, server.status) for server in servers.values()} == {("UP", "no check")}
    assert set(servers["old"].as_dict()["counters"]) == {"requests", "sessions", "http_5xx", "connection_errors", "response_errors", "mean_response_ms"}


def test_all_traffic_moves_to_the_new_version_and_back(proxy):
    assert proxy.driver.set_weights("app", weights_for(100, ["old"], ["new"])) == {"old": 0, "new": 256}
    assert answers(proxy.url, 50) == {"new": 50}
    assert proxy.driver.get_weight("app", "old") == 0
    proxy.driver.set_weights("app", weights_for(0, ["old"], ["new"]))
    assert answers(proxy.url, 50) == {"old": 50}


def test_a_quarter_share_sends_about_a_quarter(proxy):
    proxy.driver.set_weights("app", weights_for(25, ["old"], ["new"]))
    seen = answers(proxy.url, 48)
    assert set(seen) <= {"old", "new"} and 8 <= seen.get("new", 0) <= 16, seen


def test_the_failing_version_shows_in_the_deltas_and_breaches(proxy):
    proxy.driver.set_weights("app", weights_for(50, ["old"], ["new"]))
    proxy.new.status = 500
    before = proxy.driver.snapshot("app")
    seen = answers(proxy.url, 60)
    after, windows = proxy.driver.deltas(before)
    assert seen == {"old": 30, "500 new": 30}
    assert after.servers["new"].http_5xx - before.servers["new"].http_5xx == 30
    assert (windows["new"].requests, windows["new"].http_5xx, windows["old"].requests, windows["old"].http_5xx) == (30, 30, 30, 0)
    verdict = judge_step(window_of(windows, ["new"]), window_of(windows, ["old"]))
    assert verdict["outcome"] == "breach" and verdict["breached"] == ["error_rate"]
    assert "failed 30 of 30 requests (100.0%: 30 HTTP 5xx" in verdict["reasons"][0]


def test_a_refused_connection_counts_as_a_connection_error(bed):
    before = bed.driver.snapshot("gone")
    seen = answers(bed.dead_url, 3)
    assert sum(seen.values()) == 3 and all(body.startswith("503 ") for body in seen), seen
    _after, windows = bed.driver.deltas(before)
    assert windows["nobody"].connection_errors == 3 and windows["nobody"].errors >= 3


def test_a_bad_backend_name_is_a_sentence(bed):
    with pytest.raises(OperatorError) as caught:
        bed.driver.backends("nope")
    message = str(caught.value)
    assert message.startswith(f"HAProxy's runtime API at {bed.driver.socket_path} answered 'No such proxy.' to 'show stat nope 4 -1'")
    assert "HAProxy has these backends: app, gone, pinned" in message
    with pytest.raises(OperatorError, match="answered 'No such backend.' to 'set server nope/old state drain'"):
        bed.driver.set_state("nope", "old", "drain")
    with pytest.raises(OperatorError, match="has no backend 'web' with servers .* its backends are: app, gone, pinned"):
        bed.driver.backends("web")  # a frontend


def test_a_bad_server_or_weight_is_a_sentence(proxy):
    with pytest.raises(OperatorError, match="backend 'app' at HAProxy's runtime API at .* has no server 'blue'; its servers are: old, new"):
        proxy.driver.set_weights("app", {"blue": 10})
    with pytest.raises(OperatorError, match="not whole numbers from 0 to 256"):
        proxy.driver.set_weights("app", {"new": 300})
    with pytest.raises(OperatorError, match="would leave every server .* at 0"):
        proxy.driver.set_weights("app", {"old": 0, "new": 0})
    assert {server.weight for server in proxy.driver.backends("app")} == {100}  # nothing was changed


def test_a_static_algorithm_refuses_weights_with_the_fix(bed):
    with pytest.raises(OperatorError, match="answered .*static LB algorithm.* set 'balance roundrobin' .* in backend 'pinned'"):
        bed.driver.set_weights("pinned", {"only": 50})


def test_a_socket_without_level_admin_is_a_sentence(bed):
    assert [server.name for server in HAProxyDriver(bed.user_socket).backends("app")] == ["old", "new"]
    with pytest.raises(OperatorError, match=f"at {bed.user_socket} answered 'Permission denied' .* check that the stats socket has 'level admin'"):
        HAProxyDriver(bed.user_socket).set_weights("app", {"new": 50})


def test_drain_and_ready(proxy):
    proxy.driver.set_state("app", "old", "drain")
    try:
        assert {server.name: server.state for server in proxy.driver.backends("app")} == {"old": "DRAIN", "new": "UP"}
        assert answers(proxy.url, 10) == {"new": 10}
    finally:
        proxy.driver.set_state("app", "old", "ready")
    assert {server.state for server in proxy.driver.backends("app")} == {"UP"}
    with pytest.raises(OperatorError, match="'paused' is not a server state HAProxy sets; use one of ready, drain, maint"):
        proxy.driver.set_state("app", "old", "paused")
