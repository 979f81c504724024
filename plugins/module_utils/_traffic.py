# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Traffic shifts behind a reverse proxy: the driver interface, the HAProxy driver and the pure planning (private to the collection).

A traffic shift runs the new version beside the old one behind the same proxy backend and moves
the proxy's weights: all at once for blue/green (schedule ``[100]``), in steps for a canary
(``[5, 25, 50, 100]``). Going back inside that window is a weight change, not a restart.

What a driver must provide (``TrafficDriver``)
    ``backends(backend)``
        the backend's servers, each with its name, address, weight, state (``UP``, ``DOWN``,
        ``MAINT`` or ``DRAIN``; the proxy's own word is kept in ``status``) and its counters since
        the proxy started: requests, sessions, HTTP 5xx answers, connection errors, response
        errors and a response time when the proxy gives one.
    ``set_weights(backend, {server: weight})``
        applies the weights at once, without a reload or restart, reads them back and returns
        them; weights are integers 0..256 (HAProxy's range; other drivers scale them).
    ``set_state(backend, server, "ready" | "drain" | "maint")``
        takes one server in or out of rotation.
    ``snapshot(backend)``
        the counters at one moment; ``deltas(before, after)`` turns two snapshots into the figures
        of the time between them (per server), and ``window_of`` adds up one version's servers, so
        a canary step reads: snapshot, hold, snapshot, ``judge_step(new, old, thresholds)``.
    Every failure is an ``OperatorError`` sentence that names the proxy's address, the backend or
    server, and what to do.

The HAProxy driver (``HAProxyDriver``)
    speaks HAProxy's runtime API over its UNIX stats socket, which must be declared with
    ``stats socket /run/haproxy/admin.sock mode 660 level admin`` in the global section. It uses
    ``show stat <backend> 4 -1`` (CSV), ``set server <backend>/<server> weight <n>``, ``get weight``
    and ``set server ... state``. Weights move only under a dynamic balance algorithm
    (``roundrobin``, ``leastconn``, ``random``); ``static-rr`` and map-based hashing refuse them.
    HAProxy does not give percentiles: its ``rtime`` is the mean response time (ms) of the server's
    last 1024 requests, so a step is judged on a **mean-latency ratio**, not on p99, and that mean
    is not confined to the step (it is the server's recent past when the step is short).

How other proxies would implement the same interface (text only; no driver for them yet)
    Traefik (file provider, weighted services): the driver owns one dynamic-configuration file
    with a ``weighted`` service whose ``services`` list names one service per version with a
    ``weight``; ``set_weights`` rewrites that file atomically and Traefik's file watcher applies it
    without a restart (the driver then polls ``/api/http/services`` until the new weights show).
    ``backends`` reads ``/api/http/services/<name>`` (servers and their status); the counters come
    from Traefik's Prometheus metrics per service (``traefik_service_requests_total`` by ``code``,
    and the ``traefik_service_request_duration_seconds`` histogram, which would allow a p99 ratio).
    Caddy: the driver changes the ``reverse_proxy`` handler through Caddy's admin API
    (``localhost:2019``; a config change there is applied gracefully), using the
    ``weighted_round_robin`` selection policy whose ``weights`` follow the upstream order; 0 takes
    an upstream out. ``backends`` reads ``/reverse_proxy/upstreams`` (address, requests in flight,
    fails). Caddy's metrics are per server and handler, not per upstream, so per-version error
    figures need each version behind its own route (or a version header counted from the JSON
    access log); without them the step is judged ``unknown``, which is not safe.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import socket
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError

MAX_WEIGHT = 256
STATES = ("UP", "DOWN", "MAINT", "DRAIN")
SERVER_STATES = ("ready", "drain", "maint")
EXAMPLE_SCHEDULE = "[5, 25, 50, 100]"
OUTCOMES = ("ok", "breach", "unknown")
NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclasses.dataclass(frozen=True)
class Counters:
    """A server's counters since the proxy started (a reload or restart sets them back to 0)."""

    requests: int
    sessions: int
    http_5xx: int
    connection_errors: int
    response_errors: int
    mean_response_ms: int | None = None


@dataclasses.dataclass(frozen=True)
class Server:
    name: str
    address: str
    weight: int
    state: str
    status: str
    counters: Counters

    def as_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One backend's counters at one moment (``taken_at`` is ``time.monotonic()``)."""

    backend: str
    taken_at: float
    servers: dict[str, Counters]


@dataclasses.dataclass(frozen=True)
class Window:
    """What one server (or one version's servers) did between two snapshots."""

    requests: int
    http_5xx: int
    connection_errors: int
    response_errors: int
    seconds: float
    mean_response_ms: float | None = None

    @property
    def errors(self) -> int:
        return self.http_5xx + self.connection_errors + self.response_errors

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def as_dict(self) -> dict[str, t.Any]:
        return dict(dataclasses.asdict(self), errors=self.errors, error_rate=self.error_rate)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """How a canary step is judged.

    ``max_error_rate``: how far (a fraction: 0.01 is one point) the new version's error rate may rise above the
    old one's in the same step. ``max_mean_latency_ratio``: the new version's mean response time over the old
    one's (HAProxy gives means only); both are first raised to ``latency_floor_ms`` because HAProxy counts whole
    milliseconds. ``min_requests``: fewer requests to the new version than this and the step is ``unknown``.
    """

    max_error_rate: float = 0.01
    max_mean_latency_ratio: float = 1.5
    min_requests: int = 20
    latency_floor_ms: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate <= 1:
            raise OperatorError(f"max_error_rate {self.max_error_rate!r} is not a fraction between 0 and 1 (0.01 allows one point more than the old version)")
        if self.max_mean_latency_ratio < 1:
            raise OperatorError(f"max_mean_latency_ratio {self.max_mean_latency_ratio!r} is below 1, so an equally fast new version "
                                "would breach; use 1.5 or more")
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int) or self.min_requests < 1:
            raise OperatorError(f"min_requests {self.min_requests!r} must be a whole number of at least 1 (20 is a sound default)")
        if self.latency_floor_ms < 0:
            raise OperatorError(f"latency_floor_ms {self.latency_floor_ms!r} must not be negative")


# ---------------------------------------------------------------------- the driver interface
class TrafficDriver:
    """The small interface every proxy driver implements; see the module docstring."""

    where: str = "the proxy"

    def backends(self, backend: str) -> list[Server]:
        raise NotImplementedError

    def set_weights(self, backend: str, weights: t.Mapping[str, int]) -> dict[str, int]:
        raise NotImplementedError

    def set_state(self, backend: str, server: str, state: str) -> None:
        raise NotImplementedError

    def snapshot(self, backend: str) -> Snapshot:
        servers = self.backends(backend)
        return Snapshot(backend=backend, taken_at=time.monotonic(), servers={server.name: server.counters for server in servers})

    def deltas(self, before: Snapshot) -> tuple[Snapshot, dict[str, Window]]:
        """Read the backend again and return that snapshot with each server's figures since ``before``."""
        after = self.snapshot(before.backend)
        return after, deltas(before, after, where=self.where)


# ---------------------------------------------------------------------- HAProxy's runtime API
def _number(row: dict[str, str], field: str) -> int:
    value = (row.get(field) or "").strip()
    return int(value) if value.lstrip("-").isdigit() else 0


def _state(status: str) -> str:
    """HAProxy's status word (``UP``, ``UP 1/3``, ``no check``, ``MAINT (via a/b)``, ``NOLB``…) as one of STATES."""
    word = status.split(" ", 1)[0].upper()
    if status == "no check" or word == "UP":
        return "UP"
    if word in ("MAINT", "DRAIN"):
        return word
    if word == "NOLB":
        return "DRAIN"
    return "DOWN"  # DOWN, DOWN 1/2 (still down) and any word this code does not know: not a place to send traffic


def parse_stat(text: str) -> list[dict[str, str]]:
    """Rows of ``show stat`` CSV (the header line starts with ``# ``)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        return []
    return list(csv.DictReader(io.StringIO("\n".join([lines[0][2:]] + lines[1:]))))


def server_of(row: dict[str, str]) -> Server:
    status = row.get("status", "")
    rtime = (row.get("rtime") or "").strip()
    has_requests = bool((row.get("req_tot") or "").strip())
    sessions = _number(row, "stot")
    counters = Counters(
        requests=_number(row, "req_tot") if has_requests else sessions,
        sessions=sessions,
        http_5xx=_number(row, "hrsp_5xx"),
        connection_errors=_number(row, "econ"),
        response_errors=_number(row, "eresp"),
        mean_response_ms=int(rtime) if rtime.isdigit() else None,
    )
    weight = _number(row, "uweight") if (row.get("uweight") or "").strip() else _number(row, "weight")
    return Server(name=row.get("svname", ""), address=row.get("addr", ""), weight=weight, state=_state(status), status=status, counters=counters)


class HAProxyDriver(TrafficDriver):
    """HAProxy through its runtime API on the UNIX stats socket (``level admin``); nothing is reloaded."""

    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.where = f"HAProxy's runtime API at {socket_path}"

    def _ask(self, command: str) -> str:
        """One command, one connection: HAProxy answers and closes (non-interactive mode)."""
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(self.timeout)
        try:
            client.connect(self.socket_path)
            client.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except FileNotFoundError as exc:
            raise OperatorError(f"there is no socket at {self.socket_path}: HAProxy is not running or its global section lacks "
                                f"'stats socket {self.socket_path} mode 660 level admin'; start HAProxy or fix the path") from exc
        except PermissionError as exc:
            raise OperatorError(f"{self.where} refused this user (permission denied); run as root or as a member of HAProxy's group "
                                "and give the socket 'mode 660'") from exc
        except ConnectionRefusedError as exc:
            raise OperatorError(f"nothing listens on {self.socket_path} (a stale socket: HAProxy has stopped); start HAProxy and run again") from exc
        except socket.timeout as exc:
            raise OperatorError(f"{self.where} did not answer '{command}' within {self.timeout:g} s; check that HAProxy is not stuck (its log)") from exc
        except OSError as exc:
            raise OperatorError(f"{self.where} could not be used for '{command}' ({exc}); check that HAProxy runs and the socket path is right") from exc
        finally:
            client.close()
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _refusal(self, command: str, answer: str, backend: str) -> OperatorError:
        first = answer.strip().splitlines()[0] if answer.strip() else "(nothing)"
        if "Permission denied" in first:
            hint = f"check that the stats socket has 'level admin' (stats socket {self.socket_path} mode 660 level admin)"
        elif "No such backend" in first or "No such proxy" in first:
            hint = f"check the backend name; HAProxy has these backends: {', '.join(self.backend_names()) or 'none'}"
        elif "No such server" in first:
            hint = f"check the server name; backend '{backend}' has: {', '.join(server.name for server in self.backends(backend))}"
        elif "static LB algorithm" in first:
            hint = f"weights move only with a dynamic algorithm: set 'balance roundrobin' (or leastconn, random) in backend '{backend}' and reload HAProxy once"
        elif first.startswith("Unknown command"):
            hint = "this HAProxy does not know the command; the traffic layer needs HAProxy 1.8 or later and a socket with 'level admin'"
        else:
            hint = "check HAProxy's log and that the stats socket has 'level admin'"
        return OperatorError(f"{self.where} answered '{first}' to '{command}'; {hint}", command=command, answer=answer)

    def backend_names(self) -> list[str]:
        return [row["pxname"] for row in parse_stat(self._ask("show stat -1 2 -1")) if row.get("svname") == "BACKEND"]

    def backends(self, backend: str) -> list[Server]:
        check_name(backend, "backend")
        command = f"show stat {backend} 4 -1"
        answer = self._ask(command)
        if not answer.startswith("# "):
            raise self._refusal(command, answer, backend)
        servers = [server_of(row) for row in parse_stat(answer) if row.get("pxname") == backend]
        if not servers:
            known = ", ".join(self.backend_names()) or "none"
            raise OperatorError(f"{self.where} has no backend '{backend}' with servers (it is a frontend, or has no 'server' lines); its backends are: {known}")
        return servers

    def _command(self, command: str, backend: str) -> str:
        answer = self._ask(command)
        if answer.strip():
            raise self._refusal(command, answer, backend)
        return answer

    def get_weight(self, backend: str, server: str) -> int:
        command = f"get weight {backend}/{server}"
        answer = self._ask(command)
        current = answer.strip().split(" ", 1)[0]
        if not current.isdigit():
            raise self._refusal(command, answer, backend)
        return int(current)

    def set_weights(self, backend: str, weights: t.Mapping[str, int]) -> dict[str, int]:
        """Raises come before lowerings, so no moment leaves every server of the backend at weight 0."""
        current = {server.name: server.weight for server in self.backends(backend)}
        check_weights(weights, current, f"backend '{backend}' at {self.where}")
        order = sorted(weights, key=lambda name: (weights[name] <= current[name], name))
        for name in order:
            if weights[name] != current[name]:
                self._command(f"set server {backend}/{name} weight {weights[name]}", backend)
        applied = {name: self.get_weight(backend, name) for name in weights}
        wrong = {name: weight for name, weight in applied.items() if weight != weights[name]}
        if wrong:
            wanted = {name: weights[name] for name in wrong}
            raise OperatorError(f"{self.where} took the weights but reads back {wrong} for backend '{backend}' instead of {wanted}; "
                                "something else changes weights (an agent check?): stop it and run again")
        return applied

    def set_state(self, backend: str, server: str, state: str) -> None:
        check_name(backend, "backend")
        check_name(server, "server")
        if state not in SERVER_STATES:
            raise OperatorError(f"'{state}' is not a server state HAProxy sets; use one of {', '.join(SERVER_STATES)}")
        self._command(f"set server {backend}/{server} state {state}", backend)


def check_name(name: t.Any, kind: str) -> None:
    """HAProxy names are letters, digits and ``-_.:``; anything else (a space, ``;``) would change the command sent."""
    if not isinstance(name, str) or not NAME.match(name):
        raise OperatorError(f"{name!r} is not a {kind} name HAProxy could have (letters, digits and -_.: only); give the name from haproxy.cfg")


def check_weights(weights: t.Mapping[str, int], current: t.Mapping[str, int], where: str) -> None:
    for name in weights:
        check_name(name, "server")
    unknown = sorted(set(weights) - set(current))
    if unknown:
        raise OperatorError(f"{where} has no server {', '.join(repr(name) for name in unknown)}; its servers are: {', '.join(current)}")
    bad = {name: weight for name, weight in weights.items() if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT}
    if bad:
        raise OperatorError(f"weights {bad} for {where} are not whole numbers from 0 to {MAX_WEIGHT}")
    if not any(dict(current, **weights).values()):
        raise OperatorError(f"the weights {dict(weights)} would leave every server of {where} at 0, so every request would fail; keep one version above 0")


# ---------------------------------------------------------------------- figures between two reads
def deltas(before: Snapshot, after: Snapshot, where: str = "the proxy") -> dict[str, Window]:
    """Each server's figures between two snapshots; a server new in ``after`` counts from 0.

    The response time is the proxy's figure at ``after`` (HAProxy: the mean over the server's last 1024
    requests), ``None`` for a server that has never had a session.
    """
    seconds = max(after.taken_at - before.taken_at, 0.0)
    windows = {}
    for name, now in after.servers.items():
        then = before.servers.get(name) or Counters(0, 0, 0, 0, 0)
        figures = {field: getattr(now, field) - getattr(then, field) for field in ("requests", "sessions", "http_5xx", "connection_errors", "response_errors")}
        if any(value < 0 for value in figures.values()):
            raise OperatorError(f"the counters of server '{name}' at {where} went backwards between two reads: the proxy was reloaded or "
                                "restarted meanwhile, so this step has no figures; hold the step again")
        mean = now.mean_response_ms if now.sessions and now.mean_response_ms is not None else None
        windows[name] = Window(requests=figures["requests"], http_5xx=figures["http_5xx"], connection_errors=figures["connection_errors"],
                               response_errors=figures["response_errors"], seconds=seconds, mean_response_ms=mean)
    return windows


def window_of(windows: t.Mapping[str, Window], servers: t.Iterable[str]) -> Window:
    """One version's servers added up; the mean response time is weighted by each server's requests in the window."""
    chosen = [windows[name] for name in servers if name in windows]
    requests = sum(window.requests for window in chosen)
    timed = [window for window in chosen if window.mean_response_ms is not None]
    served = [window for window in timed if window.requests]
    if served:
        mean: float | None = sum(t.cast(float, window.mean_response_ms) * window.requests for window in served) / sum(window.requests for window in served)
    elif timed:
        mean = sum(t.cast(float, window.mean_response_ms) for window in timed) / len(timed)
    else:
        mean = None
    return Window(requests=requests, http_5xx=sum(window.http_5xx for window in chosen), connection_errors=sum(window.connection_errors for window in chosen),
                  response_errors=sum(window.response_errors for window in chosen), seconds=max((window.seconds for window in chosen), default=0.0),
                  mean_response_ms=mean)


# ---------------------------------------------------------------------- planning
def _names(servers: t.Iterable[str], side: str) -> list[str]:
    names = list(servers)
    if len(set(names)) != len(names):
        raise OperatorError(f"the {side} servers {names} name one server twice; list each once")
    return names


def weights_for(share_percent: float, old_servers: t.Iterable[str], new_servers: t.Iterable[str]) -> dict[str, int]:
    """Integer weights (0..256) that give the new servers ``share_percent`` of the requests, split evenly per side.

    0 puts every request on the old servers, 100 every request on the new ones. The larger per-server weight is 256,
    so the share is met as closely as integer weights allow; a side with a share above 0 keeps at least weight 1.
    """
    old, new = _names(old_servers, "old"), _names(new_servers, "new")
    if isinstance(share_percent, bool) or not isinstance(share_percent, (int, float)) or not 0 <= share_percent <= 100:
        raise OperatorError(f"the share {share_percent!r} is not a percentage from 0 to 100")
    both = sorted(set(old) & set(new))
    if both:
        raise OperatorError(f"{', '.join(both)} is listed as both an old and a new server; a server runs one version")
    if not new or (share_percent < 100 and not old):
        side = "new" if not new else "old"
        raise OperatorError(f"there is no {side} server to send {share_percent if side == 'new' else 100 - share_percent}% of the traffic to; "
                            f"list the backend's {side} servers")
    per_new = share_percent / len(new)
    per_old = (100 - share_percent) / len(old) if old else 0.0
    scale = MAX_WEIGHT / max(per_new, per_old)
    weights = {name: (max(1, round(per_old * scale)) if per_old else 0) for name in old}
    weights.update({name: (max(1, round(per_new * scale)) if per_new else 0) for name in new})
    return weights


def share_of(weights: t.Mapping[str, int], new_servers: t.Iterable[str]) -> float:
    """The percentage of requests the weights give to the new servers (0.0 when every weight is 0)."""
    total = sum(weights.values())
    return 100.0 * sum(weights.get(name, 0) for name in new_servers) / total if total else 0.0


def parse_schedule(steps: t.Any) -> list[int]:
    """A step schedule such as ``[5, 25, 50, 100]`` or ``"5,25,50,100"``: whole percentages 1..100, rising, ending at 100.

    Blue/green is the schedule ``[100]``.
    """
    if isinstance(steps, str):
        steps = [part.strip() for part in steps.split(",")] if steps.strip() else []
    if not isinstance(steps, (list, tuple)) or not steps:
        raise OperatorError(f"the traffic steps {steps!r} are not a list of percentages; give e.g. {EXAMPLE_SCHEDULE} (or [100] for blue/green)")
    parsed = []
    for step in steps:
        if isinstance(step, str) and step.strip().isdigit():
            step = int(step.strip())
        elif isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= 100:
            raise OperatorError(f"the traffic step {step!r} in {list(steps)} is not a whole percentage from 1 to 100; give e.g. {EXAMPLE_SCHEDULE}")
        if parsed and step <= parsed[-1]:
            raise OperatorError(f"the traffic steps {list(steps)} do not rise: {step} follows {parsed[-1]}; give each percentage once, "
                                f"in rising order, e.g. {EXAMPLE_SCHEDULE}")
        parsed.append(step)
    if parsed[-1] != 100:
        raise OperatorError(f"the traffic steps {list(steps)} end at {parsed[-1]}%, so the new version never takes all traffic; end them with 100")
    return parsed


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def _judge_errors(new: Window, old: Window, limits: Thresholds, verdict: dict[str, t.Any]) -> None:
    old_rate = old.error_rate if old.requests >= limits.min_requests else 0.0
    if old.requests < limits.min_requests:
        verdict["notes"].append(f"the old version served only {old.requests} requests in this step, so the new one's error rate is judged against 0%")
    allowed = t.cast(float, old_rate) + limits.max_error_rate
    # with too few requests, the rate as if every missing request had succeeded: a breach even then is a breach
    lowest_rate = new.errors / max(new.requests, limits.min_requests)
    verdict["figures"]["error_rate_allowed"] = allowed
    if lowest_rate > allowed:
        verdict["breached"].append("error_rate")
        verdict["reasons"].append(
            f"error rate: the new version failed {new.errors} of {new.requests} requests ({_percent(new.error_rate)}: {new.http_5xx} HTTP 5xx, "
            f"{new.connection_errors} connection errors, {new.response_errors} response errors), the old one {old.errors} of {old.requests} "
            f"({_percent(old.error_rate)}); at most {_percent(allowed)} is allowed")


def _judge_latency(new: Window, old: Window, limits: Thresholds, verdict: dict[str, t.Any]) -> None:
    if new.mean_response_ms is None or old.mean_response_ms is None:
        side = "new" if new.mean_response_ms is None else "old"
        verdict["unknown"].append(f"mean response time: the proxy gives none for the {side} version, so latency cannot be judged; unknown is not safe")
        return
    ratio = max(new.mean_response_ms, limits.latency_floor_ms) / max(old.mean_response_ms, limits.latency_floor_ms, 1e-9)
    verdict["figures"]["mean_latency_ratio"] = round(ratio, 3)
    if ratio > limits.max_mean_latency_ratio:
        verdict["breached"].append("mean_latency_ratio")
        verdict["reasons"].append(
            f"mean response time: the new version takes {new.mean_response_ms:.0f} ms, the old one {old.mean_response_ms:.0f} ms "
            f"({ratio:.2f}x; at most {limits.max_mean_latency_ratio:g}x is allowed; HAProxy's mean over each server's last 1024 requests)")


def judge_step(new: Window, old: Window, thresholds: Thresholds | None = None) -> dict[str, t.Any]:
    """Judge one step: the new version's error rate and mean latency against the old version's live figures.

    Returns ``outcome`` (``ok``, ``breach`` or ``unknown``), ``reasons`` (sentences naming each figure),
    ``breached`` (figure names: ``error_rate``, ``mean_latency_ratio``), ``notes`` and ``figures`` for the record.
    ``unknown`` (too few requests reached the new version, or a figure is missing) is not safe: the caller holds
    the step longer or moves traffic back; it never proceeds on it. At the 100 percent step the old version gets
    nothing; pass the old version's window of the previous step as ``old``.
    """
    limits = thresholds or Thresholds()
    verdict: dict[str, t.Any] = {"reasons": [], "breached": [], "notes": [], "unknown": [],
                                 "figures": {"new": new.as_dict(), "old": old.as_dict(), "thresholds": dataclasses.asdict(limits)}}
    _judge_errors(new, old, limits, verdict)
    if new.requests < limits.min_requests:
        verdict["unknown"].append(f"only {new.requests} requests reached the new version in {new.seconds:.1f} s (at least {limits.min_requests} are "
                                  "needed to judge it); unknown is not safe: hold the step longer or move the traffic back")
    else:
        _judge_latency(new, old, limits, verdict)
    if verdict["breached"]:
        outcome = "breach"
    elif verdict["unknown"]:
        outcome = "unknown"
        verdict["reasons"] = verdict["unknown"]
    else:
        outcome = "ok"
        verdict["reasons"] = [f"the new version failed {_percent(new.error_rate)} of {new.requests} requests against the old one's "
                              f"{_percent(old.error_rate)} of {old.requests}, mean response {new.mean_response_ms:.0f} ms against "
                              f"{t.cast(float, old.mean_response_ms):.0f} ms: within the thresholds"]
    unknown = verdict.pop("unknown")
    if outcome == "breach":
        verdict["notes"].extend(unknown)
    return dict(verdict, outcome=outcome)
