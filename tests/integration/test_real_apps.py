"""Two real, widely self-hosted apps that nobody here wrote, installed from PyPI at two released
versions with a real schema migration between them (scripts/build-real-apps.sh), deployed with a
plain ``docker compose up -d`` in their directory and driven through pre_upgrade, upgrade,
rollback, drill and report. Each app's whole cycle is one test, run once per test run.

- I Hate Money 6.1.5 -> 7.2.1 (Flask, Alembic on PostgreSQL): the web service migrates the
  schema itself when it starts (three revisions, a new column among them).
- Kinto 22.0.0 -> 26.5.0 (Pyramid, PostgreSQL): the schema moves with ``kinto migrate`` in a
  one-shot service the server waits for (storage schema 23 -> 26).
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import free_port, http, write_inventory
from stacks import assert_runs_what_compose_says, compose

STACKS = Path(__file__).parent / "stacks"


def deploy(template: str, tmp_path: Path, env: dict[str, str]) -> Path:
    directory = tmp_path / "srv" / f"{template}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(STACKS / template, directory)
    (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (directory / ".env").chmod(0o600)
    compose(directory, "up", "-d", "--wait", "--wait-timeout", "180", timeout=400)
    return directory


def start(template: str, tmp_path: Path, cleanup: list[Path], env: dict[str, str], prefix: str, health: str) -> tuple[Path, str]:
    """Deploy the app at its first version with a fresh password and port; its API base once it answers."""
    port = free_port()
    directory = deploy(template, tmp_path, dict(env, DB_PASSWORD=f"canary-{secrets.token_hex(8)}", WEB_PORT=str(port)))
    cleanup.append(directory)
    base = f"http://127.0.0.1:{port}{prefix}"
    wait_for(base + health)
    return directory, base


def wait_for(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http("GET", url, timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer 200 within {timeout:.0f} s")


def psql(directory: Path, user: str, sql: str) -> str:
    return compose(directory, "exec", "-T", "db", "psql", "-U", user, "-d", user, "-tAc", sql).stdout.strip()


def cycle(run_playbook, tmp_path: Path, app: dict, upgrade_env: dict[str, str], report: Path) -> dict:
    """pre_upgrade, upgrade, rollback, drill, report; each must pass. Returns the step results."""
    inventory = write_inventory(tmp_path / "inventory.json", group_vars={
        "rollback_apps": [app], "rollback_store": str(tmp_path / "ledger"), "report_dest": str(report)})
    steps = {}
    for name, playbook, extra in [
        ("pre_upgrade", "selfhost.rollback.pre_upgrade", {}),
        ("upgrade", "selfhost.rollback.upgrade", {"upgrade_env": upgrade_env, "upgrade_max_p99_ratio": 0}),
    ]:
        run = run_playbook(playbook, extra, inventory=inventory)
        assert run.rc == 0, f"{name}:\n{run.stdout[-4000:]}"
        steps[name] = run
    return {"inventory": inventory, **steps}


def finish(run_playbook, inventory: Path) -> None:
    for name, playbook, extra in [
        ("drill", "selfhost.rollback.drill", {"drill_target": "current"}),
        ("report", "selfhost.rollback.report", {}),
    ]:
        run = run_playbook(playbook, extra, inventory=inventory)
        assert run.rc == 0, f"{name}:\n{run.stdout[-4000:]}"


@pytest.fixture
def cleanup():
    directories: list[Path] = []
    yield directories
    for directory in directories:
        compose(directory, "down", "-v", "--timeout", "5", check=False)


def test_i_hate_money_migrating_at_start_upgrades_rolls_back_and_drills(tmp_path, run_playbook, docker_client, registry, cleanup):
    directory, base = start("ihatemoney", tmp_path, cleanup, {"IHATEMONEY_VERSION": "6.1.5", "SECRET_KEY": secrets.token_hex(16)},
                            "", "/healthcheck")
    auth = {"Authorization": "Basic " + base64.b64encode(b"shop:budget-pw").decode()}

    def api(method: str, path: str, form: dict | None = None):
        data = urllib.parse.urlencode(form, doseq=True).encode() if form else None
        request = urllib.request.Request(f"{base}/api{path}", data=data, method=method, headers=auth)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    api("POST", "/projects", {"name": "shop", "id": "shop", "password": "budget-pw", "contact_email": "owner@example.org"})
    alice, bob = api("POST", "/projects/shop/members", {"name": "alice"}), api("POST", "/projects/shop/members", {"name": "bob"})
    for what, amount in [("order 1017 mugs", 25), ("order 1018 plates", 40), ("shipping", 7.5)]:
        api("POST", "/projects/shop/bills", {"date": "2026-11-30", "what": what, "payer": alice, "payed_for": [alice, bob], "amount": amount})
    bills = sorted((b["what"], b["amount"]) for b in api("GET", "/projects/shop/bills"))
    assert psql(directory, "budget", "select version_num from alembic_version") == "927ed575acbd"
    assert_runs_what_compose_says(directory, docker_client, "deployed")

    app = {"name": "budget", "project_dir": str(directory), "health": {"url": f"{base}/healthcheck"},
           "databases": [{"service": "db", "engine": "postgres", "database": "budget", "user": "budget"}],
           "volumes": ["dbdata"], "paths": ["config"],
           "schema_probe": {"service": "db", "sql": "select version_num from alembic_version"}}
    done = cycle(run_playbook, tmp_path, app, {"IHATEMONEY_VERSION": "7.2.1"}, tmp_path / "report")
    assert psql(directory, "budget", "select version_num from alembic_version") == "c941aaca38c2"  # migrated by 7.2.1
    assert sorted((b["what"], b["amount"]) for b in api("GET", "/projects/shop/bills")) == bills
    assert all("bill_type" in b for b in api("GET", "/projects/shop/bills"))
    assert_runs_what_compose_says(directory, docker_client, "after the upgrade")

    check = run_playbook("selfhost.rollback.rollback", inventory=done["inventory"], check=True)
    assert check.rc == 0 and "needs_data_restore" in check.stdout, check.stdout[-3000:]
    run = run_playbook("selfhost.rollback.rollback", inventory=done["inventory"])
    assert run.rc == 0, run.stdout[-4000:]
    wait_for(f"{base}/healthcheck", timeout=60)
    assert psql(directory, "budget", "select version_num from alembic_version") == "927ed575acbd"
    answer = api("GET", "/projects/shop/bills")
    assert sorted((b["what"], b["amount"]) for b in answer) == bills and not any("bill_type" in b for b in answer)  # 6.1.5 again
    assert_runs_what_compose_says(directory, docker_client, "after the rollback")
    finish(run_playbook, done["inventory"])


def test_kinto_migrating_in_a_one_shot_service_upgrades_rolls_back_and_drills(tmp_path, run_playbook, docker_client, registry, cleanup):
    directory, base = start("kinto", tmp_path, cleanup, {"KINTO_VERSION": "22.0.0", "HMAC_SECRET": secrets.token_hex(16)},
                            "/v1", "/__heartbeat__")

    def api(method: str, path: str, body: dict | None = None):
        request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode() if body is not None else None,
                                         method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    api("PUT", "/buckets/shop", {"permissions": {"read": ["system.Everyone"], "write": ["system.Everyone"]}})
    api("PUT", "/buckets/shop/collections/orders", {})
    for number in range(1017, 1022):
        api("POST", "/buckets/shop/collections/orders/records", {"data": {"order": number, "item": "mugs"}})

    def orders() -> list[int]:
        return sorted(r["order"] for r in api("GET", "/buckets/shop/collections/orders/records")["data"])

    def version() -> str:
        return api("GET", "/")["project_version"]

    schema = "select max(value::int) from metadata where name = 'storage_schema_version'"
    assert (orders(), psql(directory, "kinto", schema), version()) == ([1017, 1018, 1019, 1020, 1021], "23", "22.0.0")
    assert_runs_what_compose_says(directory, docker_client, "deployed", one_shot=("migrate",))

    app = {"name": "records", "project_dir": str(directory), "health": {"url": f"{base}/__heartbeat__"},
           "databases": [{"service": "db", "engine": "postgres", "database": "kinto", "user": "kinto"}],
           "volumes": ["dbdata"], "paths": ["config"],
           "schema_probe": {"service": "db", "sql": schema}}
    done = cycle(run_playbook, tmp_path, app, {"KINTO_VERSION": "26.5.0"}, tmp_path / "report")
    assert (psql(directory, "kinto", schema), version()) == ("26", "26.5.0")  # kinto migrate ran in its one-shot service
    assert orders() == [1017, 1018, 1019, 1020, 1021]
    assert_runs_what_compose_says(directory, docker_client, "after the upgrade", one_shot=("migrate",))

    run = run_playbook("selfhost.rollback.rollback", inventory=done["inventory"])
    assert run.rc == 0, run.stdout[-4000:]
    wait_for(f"{base}/__heartbeat__", timeout=60)
    assert (psql(directory, "kinto", schema), version(), orders()) == ("23", "22.0.0", [1017, 1018, 1019, 1020, 1021])
    assert_runs_what_compose_says(directory, docker_client, "after the rollback", one_shot=("migrate",))
    finish(run_playbook, done["inventory"])
