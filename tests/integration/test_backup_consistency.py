"""Consistency under load: a SQLite database under a continuous writer and PostgreSQL
under a write load both come back in a state where the writer's invariant holds.
Also: odd files in a volume round-trip through the module, and restic as backend."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path


from conftest import COLLECTIONS_PATH, REGISTRY

if str(COLLECTIONS_PATH) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_PATH))
from ansible_collections.selfhost.rollback.plugins.module_utils import _tree  # noqa: E402  (needs the path above)

BACKUP = "selfhost.rollback.backup"
VERIFY = "selfhost.rollback.backup_verify"
RESTORE = "selfhost.rollback.restore"

WRITER = r'''
import random, sqlite3, time
c = sqlite3.connect("/data/app.db", timeout=30, isolation_level=None)
c.execute("pragma journal_mode=wal")
c.execute("create table if not exists accounts(id integer primary key, balance integer not null)")
c.execute("create table if not exists transfers(id integer primary key, src int, dst int, amount int)")
c.execute("create table if not exists meta(k text primary key, v integer)")
if not c.execute("select count(*) from accounts").fetchone()[0]:
    c.execute("begin")
    c.executemany("insert into accounts values (?, 100)", [(i,) for i in range(10)])
    c.execute("insert into meta values ('transfers', 0)")
    c.execute("commit")
while True:
    src, dst = random.sample(range(10), 2)
    amount = random.randint(1, 5)
    c.execute("begin immediate")
    c.execute("update accounts set balance = balance - ? where id = ?", (amount, src))
    c.execute("update accounts set balance = balance + ? where id = ?", (amount, dst))
    c.execute("insert into transfers(src, dst, amount) values (?, ?, ?)", (src, dst, amount))
    c.execute("update meta set v = v + 1 where k = 'transfers'")
    c.execute("commit")
    time.sleep(0.001)
'''

COMPOSE = f"""
services:
  writer:
    image: {REGISTRY}/selfhost/notes:1.0
    user: "0"
    entrypoint: ["python3", "-u", "/opt/writer.py"]
    volumes:
      - data:/data
      - ./writer.py:/opt/writer.py:ro
volumes:
  data:
"""


def sqlite_invariant(path: str) -> tuple[int, int, int]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        total = connection.execute("select sum(balance) from accounts").fetchone()[0]
        transfers = connection.execute("select count(*) from transfers").fetchone()[0]
        counter = connection.execute("select v from meta where k='transfers'").fetchone()[0]
    finally:
        connection.close()
    return total, transfers, counter


def test_sqlite_under_a_continuous_writer(tmp_path, module_playbook, docker_client, registry):
    name = f"sqlw-{os.urandom(4).hex()}"
    project = tmp_path / name
    project.mkdir()
    (project / "compose.yaml").write_text(COMPOSE)
    (project / "writer.py").write_text(WRITER)
    compose = ["docker", "compose", "--project-directory", str(project), "-p", name]
    app = {"name": name, "project_dir": str(project),
           "databases": [{"service": "writer", "engine": "sqlite", "database": "app", "path": "/data/app.db"}]}
    store = tmp_path / "ledger"
    try:
        subprocess.run(compose + ["up", "-d"], check=True, capture_output=True)
        mountpoint = docker_client.volumes.get(f"{name}_data").attrs["Mountpoint"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if os.path.exists(f"{mountpoint}/app.db") and sqlite_invariant(f"{mountpoint}/app.db")[1] > 200:
                    break
            except sqlite3.OperationalError:
                pass  # the writer is still creating its tables (they come one statement at a time)
            time.sleep(0.3)
        run, result = module_playbook(BACKUP, {"app": app, "store": str(store)})
        assert run.rc == 0, run.stdout
        item = result["items"][0]
        assert item["format"] == "sqlite-backup-api" and item["tables"]["transfers"] > 0
        assert result["left_out"][0]["name"] == "data"  # captured by the dump
        counted = item["tables"]
        assert counted["transfers"] > 200

        run, verified = module_playbook(VERIFY, {"app": app, "store": str(store)})
        assert run.rc == 0 and verified["passed"], verified

        time.sleep(1)  # the writer moves on
        run, restored = module_playbook(RESTORE, {"app": app, "store": str(store), "start": "none"})
        assert run.rc == 0, run.stdout
        assert not os.path.exists(f"{mountpoint}/app.db-wal")  # the stale WAL of the writer is gone
        total, transfers, counter = sqlite_invariant(f"{mountpoint}/app.db")
        assert total == 1000 and transfers == counter == counted["transfers"]
        assert docker_client.containers.get(f"{name}-writer-1").status == "exited"
    finally:
        subprocess.run(compose + ["down", "-v", "--timeout", "2"], capture_output=True, check=False)


PG_SETUP = """
CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
INSERT INTO accounts SELECT g, 100 FROM generate_series(0, 9) g;
CREATE TABLE transfers (id bigserial PRIMARY KEY, src int, dst int, amount int);
CREATE TABLE meta (k text PRIMARY KEY, v bigint);
INSERT INTO meta VALUES ('transfers', 0);
"""


def pg_load(container: str, stop: threading.Event, done: list) -> None:
    proc = subprocess.Popen(["docker", "exec", "-i", container, "psql", "-X", "-q", "-U", "notes", "-d", "notes"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rng = random.Random(3)
    count = 0
    while not stop.is_set():
        batch = []
        for _attempt in range(20):
            src, dst = rng.sample(range(10), 2)
            amount = rng.randint(1, 5)
            batch.append(f"BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {src}; "
                         f"UPDATE accounts SET balance = balance + {amount} WHERE id = {dst}; "
                         f"INSERT INTO transfers (src, dst, amount) VALUES ({src}, {dst}, {amount}); "
                         "UPDATE meta SET v = v + 1 WHERE k = 'transfers'; COMMIT;\n")
        proc.stdin.write("".join(batch).encode())
        proc.stdin.flush()
        count += 20
        time.sleep(0.01)
    proc.stdin.close()
    proc.wait()
    done.append(count)


def make_odd_files(root: str) -> None:
    os.makedirs(os.path.join(root, "odd/empty dir"))
    for name in ("with space.txt", "ünïcødé ✓", "new\nline"):
        with open(os.path.join(root, "odd", name), "w") as handle:
            handle.write(name * 10)
    os.symlink("with space.txt", os.path.join(root, "odd", "link"))
    os.link(os.path.join(root, "odd", "with space.txt"), os.path.join(root, "odd", "hard"))
    with open(os.path.join(root, "odd", "sparse"), "wb") as handle:
        handle.truncate(32 * 1024 * 1024)
        handle.seek(1 << 20)
        handle.write(b"island")
    os.chmod(os.path.join(root, "odd", "with space.txt"), 0o4750)
    os.chown(os.path.join(root, "odd", "ünïcødé ✓"), 2345, 5432)
    os.chmod(os.path.join(root, "odd", "empty dir"), 0o1777)


def without_volume_root(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k.startswith("odd")}


def test_postgres_under_write_load_odd_files_and_restic(demo_app, module_playbook, docker_client, tmp_path):
    demo = demo_app
    demo.psql(PG_SETUP)
    db = demo.container_ids()["db"]
    uploads = docker_client.volumes.get(f"{demo.name}_uploads").attrs["Mountpoint"]
    make_odd_files(uploads)
    odd_before = without_volume_root(_tree.scan_tree(uploads))

    stop, done = threading.Event(), []
    loader = threading.Thread(target=pg_load, args=(db, stop, done))
    loader.start()
    try:
        time.sleep(2)
        run, result = module_playbook(BACKUP, {"app": demo.definition(), "store": str(demo.store),
                                               "consistency": {"uploads": "none"}})
        time.sleep(1)
    finally:
        stop.set()
        loader.join()
    assert run.rc == 0, run.stdout
    assert done and done[0] > 100
    dump = next(i for i in result["items"] if i["kind"] == "database")
    assert 0 < dump["tables"]["public.transfers"] < done[0]

    # the test restore loads the dump into a throwaway container and compares row counts
    run, verified = module_playbook(VERIFY, {"app": demo.definition(), "store": str(demo.store)})
    assert run.rc == 0 and verified["passed"], verified["failures"]

    # restore into another project (a drill copy on its own port) and check the invariant there
    drill_dir = tmp_path / "drill"
    shutil.copytree(demo.project_dir, drill_dir)
    env = (drill_dir / ".env").read_text().replace(f"NOTES_PORT={demo.port}", "NOTES_PORT=0")
    (drill_dir / ".env").write_text(env)
    drill = f"{demo.name}-drill"
    try:
        run, restored = module_playbook(RESTORE, {"app": demo.definition(), "store": str(demo.store),
                                                  "target": {"project_name": drill, "project_dir": str(drill_dir)},
                                                  "start": "all"})
        assert run.rc == 0, run.stdout
        assert restored["live"] is False
        out = subprocess.run(["docker", "compose", "-p", drill, "--project-directory", str(drill_dir), "exec", "-T", "db",
                              "psql", "-U", "notes", "-d", "notes", "-tAc",
                              "SELECT (SELECT sum(balance) FROM accounts), (SELECT count(*) FROM transfers), "
                              "(SELECT v FROM meta)"], capture_output=True, text=True, check=True).stdout.strip()
        total, transfers, counter = (int(x) for x in out.split("|"))
        assert total == 1000 and transfers == counter == dump["tables"]["public.transfers"]
        drill_uploads = docker_client.volumes.get(f"{drill}_uploads").attrs["Mountpoint"]
        assert without_volume_root(_tree.scan_tree(drill_uploads)) == odd_before
        assert os.stat(os.path.join(drill_uploads, "odd", "sparse")).st_blocks * 512 < 1024 * 1024
        # the live app was not touched
        assert demo.wait_healthy()
    finally:
        subprocess.run(["docker", "compose", "-p", drill, "--project-directory", str(drill_dir), "down", "-v", "-t", "2"],
                       capture_output=True, check=False)

    # restic backend: same data, restic's own dedup and encryption; password never on argv
    repo = tmp_path / "restic-repo"
    restic = {"repository": str(repo), "password": "throwaway-restic-password"}
    run, backed = module_playbook(BACKUP, {"app": demo.definition(), "store": str(demo.store), "backend": "restic",
                                           "restic": restic})
    assert run.rc == 0, run.stdout
    assert all(i.get("snapshot") for i in backed["items"])
    assert "throwaway-restic-password" not in run.stdout + json.dumps(backed)
    set_dir = Path(backed["set_dir"])
    assert sorted(p.name for p in set_dir.iterdir()) == ["manifest.json"]
    run, verified = module_playbook(VERIFY, {"app": demo.definition(), "store": str(demo.store),
                                             "set_id": backed["set_id"], "restic": restic})
    assert run.rc == 0 and verified["passed"], verified
    shutil.rmtree(os.path.join(uploads, "odd"))
    run, restored = module_playbook(RESTORE, {"app": demo.definition(), "store": str(demo.store),
                                              "set_id": backed["set_id"], "restic": restic})
    assert run.rc == 0, run.stdout
    assert without_volume_root(_tree.scan_tree(uploads)) == odd_before
    demo.wait_healthy()
    out = demo.psql("SELECT (SELECT sum(balance) FROM accounts) || '|' || (SELECT count(*) = (SELECT v FROM meta) FROM transfers)")
    assert out == "1000|true"
