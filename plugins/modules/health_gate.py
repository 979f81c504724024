#!/usr/bin/python
# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: health_gate
short_description: Judge an app's health against a recorded baseline
version_added: 0.1.0
description:
  - Waits until every service of the app runs (and is healthy where it has a health check)
    and the health URL answers, then sends O(probes) HTTP probes to the app's health URL
    and any extra URLs, and measures the error rate and the p50 and p99 latency.
  - With O(mode=baseline), records the figures as the baseline of a known-good release
    in the ledger. With O(mode=check), judges the figures against that baseline and
    absolute limits, and fails with every reason when the app does not pass.
  - Then it sends the app's smoke requests (O(app.smoke)), which touch its data; any answer that is not the expected one
    fails the gate (and a baseline), so a release that boots but cannot read what it holds does not pass.
  - Then it reads the app's signals (O(app.signals)) - numbers from a JSON answer or a command's output, such as an
    answer's quality score, its cost in tokens, a queue's depth - and judges each by its absolute limits and by its
    ratio to the value recorded in the baseline. A release that answers 200 everywhere but degrades quality or cost fails
    here; a baseline records every signal's value, and a signal that cannot be read stops it.
  - The verdict always carries the numbers behind it.
author:
  - selfhost.rollback maintainers (@selfhost-rollback)
extends_documentation_fragment:
  - selfhost.rollback.app
attributes:
  check_mode:
    support: full
    description: Probes run in check mode too (they only read); a baseline is not written.
  diff_mode:
    support: none
    description: A baseline is a new measurement, not an edit; there is no diff to show.
  idempotent:
    support: partial
    description: O(mode=check) and O(mode=probe) change nothing; O(mode=baseline) rewrites the baseline with new figures.
options:
  mode:
    description:
      - V(check) judges the app against its baseline and limits; fails when it does not pass.
      - V(baseline) measures and records the baseline (the app must pass the absolute limits).
      - V(probe) measures and returns the verdict without failing.
    type: str
    choices: [check, baseline, probe]
    default: check
  baseline:
    description:
      - Name of the baseline in the ledger, usually the id of the release it was taken under.
      - Defaults to the release the ledger says is current, or V(current) when there is none.
    type: str
  probes:
    description: Number of probes per URL.
    type: int
    default: 20
  warmup:
    description: Requests sent and not counted before the probes (first answers after a start are slow).
    type: int
    default: 3
  interval:
    description: Seconds between probes.
    type: float
    default: 0.05
  wait:
    description:
      - Seconds to wait for the app to run and its health URL to answer 2xx before probing.
      - The time it took is returned as RV(time_to_healthy_s).
    type: float
    default: 60
  max_error_rate:
    description: Highest share of failed probes (non-2xx or no answer) that still passes.
    type: float
    default: 0.05
  max_p99_ratio:
    description:
      - Highest p99 latency, as a multiple of the baseline's p99, that still passes.
      - V(0) judges health and errors only, not latency against the baseline.
    type: float
    default: 2.0
  p99_floor_ms:
    description:
      - The relative limit never goes below this many milliseconds.
      - The p99 of a few probes is close to their slowest answer, and a small app on a busy host
        answers in tens of milliseconds with spikes; below this floor a ratio is noise, not a regression.
    type: float
    default: 500
  max_p99_ms:
    description: Absolute p99 limit in milliseconds; none by default.
    type: float
requirements:
  - Docker SDK for Python 7.0 or newer
  - the Compose v2 CLI plugin (C(docker compose))
notes:
  - Baselines are kept in C(<store>/<app>/baselines/<name>.json).
seealso:
  - module: selfhost.rollback.app_info
"""

EXAMPLES = r"""
- name: Record the baseline while the release is known good
  selfhost.rollback.health_gate:
    app: "{{ item }}"
    mode: baseline
  loop: "{{ rollback_apps }}"

- name: Judge the new version against it (fails with the reasons)
  selfhost.rollback.health_gate:
    app: "{{ app }}"
    mode: check
    baseline: "{{ release_before.release_id }}"
    max_error_rate: 0.01
    max_p99_ratio: 3
"""

RETURN = r"""
passed:
  description: Whether the app passed.
  returned: always
  type: bool
reasons:
  description:
    - Every reason it did not pass, each a sentence with its numbers.
    - When the gate could not run, the sentence that says why.
  returned: always
  type: list
  elements: str
  sample: ["error rate 100% (20 of 20 probes failed, answers {'503': 20}) is above the limit of 5%"]
figures:
  description: What was measured.
  returned: always
  type: dict
  sample: {requests: 20, errors: 0, error_rate: 0.0, p50_ms: 2.1, p99_ms: 4.8, statuses: {"200": 20}}
  contains:
    requests:
      description: Number of probes sent.
      type: int
    errors:
      description: Probes that did not answer 2xx.
      type: int
    error_rate:
      description: Share of failed probes, from V(0) to V(1).
      type: float
    p50_ms:
      description: Median latency of the 2xx answers in milliseconds (V(null) when there was none).
      type: float
    p99_ms:
      description: 99th percentile latency of the 2xx answers in milliseconds (V(null) when there was none).
      type: float
    statuses:
      description: Number of answers per HTTP status (V(0) when nothing answered), keyed by the status as a string.
      type: dict
baseline:
  description: The baseline judged against (its figures and when it was taken), or V(null).
  returned: always
  type: dict
  contains:
    format:
      description: Record format version.
      type: int
    app:
      description: The app's name.
      type: str
    name:
      description: The baseline's name (RV(baseline_name)).
      type: str
    taken_at:
      description: When it was taken (UTC).
      type: str
    figures:
      description: What was measured then, with the same keys as RV(figures).
      type: dict
    containers:
      description: State and health of every service's container then, as in RV(containers).
      type: dict
    time_to_healthy_s:
      description: Seconds until the app was healthy then.
      type: float
    signals:
      description: The value of each signal of O(app.signals) then, keyed by signal name (V(null) when it could not be read).
      type: dict
baseline_name:
  description: Name of the baseline in the ledger.
  returned: always
  type: str
containers:
  description:
    - State and health of every service's container.
    - Keyed by service name.
  returned: always
  type: dict
  sample: {app: {state: running, health: healthy}, db: {state: running, health: healthy}}
  contains:
    state:
      description: The container's state (V(running), V(exited)...), or V(absent) when it has none.
      type: str
    health:
      description: The container's health check status, or V(null) without a health check or container.
      type: str
    one_shot:
      description: V(true) for a one-shot service.
      type: bool
      returned: for a one-shot service with a container
    exit_code:
      description: The container's exit code (a one-shot service passes when it exited with V(0)).
      type: int
      returned: for a one-shot service with a container
smoke:
  description:
    - One entry per smoke request of O(app.smoke), sent once the app is healthy - C(request), C(status), C(passed) and
      C(problems) (why the answer is not the expected one). Any failure fails the gate.
  returned: always
  type: list
  elements: dict
  sample: [{request: "GET /search?q=invoice", status: 500, passed: false, problems: ["GET /search?q=invoice answered 500, expected 200"]}]
  contains:
    request:
      description: The request's method and path.
      type: str
    status:
      description: HTTP status of the answer (V(0) when nothing answered).
      type: int
    passed:
      description: Whether the answer is the expected one.
      type: bool
    problems:
      description: Why the answer is not the expected one (empty when it is).
      type: list
      elements: str
signals:
  description:
    - One entry per signal of O(app.signals), read once the app is healthy - C(name), C(source) (where it was read),
      C(value) (the median of its samples; V(null) when it could not be read, with C(error)), C(baseline) (the baseline's
      value, compared by the ratio limits), C(passed) and C(problems) (each broken limit, with the numbers).
  returned: always
  type: list
  elements: dict
  sample: [{name: quality, source: "GET /answer?q=refund -> quality", value: 0.41, baseline: 0.92, passed: false,
            problems: ["signal quality is 0.41, below 0.9x the baseline's 0.92 (at least 0.828 allowed)"]}]
  contains:
    name:
      description: The signal's name.
      type: str
    source:
      description: Where it was read (the request or the command, and the JSON path).
      type: str
    value:
      description: The median of its samples (V(null) when it could not be read).
      type: float
    error:
      description: Why it could not be read.
      type: str
      returned: when it could not be read
    baseline:
      description: The baseline's value, compared by the ratio limits (V(null) with O(mode=baseline) or when the baseline has none).
      type: float
    passed:
      description: Whether it keeps every limit.
      type: bool
    problems:
      description: Each broken limit, with the numbers.
      type: list
      elements: str
time_to_healthy_s:
  description: Seconds until every service ran and the health URL answered 2xx (V(null) if that never happened within O(wait)).
  returned: always
  type: float
outcome:
  description:
    - V(passed) or V(failed), the gate's verdict (RV(passed)); with O(mode=probe) a V(failed) gate does not fail the task.
    - V(failed) when the module could not do its work (the task fails with the same sentence in RV(reasons)).
  returned: always
  type: str
  sample: passed
"""

import os
import subprocess
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._clock import iso
from ansible_collections.selfhost.rollback.plugins.module_utils._compose import Compose, one_shot_services
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import container_state, project_containers, state_failed, state_ok
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError
from ansible_collections.selfhost.rollback.plugins.module_utils import _release
from ansible_collections.selfhost.rollback.plugins.module_utils._dumps import Exec
from ansible_collections.selfhost.rollback.plugins.module_utils._health import (
    judge,
    probe_once,
    read_signal,
    run_smoke,
    signal_problems,
    summarize,
)
from ansible_collections.selfhost.rollback.plugins.module_utils._module import AppModule


def container_states(client: t.Any, app: dict[str, t.Any], services: list[str], one_shot: set[str]) -> dict[str, dict[str, t.Any]]:
    found: dict[str, dict[str, t.Any]] = {name: {"state": "absent", "health": None} for name in services}
    newest_first = sorted(project_containers(client, app["project_name"]), key=lambda c: str(c.attrs.get("Created") or ""), reverse=True)
    for container in newest_first:
        service = container.labels.get("com.docker.compose.service")
        if service in found and found[service]["state"] != "running":
            if found[service]["state"] == "absent" or container.status == "running":
                found[service] = container_state(container, service in one_shot)
    return found


def wait_until_healthy(client: t.Any, app: dict[str, t.Any], services: list[str], one_shot: set[str], url: str,
                       timeout: float, wait: float) -> tuple[float | None, float, dict[str, dict[str, t.Any]]]:
    """Seconds until healthy (None if not), seconds waited, container states."""
    started = time.monotonic()
    while True:
        states = container_states(client, app, services, one_shot)
        waited = round(time.monotonic() - started, 3)
        if all(state_ok(s) for s in states.values()) and probe_once(url, timeout)["ok"]:
            return waited, waited, states
        if waited >= wait:
            return None, waited, states
        if any(state_failed(s) for s in states.values()) and waited > min(wait, 10):
            return None, waited, states  # it is not coming up; do not burn the whole wait
        time.sleep(0.25)


def command_runner(client: t.Any, app: dict[str, t.Any]) -> t.Callable[[str, list[str], float], tuple[int, str]]:
    """Run a signal's command in the running container of a service: exit code and output."""
    def run(service: str, command: list[str], timeout: float) -> tuple[int, str]:
        running = sorted((c for c in project_containers(client, app["project_name"])
                          if c.labels.get("com.docker.compose.service") == service and c.status == "running"),
                         key=lambda c: c.name)
        if not running:
            return 125, f"service {service} has no running container"
        try:
            proc = Exec(running[0].id, f"app {app['name']}").run(command, "reading a signal", check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124, f"no answer within {timeout:g} s"
        return proc.returncode, (proc.stdout or proc.stderr).decode(errors="replace")
    return run


def judge_signals(app: dict[str, t.Any], readings: list[dict[str, t.Any]], baseline: dict[str, t.Any] | None,
                  mode: str) -> tuple[list[dict[str, t.Any]], list[str], list[str]]:
    """Each signal with its baseline value and verdict; the gate's reasons; warnings (a ratio with no baseline value)."""
    specs = {spec["name"]: spec for spec in app.get("signals") or []}
    recorded = (baseline or {}).get("signals") or {}
    judged, reasons, warnings = [], [], []
    for reading in readings:
        spec = specs[reading["name"]]
        before = None if mode == "baseline" else recorded.get(reading["name"])
        if mode != "baseline" and before is None and (spec.get("min_ratio") is not None or spec.get("max_ratio") is not None):
            warnings.append(f"signal {reading['name']} has no value in the baseline; judged by its absolute limits only")
        problems = signal_problems(spec, reading, before)
        if problems and mode == "baseline":
            problems = [p + f" (fix app.signals[{reading['name']}], or the app, before recording a baseline)" for p in problems]
        judged.append(dict(reading, baseline=before, passed=not problems, problems=problems))
        reasons.extend(problems)
    return judged, reasons, warnings


def gate(module: AppModule) -> dict[str, t.Any]:
    params = module.params
    name = module.name
    app = module.app
    health = app.get("health") or {}
    if not health.get("url"):
        raise OperatorError(f"app {name}: health.url is not set; declare the app's health URL to use a health gate")
    if params["probes"] < 1:
        raise OperatorError(f"app {name}: probes must be at least 1")
    ledger = module.ledger
    baseline_name = params["baseline"] or _release.current_release_id(ledger) or "current"
    if "/" in baseline_name or baseline_name.startswith("."):
        raise OperatorError(f"app {name}: baseline name {baseline_name!r} is not usable as a file name")
    config = Compose(app).config()
    services = sorted(config.get("services", {}))
    one_shot = one_shot_services(config, app)
    client = module.client
    time_to_healthy, waited, states = wait_until_healthy(client, app, services, one_shot, health["url"], health["timeout"],
                                                         params["wait"])
    for _index in range(max(params["warmup"], 0) if time_to_healthy is not None else 0):
        probe_once(health["url"], health["timeout"])
    samples = []
    for index in range(params["probes"]):
        for url in [health["url"]] + list(health.get("urls") or []):
            samples.append(probe_once(url, health["timeout"]))
        if index + 1 < params["probes"]:
            time.sleep(params["interval"])
    figures = summarize(samples)
    states = container_states(client, app, services, one_shot)
    baseline_record = ledger.read(os.path.join("baselines", baseline_name + ".json"))
    judged_against = None if params["mode"] == "baseline" else baseline_record
    passed, reasons = judge(figures, (judged_against or {}).get("figures"), states, params["max_error_rate"],
                            params["max_p99_ratio"], params["p99_floor_ms"], params["max_p99_ms"])
    if time_to_healthy is None:
        passed = False
        reasons.insert(0, f"the app did not become healthy (gave up after {waited:.0f} s of at most {params['wait']:g} s)")
    # requests that touch the data: a release that boots but cannot read what it holds fails here
    smoke = run_smoke(health["url"], app.get("smoke") or []) if time_to_healthy is not None else []
    failed_smoke = [problem for outcome in smoke for problem in outcome["problems"]]
    if failed_smoke:
        passed = False
        reasons.append("smoke request " + "; ".join(failed_smoke)
                       + (" (fix the request in app.smoke, or the app, before recording a baseline)" if params["mode"] == "baseline" else ""))
    # the numbers an AI app is judged by beyond HTTP status: quality, cost, tokens, queue depth...
    readings = [read_signal(spec, health["url"], command_runner(client, app)) for spec in app.get("signals") or []] \
        if time_to_healthy is not None else []
    signals, signal_reasons, signal_warnings = judge_signals(app, readings, judged_against, params["mode"])
    if signal_reasons:
        passed = False
        reasons.extend(signal_reasons)
    if params["mode"] == "check" and judged_against is None:
        module.warn(f"app {name}: no baseline {baseline_name!r} in the ledger; judged by absolute limits only")
    elif params["mode"] == "check":
        for warning in signal_warnings:
            module.warn(f"app {name}: {warning}")
    changed = False
    if params["mode"] == "baseline" and passed:
        record = {"format": 1, "app": name, "name": baseline_name, "taken_at": iso(), "figures": figures,
                  "containers": states, "time_to_healthy_s": time_to_healthy,
                  "signals": {reading["name"]: reading["value"] for reading in readings}}
        changed = True
        if not module.check_mode:
            with module.lock("health baseline", timeout=30):
                ledger.write(os.path.join("baselines", baseline_name + ".json"), record)
        judged_against = record
    result = {"changed": changed, "passed": passed, "outcome": "passed" if passed else "failed", "reasons": reasons,
              "figures": figures, "baseline": judged_against, "baseline_name": baseline_name, "containers": states,
              "time_to_healthy_s": time_to_healthy, "smoke": smoke, "signals": signals}
    if not passed and params["mode"] != "probe":
        verb = "cannot be the baseline" if params["mode"] == "baseline" else "failed its health gate"
        module.fail(f"app {name} {verb}: " + "; ".join(reasons), **result)
    return result


def main() -> None:
    module = AppModule({
        "mode": {"type": "str", "choices": ["check", "baseline", "probe"], "default": "check"},
        "baseline": {"type": "str"},
        "probes": {"type": "int", "default": 20},
        "warmup": {"type": "int", "default": 3},
        "interval": {"type": "float", "default": 0.05},
        "wait": {"type": "float", "default": 60},
        "max_error_rate": {"type": "float", "default": 0.05},
        "max_p99_ratio": {"type": "float", "default": 2.0},
        "p99_floor_ms": {"type": "float", "default": 500},
        "max_p99_ms": {"type": "float"},
    })
    module.run(gate)


if __name__ == "__main__":
    main()
