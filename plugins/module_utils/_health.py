# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health probes, baselines and verdicts (private to the collection).

Pure functions over probe samples, so the verdict logic is unit-tested without a server.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
import typing as t
import urllib.error
import urllib.parse

from ansible.module_utils.urls import open_url


def probe_once(url: str, timeout: float, with_body: bool = False) -> dict[str, t.Any]:
    """One GET: status (0 when nothing answered), latency in ms, ok for 2xx; the body (JSON if it parses) on request."""
    started = time.monotonic()
    status, error, raw = 0, None, b""
    try:
        with open_url(url, timeout=timeout, validate_certs=False) as response:
            raw = response.read(65536)
            status = response.status
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(65536)
    except (OSError, ValueError) as exc:
        error = str(getattr(exc, "reason", exc))
    sample = {"url": url, "status": status, "ok": 200 <= status < 300,
              "ms": round((time.monotonic() - started) * 1000.0, 3)}
    if with_body:
        try:
            sample["body"] = json.loads(raw) if raw else None
        except ValueError:
            sample["body"] = raw.decode(errors="replace")[:500]
    if error:
        sample["error"] = error
    return sample


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(math.ceil(pct / 100.0 * len(ordered))))
    return round(ordered[rank - 1], 3)


def summarize(samples: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    """Figures over samples: requests, errors, error rate, p50/p99 of successful answers."""
    ok_ms = [s["ms"] for s in samples if s["ok"]]
    errors = sum(1 for s in samples if not s["ok"])
    statuses: dict[str, int] = {}
    for sample in samples:
        statuses[str(sample["status"])] = statuses.get(str(sample["status"]), 0) + 1
    return {
        "requests": len(samples),
        "errors": errors,
        "error_rate": round(errors / len(samples), 4) if samples else 1.0,
        "p50_ms": percentile(ok_ms, 50),
        "p99_ms": percentile(ok_ms, 99),
        "statuses": statuses,
    }


def judge(figures: dict[str, t.Any], baseline: dict[str, t.Any] | None, containers: dict[str, dict[str, t.Any]],
          max_error_rate: float, max_p99_ratio: float, p99_floor_ms: float,
          max_p99_ms: float | None = None) -> tuple[bool, list[str]]:
    """The verdict and every reason behind it, each a sentence with its numbers."""
    reasons: list[str] = []
    for name, state in sorted(containers.items()):
        if state.get("one_shot") and state.get("state") == "exited":
            if state.get("exit_code") != 0:
                reasons.append(f"one-shot service {name} exited with code {state.get('exit_code')}; see 'docker compose logs {name}'")
        elif state.get("state") != "running":
            reasons.append(f"service {name} is {state.get('state') or 'absent'}, not running")
        elif state.get("health") not in (None, "healthy"):
            reasons.append(f"service {name} reports health '{state.get('health')}'")
    if figures["requests"] and figures["error_rate"] > max_error_rate:
        reasons.append(
            f"error rate {figures['error_rate']:.0%} ({figures['errors']} of {figures['requests']} probes failed, "
            f"answers {figures['statuses']}) is above the limit of {max_error_rate:.0%}"
        )
    p99 = figures.get("p99_ms")
    if p99 is not None and max_p99_ms is not None and p99 > max_p99_ms:
        reasons.append(f"p99 latency {p99:.1f} ms is above the limit of {max_p99_ms:.1f} ms")
    if p99 is not None and baseline and baseline.get("p99_ms") is not None and max_p99_ratio > 0:
        allowed = max(baseline["p99_ms"] * max_p99_ratio, p99_floor_ms)
        if p99 > allowed:
            reasons.append(
                f"p99 latency {p99:.1f} ms is more than {max_p99_ratio:g}x the baseline's {baseline['p99_ms']:.1f} ms "
                f"(allowed {allowed:.1f} ms)"
            )
    return (not reasons), reasons


# --------------------------------------------------------------------------- smoke requests

def http_request(url: str, method: str, body: str | None, timeout: float,
                 content_type: str | None = None) -> tuple[int, str]:
    """One request: the status (0 when nothing answered) and up to 1 MiB of the answer."""
    headers = {"Content-Type": content_type} if content_type else None
    try:
        with open_url(url, method=method, data=body.encode() if body is not None else None, timeout=timeout,
                      headers=headers, validate_certs=False) as response:
            return int(response.status), response.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(1 << 20).decode(errors="replace") if exc.fp else ""
    except (OSError, ValueError):
        return 0, ""


def smoke_name(spec: dict[str, t.Any]) -> str:
    return f"{spec.get('method') or 'GET'} {spec['path']}"


def json_value(document: t.Any, path: str) -> t.Any:
    """The value at a dotted path into a JSON document (``usage.total_tokens``, ``choices.0.score``)."""
    value = document
    for step in [part for part in path.split(".") if part != ""]:
        if isinstance(value, list) and step.lstrip("-").isdigit() and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        elif isinstance(value, dict) and step in value:
            value = value[step]
        else:
            raise KeyError(f"the answer has no {path!r} (nothing at {step!r})")
    return value


def smoke_problems(spec: dict[str, t.Any], status: int, body: str) -> list[str]:
    """Why an answer is not the one a smoke request expects (empty when it is)."""
    problems = []
    want = int(spec.get("status") or 200)
    if status != want:
        problems.append(f"{smoke_name(spec)} answered {status or 'nothing'}, expected {want}")
    shown = f" (answer: {body[:120]!r})" if body else ""
    text = spec.get("contains")
    if text and text not in body:
        problems.append(f"{smoke_name(spec)} does not contain {text!r}{shown}")
    pattern = spec.get("matches")
    if pattern and not re.search(pattern, body):
        problems.append(f"{smoke_name(spec)} does not match {pattern!r}{shown}")
    expected = spec.get("json") or {}
    if expected:
        try:
            document = json.loads(body)
        except ValueError:
            return problems + [f"{smoke_name(spec)} did not answer JSON{shown}"]
        for path, value in sorted(expected.items()):
            try:
                found = json_value(document, path)
            except KeyError as exc:
                problems.append(f"{smoke_name(spec)}: {exc.args[0]}")
                continue
            if found != value:
                problems.append(f"{smoke_name(spec)}: {path} is {found!r}, expected {value!r}")
    return problems


def app_request(base_url: str, spec: dict[str, t.Any], timeout: float) -> tuple[int, str]:
    """Send a request spec (``path`` with its query, ``method``, ``body``, ``content_type``) to the scheme
    and host of ``base_url``: the status and the answer (smoke requests and signals alike)."""
    parts = urllib.parse.urlsplit(base_url)
    path, _mark, query = spec["path"].partition("?")
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path if path.startswith("/") else "/" + path, query, ""))
    return http_request(url, spec.get("method") or "GET", spec.get("body"), float(spec.get("timeout") or timeout),
                        spec.get("content_type"))


def run_smoke(base_url: str, specs: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """Send each smoke request to the scheme and host of ``base_url``; one result per request."""
    results = []
    for spec in specs:
        status, body = app_request(base_url, spec, 5)
        problems = smoke_problems(spec, status, body)
        results.append({"request": smoke_name(spec), "status": status, "passed": not problems, "problems": problems})
    return results


# --------------------------------------------------------------------------- signals


def signal_source(spec: dict[str, t.Any]) -> str:
    if spec.get("path"):
        return f"{spec.get('method') or 'GET'} {spec['path']}" + (f" -> {spec['json']}" if spec.get("json") else "")
    return f"'{' '.join(spec['command'])}' in service {spec['service']}" + (f" -> {spec['json']}" if spec.get("json") else "")


def as_number(value: t.Any, where: str) -> float:
    """A signal's value as a float: a JSON number, or text that is one (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where} is {value!r}, not a number")
    try:
        return float(value)
    except ValueError as exc:
        raise ValueError(f"{where} is {value!r}, not a number") from exc


def parse_signal(spec: dict[str, t.Any], text: str) -> float:
    """The number in an answer or a command's output: at the JSON path when one is given, else the whole (last line)."""
    where = signal_source(spec)
    if spec.get("json"):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{where}: the answer is not JSON ({text[:80]!r})") from exc
        try:
            return as_number(json_value(document, spec["json"]), where)
        except KeyError as exc:
            raise ValueError(f"{where}: {exc.args[0]}") from exc
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return as_number(lines[-1] if lines else "", where)


def read_signal(spec: dict[str, t.Any], base_url: str, run_command: t.Callable[[str, list[str], float], tuple[int, str]]
                ) -> dict[str, t.Any]:
    """Read one signal ``samples`` times: the median value, or the sentence that says why it could not be read."""
    values: list[float] = []
    error = None
    for _index in range(max(int(spec.get("samples") or 1), 1)):
        if spec.get("path"):
            status, text = app_request(base_url, spec, 10)
            if not 200 <= status < 300:
                error = f"{signal_source(spec)} answered {status or 'nothing'}"
                break
        else:
            code, text = run_command(spec["service"], list(spec["command"]), float(spec.get("timeout") or 10))
            if code != 0:
                error = f"{signal_source(spec)} exited with code {code}: {text.strip()[-160:]!r}"
                break
        try:
            values.append(parse_signal(spec, text))
        except ValueError as exc:
            error = str(exc)
            break
    reading: dict[str, t.Any] = {"name": spec["name"], "source": signal_source(spec),
                                 "value": round(statistics.median(values), 6) if values and error is None else None}
    if error:
        reading["error"] = error
    return reading


def signal_problems(spec: dict[str, t.Any], reading: dict[str, t.Any], baseline: float | None) -> list[str]:
    """Sentences, with the numbers, for each limit a signal's value breaks (its absolute limits, its ratios to the baseline)."""
    name = spec["name"]
    if reading.get("error"):
        return [f"signal {name} could not be read: {reading['error']}"]
    value = reading["value"]
    problems = []
    if spec.get("min") is not None and value < spec["min"]:
        problems.append(f"signal {name} is {value:g}, below its minimum {spec['min']:g}")
    if spec.get("max") is not None and value > spec["max"]:
        problems.append(f"signal {name} is {value:g}, above its maximum {spec['max']:g}")
    if baseline is not None:
        if spec.get("min_ratio") is not None and value < baseline * spec["min_ratio"]:
            problems.append(f"signal {name} is {value:g}, below {spec['min_ratio']:g}x the baseline's {baseline:g} "
                            f"(at least {baseline * spec['min_ratio']:g} allowed)")
        if spec.get("max_ratio") is not None and value > baseline * spec["max_ratio"]:
            problems.append(f"signal {name} is {value:g}, above {spec['max_ratio']:g}x the baseline's {baseline:g} "
                            f"(at most {baseline * spec['max_ratio']:g} allowed)")
    return problems
