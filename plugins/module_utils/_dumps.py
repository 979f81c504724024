# Copyright: selfhost.rollback contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Logical database dumps, taken and restored inside the database containers (private).

PostgreSQL: ``pg_dump`` (plain SQL, one snapshot) streamed out of ``docker exec``;
row counts are read from the dump itself (rows between each ``COPY`` and its
terminator), so they belong to the same snapshot as the data. MySQL/MariaDB:
``mysqldump --single-transaction``. SQLite: the online backup API (``.backup``) into
a copy inside the container, which is consistent even under a writer in WAL mode.

Connections use the container's local socket with the configured user, so no
password is ever passed; nothing secret reaches a command line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
import time
import typing as t

from ansible_collections.selfhost.rollback.plugins.module_utils._archive import CHUNK
from ansible_collections.selfhost.rollback.plugins.module_utils._docker import docker_cli
from ansible_collections.selfhost.rollback.plugins.module_utils._errors import OperatorError, last_lines


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class CopyCounter:
    """Count the rows of every ``COPY ... FROM stdin;`` block of a plain pg_dump stream."""

    def __init__(self) -> None:
        self.tables: dict[str, int] = {}
        self._pending = b""
        self._table: str | None = None

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        self._lines(data, 0, cut)

    def _lines(self, data: bytes, pos: int, end: int) -> None:
        while pos < end:
            if self._table is not None:
                if data.startswith(b"\\.\n", pos):
                    stop = pos
                else:
                    found = data.find(b"\n\\.\n", pos, end)
                    if found < 0:
                        self.tables[self._table] += data.count(b"\n", pos, end)
                        return
                    stop = found + 1
                self.tables[self._table] += data.count(b"\n", pos, stop)
                self._table = None
                pos = stop + 3
                continue
            if data.startswith(b"COPY ", pos):
                line_end = data.find(b"\n", pos, end)
                header = data[pos + 5:line_end].decode("utf-8", "replace")
                name = header.split(" (", 1)[0] if " (" in header else header.split(" FROM stdin", 1)[0]
                self._table = name.strip()
                self.tables.setdefault(self._table, 0)
                pos = line_end + 1
                continue
            found = data.find(b"\nCOPY ", pos, end)
            if found < 0:
                return
            pos = found + 1


class Exec:
    """``docker exec`` into one container, streaming (the CLI; no secret on its command line)."""

    def __init__(self, container_id: str, label: str) -> None:
        self.container_id = container_id
        self.label = label
        self.cli = docker_cli()

    def argv(self, command: list[str], stdin: bool = False, user: str | None = None) -> list[str]:
        args = [self.cli, "exec"]
        if stdin:
            args.append("-i")
        if user:
            args += ["-u", user]
        return args + [self.container_id] + command

    def run(self, command: list[str], what: str, stdin: bytes | None = None, check: bool = True,
            timeout: float = 600, user: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(command, stdin is not None, user), input=stdin, capture_output=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise OperatorError(f"{self.label}: {what} failed (exit {proc.returncode}): {last_lines(proc.stderr.decode(errors='replace'))}")
        return proc

    def stream_out(self, command: list[str], sink: t.Any, what: str, counter: CopyCounter | None = None) -> int:
        """Run ``command`` and copy its stdout into ``sink``; return the bytes copied."""
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(self.argv(command), stdout=subprocess.PIPE, stderr=errors, bufsize=0)
            total = 0
            try:
                for block in iter(lambda: proc.stdout.read(CHUNK), b""):
                    if counter is not None:
                        counter.feed(block)
                    sink.write(block)
                    total += len(block)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            proc.wait()
            if proc.returncode != 0:
                errors.seek(0)
                raise OperatorError(f"{self.label}: {what} failed (exit {proc.returncode}): "
                                    f"{last_lines(errors.read().decode(errors='replace'))}")
            return total

    def stream_in(self, command: list[str], source: t.Any, what: str, user: str | None = None) -> None:
        """Run ``command`` with ``source`` (a readable stream) on its stdin."""
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(self.argv(command, True, user), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=errors, bufsize=0)
            try:
                for block in iter(lambda: source.read(CHUNK), b""):
                    proc.stdin.write(block)
            except BrokenPipeError:
                pass
            finally:
                with contextlib.suppress(BrokenPipeError, OSError):
                    proc.stdin.close()
            proc.wait()
            if proc.returncode != 0:
                errors.seek(0)
                raise OperatorError(f"{self.label}: {what} failed (exit {proc.returncode}): "
                                    f"{last_lines(errors.read().decode(errors='replace'))}")


# --------------------------------------------------------------------------- capture


def dump_database(container_id: str, database: dict[str, t.Any], sink: t.Any, label: str) -> dict[str, t.Any]:
    """Stream a logical dump into ``sink``; return ``{tables, raw_bytes, format}``."""
    engine = database["engine"]
    runner = Exec(container_id, label)
    if engine == "postgres":
        counter = CopyCounter()
        argv = ["pg_dump", "--no-password", "-U", database.get("user") or "postgres", "-d", database["database"]]
        raw = runner.stream_out(argv, sink, f"pg_dump of database {database['database']}", counter)
        return {"tables": counter.tables, "raw_bytes": raw, "format": "pg_dump-plain"}
    if engine in ("mysql", "mariadb"):
        argv = ["mysqldump", "--single-transaction", "--quick", "--routines", "--triggers", "--events",
                "-u", database.get("user") or "root", "--databases", database["database"]]
        raw = runner.stream_out(argv, sink, f"mysqldump of database {database['database']}")
        tables = mysql_counts(runner, database)
        return {"tables": tables, "raw_bytes": raw, "format": "mysqldump", "counts": "after-dump"}
    if engine == "sqlite":
        return dump_sqlite(runner, database, sink)
    raise OperatorError(f"{label}: unknown database engine {engine}")


def sqlite_path(database: dict[str, t.Any]) -> str:
    return database.get("path") or database["database"]


SQLITE_COUNT = (
    "import sqlite3,sys\n"
    "c=sqlite3.connect(sys.argv[1])\n"
    "for (n,) in c.execute(\"select name from sqlite_master where type='table' and name not like 'sqlite_%' order by name\"):\n"
    "    print(n+'\\t'+str(c.execute('select count(*) from \"'+n.replace('\"','\"\"')+'\"').fetchone()[0]))\n"
)
SQLITE_BACKUP = (
    "import sqlite3,sys\n"
    "s=sqlite3.connect(sys.argv[1],timeout=30)\n"
    "d=sqlite3.connect(sys.argv[2])\n"
    "s.backup(d)\n"
    "d.close()\n"
)


def dump_sqlite(runner: Exec, database: dict[str, t.Any], sink: t.Any) -> dict[str, t.Any]:
    source = sqlite_path(database)
    copy = f"/tmp/selfhost-rollback-{secrets.token_hex(6)}.db"
    try:
        proc = runner.run(["sqlite3", source, ".timeout 30000", f".backup {copy}"], "the SQLite online backup", check=False)
        if proc.returncode in (126, 127) or b"executable file not found" in proc.stderr:
            runner.run(["python3", "-c", SQLITE_BACKUP, source, copy], "the SQLite online backup (python3)")
        elif proc.returncode != 0:
            raise OperatorError(f"{runner.label}: the SQLite online backup of {source} failed: "
                                f"{last_lines(proc.stderr.decode(errors='replace'))}")
        tables = sqlite_counts(runner, copy)
        raw = runner.stream_out(["cat", copy], sink, "reading the SQLite backup copy")
    finally:
        runner.run(["rm", "-f", copy], "removing the SQLite backup copy", check=False)
    return {"tables": tables, "raw_bytes": raw, "format": "sqlite-backup-api"}


def sqlite_counts(runner: Exec, path: str) -> dict[str, int]:
    proc = runner.run(["python3", "-c", SQLITE_COUNT, path], "counting SQLite rows", check=False)
    if proc.returncode != 0:
        listing = runner.run(["sqlite3", path, "select name from sqlite_master where type='table' and name not like 'sqlite_%'"],
                             "listing SQLite tables")
        names = [n for n in listing.stdout.decode().splitlines() if n]
        tables = {}
        for name in names:
            out = runner.run(["sqlite3", path, f"select count(*) from {quote_ident(name)}"], "counting SQLite rows")
            tables[name] = int(out.stdout.decode().strip() or 0)
        return tables
    return parse_counts(proc.stdout.decode())


def parse_counts(text: str) -> dict[str, int]:
    tables = {}
    for line in text.splitlines():
        if "\t" in line:
            name, _tab, count = line.rpartition("\t")
            tables[name] = int(count)
    return tables


def mysql_counts(runner: Exec, database: dict[str, t.Any]) -> dict[str, int]:
    user = database.get("user") or "root"
    listing = runner.run(["mysql", "-N", "-B", "-u", user, database["database"], "-e", "SHOW FULL TABLES WHERE Table_type='BASE TABLE'"],
                         "listing MySQL tables")
    names = [line.split("\t")[0] for line in listing.stdout.decode().splitlines() if line]
    if not names:
        return {}
    sql = " UNION ALL ".join(f"SELECT '{n}', COUNT(*) FROM `{n}`" for n in names if "'" not in n and "`" not in n)
    out = runner.run(["mysql", "-N", "-B", "-u", user, database["database"], "-e", sql], "counting MySQL rows")
    return parse_counts(out.stdout.decode())


# --------------------------------------------------------------------------- restore


PG_COUNT = (
    "SELECT format('SELECT %L || chr(9) || count(*) FROM %I.%I', format('%I.%I', schemaname, relname), schemaname, relname) "
    "FROM pg_stat_user_tables ORDER BY 1 \\gexec\n"
)


def postgres_counts(runner: Exec, database: dict[str, t.Any]) -> dict[str, int]:
    proc = runner.run(["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-U", database.get("user") or "postgres",
                       "-d", database["database"]], "counting rows", stdin=PG_COUNT.encode())
    return parse_counts(proc.stdout.decode())


def count_rows(container_id: str, database: dict[str, t.Any], label: str, host_path: str | None = None) -> dict[str, int]:
    runner = Exec(container_id, label)
    engine = database["engine"]
    if engine == "postgres":
        return postgres_counts(runner, database)
    if engine in ("mysql", "mariadb"):
        return mysql_counts(runner, database)
    return sqlite_counts(runner, sqlite_path(database))


def wait_ready(container_id: str, database: dict[str, t.Any], label: str, timeout: float = 90) -> None:
    """Wait until the engine accepts connections from its final server (not an init-time one)."""
    runner = Exec(container_id, label)
    engine = database["engine"]
    if engine == "sqlite":
        return
    user = database.get("user") or ("postgres" if engine == "postgres" else "root")
    if engine == "postgres":
        tcp = ["pg_isready", "-q", "-h", "127.0.0.1", "-U", user]
        socket = ["pg_isready", "-q", "-U", user]
    else:
        tcp = ["mysqladmin", "ping", "-h", "127.0.0.1", "-u", user, "--silent"]
        socket = ["mysqladmin", "ping", "-u", user, "--silent"]
    deadline = time.monotonic() + timeout
    socket_since: float | None = None
    while time.monotonic() < deadline:
        if runner.run(tcp, "readiness probe", check=False, timeout=30).returncode == 0:
            return
        if runner.run(socket, "readiness probe", check=False, timeout=30).returncode == 0:
            socket_since = socket_since or time.monotonic()
            if time.monotonic() - socket_since >= 8:
                return  # a server that listens on its socket only
        else:
            socket_since = None
        time.sleep(0.5)
    raise OperatorError(f"{label}: the {engine} server did not accept connections within {timeout:.0f} s; "
                        "check its logs (docker compose logs)")


def restore_database(container_id: str, database: dict[str, t.Any], source: t.Any, label: str, recreate: bool = True) -> None:
    """Load a dump into the database of a running container, dropping and recreating it first."""
    runner = Exec(container_id, label)
    engine = database["engine"]
    name = database["database"]
    if engine == "postgres":
        user = database.get("user") or "postgres"
        if recreate:
            for sql in (f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)",
                        f"CREATE DATABASE {quote_ident(name)} OWNER {quote_ident(user)}"):
                runner.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", "postgres", "-c", sql],
                           f"recreating database {name}")
        runner.stream_in(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", name], source,
                         f"loading the dump into database {name}")
        return
    if engine in ("mysql", "mariadb"):
        user = database.get("user") or "root"
        if recreate:
            runner.run(["mysql", "-u", user, "-e", f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`"],
                       f"recreating database {name}")
        runner.stream_in(["mysql", "-u", user, name], source, f"loading the dump into database {name}")
        return
    raise OperatorError(f"{label}: engine {engine} is restored as a file, not through a client")


def host_path_in_container(container_attrs: dict[str, t.Any], path: str) -> str | None:
    """The host path behind ``path`` inside a container, when it lies on a volume or bind mount."""
    best = None
    for mount in container_attrs.get("Mounts") or []:
        destination = mount.get("Destination", "").rstrip("/")
        if path == destination or path.startswith(destination + "/"):
            if best is None or len(destination) > len(best[0]):
                best = (destination, mount.get("Source"))
    if not best or not best[1]:
        return None
    return os.path.join(best[1], os.path.relpath(path, best[0]))


def restore_sqlite_file(host_path: str, source: t.Any) -> None:
    """Replace a (stopped) SQLite database file atomically and drop its stale WAL and shm files."""
    directory = os.path.dirname(host_path)
    previous = os.stat(host_path) if os.path.exists(host_path) else os.stat(directory)
    fd, tmp = tempfile.mkstemp(prefix=".selfhost-restore-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            for block in iter(lambda: source.read(CHUNK), b""):
                handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
        os.chown(tmp, previous.st_uid, previous.st_gid)
        os.chmod(tmp, 0o644 if not os.path.exists(host_path) else previous.st_mode & 0o7777)
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(host_path + suffix)
        os.replace(tmp, host_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sqlite_counts_on_host(path: str) -> tuple[dict[str, int], str]:
    """Row counts and ``PRAGMA integrity_check`` of a SQLite file on this host."""
    import sqlite3  # the host's Python; only needed for the SQLite test restore

    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
        names = [row[0] for row in connection.execute(
            "select name from sqlite_master where type='table' and name not like 'sqlite_%' order by name")]
        tables = {name: int(connection.execute(f"select count(*) from {quote_ident(name)}").fetchone()[0]) for name in names}
    finally:
        connection.close()
    return tables, integrity
